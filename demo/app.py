"""A small asyncio order service used by ember's demo: an acceptor starts a `handle-order` task
per request, which parses it, waits on a (simulated) stock service, prices it and renders a
receipt; a `reporter` task summarises every 100 ms; a worker thread checksums the stock table.
Runs for DEMO_SECONDS (default 8)."""

import asyncio
import json
import os
import random
import threading
import time
from decimal import Decimal

SECONDS = float(os.environ.get("DEMO_SECONDS", "8"))
rng = random.Random(7)
PRICES = {f"sku-{i}": Decimal(rng.randint(100, 99999)) / 100 for i in range(500)}


def make_request():
    items = [{"sku": f"sku-{rng.randrange(500)}", "qty": rng.randint(1, 5)} for _ in range(rng.randint(1, 30))]
    return json.dumps({"customer": rng.randrange(10_000), "items": items})


def parse_request(raw):
    return json.loads(raw)


def price_item(item):
    return PRICES[item["sku"]] * item["qty"]


def apply_discounts(total, customer):
    if customer % 7 == 0:
        total *= Decimal("0.9")
    return total.quantize(Decimal("0.01"))


def price_order(order):
    subtotal = sum((price_item(i) for i in order["items"]), Decimal(0))
    return apply_discounts(subtotal, order["customer"])


def render_receipt(order, total):
    lines = [f"{i['sku']:>10} x{i['qty']}" for i in order["items"]]
    return "\n".join(lines) + f"\nTOTAL {total}"


async def stock_service(order):
    """Stands in for a network call: the task waits while the loop runs others."""
    await asyncio.sleep(0.0005 + 0.001 * rng.random())
    return len(order["items"])


async def handle_order(raw, done):
    order = parse_request(raw)
    await stock_service(order)
    total = price_order(order)
    render_receipt(order, total)
    done.append(total)


async def reporter(done, end):
    while time.monotonic() < end:
        await asyncio.sleep(0.1)
        sum(done[-200:], Decimal(0))


async def serve(end):
    done = []
    slots = asyncio.Semaphore(16)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(reporter(done, end), name="reporter")
        while time.monotonic() < end:
            await slots.acquire()
            task = tg.create_task(handle_order(make_request(), done), name="handle-order")
            task.add_done_callback(lambda _: slots.release())
    return len(done)


def stock_checker(stop):
    """A background thread: recomputes a checksum of the stock table."""
    while not stop.is_set():
        checksum = 0
        for sku, price in PRICES.items():
            checksum = (checksum * 31 + hash(sku) + int(price * 100)) % 1_000_000_007


def main():
    stop = threading.Event()
    worker = threading.Thread(target=stock_checker, args=(stop,), name="stock")
    worker.start()
    handled = asyncio.run(serve(time.monotonic() + SECONDS))
    stop.set()
    worker.join()
    print(f"demo app handled {handled} orders")


if __name__ == "__main__":
    main()
