"""numpy with OpenBLAS: matrix products and reductions called from Python, a fixed number of
rounds (EMBER_ROUNDS)."""

import os

import numpy as np

ROUNDS = int(os.environ.get("EMBER_ROUNDS", "40"))


def multiply(a, b):
    return a @ b


def normalize(m):
    return m / np.linalg.norm(m)


def python_side(m):
    # Some interpreter work between the native calls, as real numerical code has.
    return sum(float(x) for x in m[0, :200])


def main():
    rng = np.random.default_rng(42)
    a = rng.random((400, 400))
    b = rng.random((400, 400))
    total = 0.0
    for _ in range(ROUNDS):
        c = normalize(multiply(a, b))
        total += python_side(c)
        a = c + b
    print(f"done {total:.3f}")


if __name__ == "__main__":
    main()
