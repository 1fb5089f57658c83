"""Loopback peers for the stress and fault tests (this module holds no tests).

Every server here accepts through a `CountingListener`, so it counts its sockets at the TCP
level, TLS handshakes in progress included. Its peak is what "the server never sees more than
N sockets" means: at each accept, the sockets it holds whose client has not hung up. (A client
that closes one socket and opens the next stays within its limit, yet the server may accept
the new one before it reads the old one's FIN; the kernel already knows the FIN arrived.)

`WebApp` is a real aiohttp application (TLS when given a context) that can be stopped,
crashed (every socket reset) and started again on the same port; `RawServer` runs a script
per connection, for the peers a real server never is (the HTTP tests and their scripted proxy
use it too).
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

LOCAL = "127.0.0.1"
SHUTDOWN_GRACE = 0.5
"""Seconds aiohttp waits for running handlers when a `WebApp` stops."""


_HUNG_UP = select.POLLRDHUP | select.POLLHUP | select.POLLERR


class SocketCounter:
    """Sockets a server holds now, the most connected at once, and how many it accepted."""

    def __init__(self) -> None:
        self.open = 0
        self.peak = 0
        self.accepted = 0
        self.live: set[CountedSocket] = set()
        self.on_accept: Callable[[CountedSocket], None] | None = None
        self._changed = asyncio.Event()

    def reset_peak(self) -> None:
        self.peak = self.connected()

    def _opened(self, sock: CountedSocket) -> None:
        self.open += 1
        self.accepted += 1
        self.live.add(sock)
        self.peak = max(self.peak, self.connected())
        if self.on_accept is not None:
            self.on_accept(sock)

    def connected(self) -> int:
        """Sockets held now whose client has not closed (FIN or RST arrived) its end."""
        poller = select.poll()
        for sock in self.live:
            poller.register(sock, select.POLLRDHUP)
        hung_up = sum(1 for _, events in poller.poll(0) if events & _HUNG_UP)
        return len(self.live) - hung_up

    def _closed(self, sock: CountedSocket) -> None:
        self.open -= 1
        self.live.discard(sock)
        self._changed.set()

    async def wait_closed(self, seconds: float = 5.0) -> None:
        """Wait (bounded) until the server holds no socket: our side closing is not theirs."""
        async with asyncio.timeout(seconds):
            while self.open:
                self._changed.clear()
                await self._changed.wait()

    def reset_all(self) -> None:
        """Reset (RST) every socket the server holds, as a crashing server's kernel does."""
        for sock in list(self.live):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)


class CountedSocket(socket.socket):
    """An accepted socket that tells its counter when it is closed (once)."""

    __slots__ = ("counter",)
    counter: SocketCounter | None

    def close(self) -> None:
        counter, self.counter = getattr(self, "counter", None), None
        if counter is not None:
            counter._closed(self)
        super().close()


class CountingListener(socket.socket):
    """A listening socket whose accepted sockets are counted (asyncio accepts through it)."""

    __slots__ = ("counter",)
    counter: SocketCounter

    def accept(self) -> tuple[socket.socket, Any]:
        fd, address = self._accept()  # type: ignore[attr-defined]
        sock = CountedSocket(self.family, self.type, self.proto, fileno=fd)
        sock.counter = self.counter
        self.counter._opened(sock)
        return sock, address


def listen(counter: SocketCounter, port: int = 0, host: str = LOCAL) -> CountingListener:
    """A counting listener on *host*:*port* (0: any free port), ready for asyncio."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, as asyncio does: its transports then turn Nagle off for each client.
    sock = CountingListener(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.counter = counter
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


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


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawServer:
    """A scripted loopback server (TLS when given a context), counted at the TCP level.

    Each connection runs ``script(reader, writer, index)``, *index* counting connections
    from 0; the connection is closed when the script returns (or fails), and every script
    still running is cancelled at exit. Scripts that read requests with `read_head` leave
    them in `heads`, for tests that check what reached the server.
    """

    def __init__(self, script: Script, context: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.context = context
        self.sockets = SocketCounter()
        self.connections = 0
        self.heads: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def url(self, path: str = "/") -> str:
        scheme = "https" if self.context is not None else "http"
        return f"{scheme}://{LOCAL}:{self.port}{path}"

    async def __aenter__(self) -> RawServer:
        sock = listen(self.sockets)
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._serve, sock=sock, ssl=self.context)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        index = self.connections
        self.connections += 1
        try:
            await self.script(reader, writer, index)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        except asyncio.CancelledError:
            pass  # our own exit cancelled the script: asyncio would log it as an error
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def read_head(self, reader: asyncio.StreamReader) -> bytes:
        """One request head, kept in `heads` (its body, if any, is left for the script)."""
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        return head


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One HTTP request head, and its body when it announces a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            await reader.readexactly(int(value))
    return head


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed or hostile peer does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def truncate_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """End a TLS connection with a bare TCP FIN, no close_notify (a truncation attack).

    Then wait (bounded) for the client to go before dropping the socket, so what the client
    sees is the FIN, not a reset.
    """
    sock = writer.get_extra_info("socket")
    assert sock is not None
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5):
            while await reader.read(65536):
                pass
    writer.transport.abort()
