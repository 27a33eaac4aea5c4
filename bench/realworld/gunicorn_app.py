"""A WSGI app for gunicorn's pre-fork server: each request renders JSON in Python, as
aiohttp_server.py's handler does. `/quit` asks the master (this worker's parent) to stop
gracefully, so the server exits once the load client is done."""

import json
import os
import signal


def render(n):
    rows = [{"id": i, "name": f"item-{i}", "score": (i * 7919) % 1000 / 10} for i in range(n)]
    return json.dumps({"rows": rows, "total": sum(r["score"] for r in rows)})


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/quit":
        os.kill(os.getppid(), signal.SIGTERM)
        body = b"bye"
    else:
        body = render(int(path.rsplit("/", 1)[-1] or "50") if path.startswith("/items/") else 1).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
