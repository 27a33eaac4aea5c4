"""Sends EMBER_REQUESTS GET requests to 127.0.0.1:EMBER_PORT/items/50 over CONCURRENCY
keep-alive connections, then /quit, with the standard library only (a separate process from
the server). Fails if more than 1% of the requests failed."""

import http.client
import os
import socket
import sys
import threading
import time

REQUESTS = int(os.environ.get("EMBER_REQUESTS", "3000"))
PORT = int(os.environ.get("EMBER_PORT", "8088"))
CONCURRENCY = 4
path = sys.argv[1] if len(sys.argv) > 1 else "/items/50"
errors = []


def worker(count):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    for _ in range(count):
        try:
            conn.request("GET", path)
            conn.getresponse().read()
        except (OSError, http.client.HTTPException) as e:
            errors.append(e)
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    conn.close()


def wait_for_server(timeout=60):
    # The server starts listening only once the gate lets it run: poll, don't guess.
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", PORT), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


wait_for_server()
threads = [
    threading.Thread(target=worker, args=(REQUESTS // CONCURRENCY + (i < REQUESTS % CONCURRENCY),))
    for i in range(CONCURRENCY)
]
for t in threads:
    t.start()
for t in threads:
    t.join()
quit_conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
quit_conn.request("GET", "/quit")
quit_conn.getresponse().read()
if errors:
    print(f"{len(errors)} of {REQUESTS} requests failed, e.g. {errors[0]!r}", file=sys.stderr)
sys.exit(1 if len(errors) > REQUESTS // 100 else 0)
