"""The Python fallback for benchmarks/_loopback.py: aiohttp answering "ok" on three ports."""

from __future__ import annotations

import asyncio
import pathlib
import ssl
import sys

from aiohttp import web


async def main(prefix: pathlib.Path, port12: int, port13: int, port_plain: int) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for port, version in ((port12, ssl.TLSVersion.TLSv1_2), (port13, ssl.TLSVersion.TLSv1_3)):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(prefix / "cert.pem", prefix / "key.pem")
        ctx.minimum_version = ctx.maximum_version = version
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    await web.TCPSite(runner, "127.0.0.1", port_plain).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    directory, *ports = sys.argv[1:]
    p12, p13, plain = (int(p) for p in ports)
    asyncio.run(main(pathlib.Path(directory), p12, p13, plain))
