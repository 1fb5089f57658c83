"""Loopback peers and helpers for the HTTP tests (this module holds no tests).

`WebServer` is a real aiohttp web server (TLS when given a context) that counts what it
sees: connections, the most open at once, requests in flight, the headers of each request.
For the responses a real server would never send, the tests script a `tests.servers.RawServer`.
"""

from __future__ import annotations

import asyncio
import collections.abc
import dataclasses
import gzip
import ssl
from typing import Any

from aiohttp import web

from asyncsp import ConnectionManager, TlsPolicy
from asyncsp._http_pool import ENDPOINT_SLOT, HttpEndpoint

from .servers import LOCAL, wait_until

Trusted = collections.abc.Callable[..., TlsPolicy]
"""The type of the ``trusted`` fixture: makes a policy that trusts the test CA."""


def endpoint_of(mgr: ConnectionManager, url: str) -> HttpEndpoint:
    """The HTTP pool state of the service point for *url*."""
    state = mgr.find_service_point(url).layer(ENDPOINT_SLOT)
    assert isinstance(state, HttpEndpoint)
    return state


async def settled(mgr: ConnectionManager, url: str) -> None:
    """Wait (bounded) until the endpoint for *url* holds no request slot, no orphan and no
    socket: the event loop closes a socket a turn or two after the error that ends it."""
    endpoint = endpoint_of(mgr, url)
    sp = endpoint.sp
    await wait_until(
        lambda: endpoint.held == 0 and endpoint.orphans == 0 and sp.current_connections == 0
    )


@dataclasses.dataclass
class Seen:
    """What a `WebServer` saw."""

    connections: int = 0
    open: int = 0
    peak_open: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    peers: list[int] = dataclasses.field(default_factory=list)  # client port per request
    hosts: list[str] = dataclasses.field(default_factory=list)  # client address per request
    headers: list[dict[str, str]] = dataclasses.field(default_factory=list)
    requests: int = 0


class WebServer:
    """An aiohttp web application on 127.0.0.1, its routes made for the tests.

    ``/hello`` text; ``/headers`` the request headers as JSON; ``/work`` a request that takes a
    moment (to overlap concurrent ones); ``/stream`` one chunk, then the rest once
    `release_stream` is set; ``/stall`` never answers; ``/redirect?to=URL&status=N``;
    ``/gzip?size=N`` N zero bytes gzip-encoded; ``/empty`` 204; ``/echo`` the method and body.
    """

    def __init__(self, context: ssl.SSLContext | None = None, host: str = LOCAL) -> None:
        self.context = context
        self.host = host
        self.seen = Seen()
        self.release_stream = asyncio.Event()
        self.stream_started = asyncio.Event()
        self.reached: dict[int, asyncio.Event] = {}  # in-flight count -> reached once
        self._stalled = asyncio.Event()  # set at close only: /stall waits on it
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def scheme(self) -> str:
        return "https" if self.context is not None else "http"

    def url(self, path: str = "/hello") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{path}"

    def in_flight_reached(self, count: int) -> asyncio.Event:
        """An event set once *count* requests are in flight at the same time."""
        return self.reached.setdefault(count, asyncio.Event())

    async def __aenter__(self) -> WebServer:
        app = web.Application()
        app.router.add_route("*", "/{name}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            self.seen.connections += 1
            self.seen.open += 1
            self.seen.peak_open = max(self.seen.peak_open, self.seen.open)
            made(handler, transport)

        def connection_lost(handler: Any, exc: BaseException | None) -> None:
            self.seen.open -= 1
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]
        site = web.TCPSite(self._runner, self.host, 0, ssl_context=self.context)
        await site.start()
        sockets = site._server.sockets  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release_stream.set()
        self._stalled.set()
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        seen = self.seen
        seen.requests += 1
        seen.headers.append(dict(request.headers))
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen.peers.append(peer[1] if peer else -1)
        seen.hosts.append(peer[0] if peer else "")
        seen.in_flight += 1
        seen.peak_in_flight = max(seen.peak_in_flight, seen.in_flight)
        for count, event in self.reached.items():
            if seen.in_flight >= count:
                event.set()
        try:
            return await self._route(request)
        finally:
            seen.in_flight -= 1

    async def _route(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "hello":
            return web.Response(text="hello")
        if name == "headers":
            return web.json_response(dict(request.headers))
        if name == "work":
            # Simulated work, so that concurrent requests overlap on the server.
            await asyncio.sleep(0.005)
            return web.Response(text="done")
        if name == "echo":
            body = await request.read()
            return web.json_response({"method": request.method, "body": body.decode()})
        if name == "empty":
            return web.Response(status=204)
        if name == "redirect":
            status = int(request.query.get("status", "302"))
            return web.Response(status=status, headers={"Location": request.query["to"]})
        if name == "gzip":
            body = gzip.compress(b"\0" * int(request.query["size"]))
            return web.Response(body=body, headers={"Content-Encoding": "gzip"})
        if name == "stream":
            response = web.StreamResponse()
            response.content_length = 10
            await response.prepare(request)
            await response.write(b"first")
            self.stream_started.set()
            await self.release_stream.wait()
            await response.write(b"-last")
            await response.write_eof()
            return response
        if name == "stall":
            await self._stalled.wait()
            return web.Response(text="too late")
        raise web.HTTPNotFound()
