"""An aiohttp server that serves requests until one asks for /quit. Each request does some
JSON and CPU work in its handler task. `--uvloop` runs it on uvloop."""

import asyncio
import json
import os
import sys

from aiohttp import web

PORT = int(os.environ.get("EMBER_PORT", "8088"))
done = asyncio.Event()


def render(n):
    rows = [{"id": i, "name": f"item-{i}", "score": (i * 7919) % 1000 / 10} for i in range(n)]
    return json.dumps({"rows": rows, "total": sum(r["score"] for r in rows)})


async def handle(request):
    n = int(request.match_info.get("n", "50"))
    body = render(n)
    await asyncio.sleep(0)
    return web.Response(text=body, content_type="application/json")


async def quit(request):
    done.set()
    return web.Response(text="bye")


async def main():
    app = web.Application()
    app.router.add_get("/items/{n}", handle)
    app.router.add_get("/quit", quit)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", PORT).start()
    await done.wait()
    await runner.cleanup()


if __name__ == "__main__":
    if "--uvloop" in sys.argv:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
