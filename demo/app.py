"""A small order-processing service used by ember's demo: it parses requests, prices them,
checks stock in a worker thread, and renders receipts. Runs for DEMO_SECONDS (default 8)."""
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


def handle(raw):
    order = parse_request(raw)
    total = price_order(order)
    return render_receipt(order, total)


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
    end = time.monotonic() + SECONDS
    handled = 0
    while time.monotonic() < end:
        handle(make_request())
        handled += 1
    stop.set()
    worker.join()
    print(f"demo app handled {handled} orders")


if __name__ == "__main__":
    main()
