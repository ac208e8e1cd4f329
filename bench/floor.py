"""The floor: the least a Python proxy on aiohttp + uvloop can do per request.

Reads the client's body, posts it to the upstream on one pooled session, and relays the answer
(chunk by chunk for SSE). No auth, routing, JSON, metrics or logs: whatever keyrail spends on
top of this is the price of its features.
"""

import argparse

import aiohttp
import uvloop
from aiohttp import web


def make_app(upstream: str) -> web.Application:
    async def start(app: web.Application) -> None:
        app["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def stop(app: web.Application) -> None:
        await app["s"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"Content-Type": "application/json"}
        async with request.app["s"].post(upstream + request.path, data=body, headers=headers) as r:
            if not r.content_type.startswith("text/event-stream"):
                return web.Response(
                    body=await r.read(), status=r.status, headers={"Content-Type": r.content_type}
                )
            out = web.StreamResponse(status=r.status, headers={"Content-Type": r.content_type})
            await out.prepare(request)
            async for chunk in r.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_post("/{path:.*}", forward)
    return app


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="keyrail bench: raw aiohttp forwarder (the floor)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:18000")
    a = p.parse_args()
    web.run_app(
        make_app(a.upstream),
        host="127.0.0.1",
        port=a.port,
        loop=uvloop.new_event_loop(),
        access_log=None,
        print=None,
    )
