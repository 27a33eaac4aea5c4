"""multiprocessing: a pool of two workers started by `--start fork` or `--start spawn` runs a
fixed amount of pure-Python work (no sleeping), so the profile is of the children."""

import argparse
import multiprocessing


def collatz_steps(n):
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def chunk(start):
    return max(collatz_steps(n) for n in range(start, start + 20_000))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--start", choices=("fork", "spawn"), required=True)
    args = parser.parse_args()
    with multiprocessing.get_context(args.start).Pool(2) as pool:
        print(max(pool.map(chunk, range(1, 400_001, 20_000))))


if __name__ == "__main__":
    main()
