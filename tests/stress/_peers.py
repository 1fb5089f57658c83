"""The web application the stress and fault tests load (this module holds no tests).

`WebApp` is a real aiohttp application (TLS when given a context) that can be stopped,
crashed (every socket reset) and started again on the same port. Like the scripted
`RawServer` of `tests.servers`, it accepts through a `CountingListener`, so it counts its
sockets at the TCP level.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from aiohttp import web

from ..servers import LOCAL, SocketCounter, listen

SHUTDOWN_GRACE = 0.5
"""Seconds aiohttp waits for running handlers when a `WebApp` stops."""


class WebApp:
    """An aiohttp application on loopback, counted at the TCP level, restartable in place.

    Routes: ``/hello`` (``hello``); ``/work`` (a moment of work, so requests overlap);
    ``/body?size=N`` (N bytes); ``/hold`` (answers once `release` is set or the app stops);
    ``/echo`` (the request body back).
    """

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self.context = context
        self.sockets = SocketCounter()
        self.requests = 0
        self.release = asyncio.Event()
        self.holding = 0
        self.port = 0
        self._runner: web.AppRunner | None = None
        self.on_request: Callable[[web.Request], None] | None = None

    def url(self, path: str = "/hello") -> str:
        scheme = "https" if self.context is not None else "http"
        return f"{scheme}://{LOCAL}:{self.port}{path}"

    async def start(self) -> None:
        """Listen (again) on our port, or on a free one the first time."""
        app = web.Application()
        app.router.add_route("*", "/{name}", self._handle)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_GRACE
        )
        await self._runner.setup()
        sock = listen(self.sockets, self.port)
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock, ssl_context=self.context)
        await site.start()

    async def stop(self, *, crash: bool = False) -> None:
        """Stop listening and close every connection; *crash* resets them first."""
        if self._runner is None:
            return
        if crash:
            self.sockets.reset_all()
        self.release.set()
        runner, self._runner = self._runner, None
        await runner.cleanup()
        self.release = asyncio.Event()

    async def __aenter__(self) -> WebApp:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.on_request is not None:
            self.on_request(request)
        name = request.match_info["name"]
        if name == "hello":
            return web.Response(text="hello")
        if name == "work":
            await asyncio.sleep(0.002)
            return web.Response(text="done")
        if name == "body":
            return web.Response(body=b"b" * int(request.query["size"]))
        if name == "echo":
            return web.Response(body=await request.read())
        if name == "hold":
            self.holding += 1
            try:
                await self.release.wait()
            finally:
                self.holding -= 1
            return web.Response(text="released")
        raise web.HTTPNotFound()
