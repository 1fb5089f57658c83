"""The servers of `soak.py`, in their own process: good peers and misbehaving ones, counted.

    python benchmarks/_soak_servers.py DIR    (DIR holds cert.pem and key.pem)

An aiohttp HTTPS server; an SMTP server requiring STARTTLS; echo servers (TCP and TLS); and
scripted servers that reset connections mid-body, stall, trickle, truncate TLS without
close_notify, close idle keep-alive connections and refuse mail. Prints its ports as one JSON
line once listening; on SIGTERM, prints each listener's peak (the most sockets at once whose
client had not hung up, taken at each accept) and how many it accepted, then stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import signal
import socket
import ssl
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import Any

TRICKLE_INTERVAL = 0.3
"""Seconds between the bytes of a trickling peer."""
IDLE_CLOSE = 0.05
"""Seconds the scripted HTTP server keeps an idle keep-alive connection before closing it."""
SCRIPT_BOUND = 30.0
"""How long a scripted server waits for a client at most (every loop bounded)."""
BODY_SIZE = 64 * 1024
SLOW = 0.2
"""Seconds ``/slow`` takes to answer (long enough to be cancelled in the middle)."""
SERVERS = ("https", "https_faulty", "smtp", "smtp_faulty", "tcp", "tls", "tls_faulty")

_HUNG_UP = select.POLLRDHUP | select.POLLHUP | select.POLLERR


class Counted(socket.socket):
    """An accepted socket that leaves its listener's live set when closed."""

    __slots__ = ("owner",)
    owner: CountingListener | None

    def close(self) -> None:
        owner, self.owner = getattr(self, "owner", None), None
        if owner is not None:
            owner.live.discard(self)
        super().close()


class CountingListener(socket.socket):
    """A listener recording, at each accept, the sockets whose client had not hung up."""

    __slots__ = ("accepted", "live", "peak")
    live: set[Counted]
    peak: int
    accepted: int

    def accept(self) -> tuple[socket.socket, Any]:
        fd, address = self._accept()  # type: ignore[attr-defined]
        sock = Counted(self.family, self.type, self.proto, fileno=fd)
        sock.owner = self
        self.live.add(sock)
        self.accepted += 1
        poller = select.poll()
        for live in self.live:
            poller.register(live, select.POLLRDHUP)
        hung_up = sum(1 for _, events in poller.poll(0) if events & _HUNG_UP)
        self.peak = max(self.peak, len(self.live) - hung_up)
        return sock, address


def listener() -> CountingListener:
    # IPPROTO_TCP named, as asyncio does, so its transports turn Nagle off for each client.
    sock = CountingListener(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.live, sock.peak, sock.accepted = set(), 0, 0
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST, as a crashed peer does."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def truncate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """End a TLS connection with a bare FIN (no close_notify), then wait for the client."""
    with contextlib.suppress(OSError):
        writer.get_extra_info("socket").shutdown(socket.SHUT_WR)
    await until_client_goes(reader)
    writer.transport.abort()


async def until_client_goes(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(SCRIPT_BOUND):
            while await reader.read(65536):
                pass


async def trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
    for byte in data[: int(SCRIPT_BOUND / TRICKLE_INTERVAL)]:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(TRICKLE_INTERVAL)


def scripted(
    script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # the server is stopping; asyncio would log the cancellation as an error
        finally:
            writer.close()

    return serve


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CUT = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000


async def faulty_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One behaviour per path: /reset, /truncate, /stall, /trickle, /idle-close."""
    idle_limit = SCRIPT_BOUND
    while True:
        try:
            async with asyncio.timeout(idle_limit):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            return  # idle too long: closed, as servers close idle keep-alive connections
        path = head.split(b" ", 2)[1]
        if path == b"/reset":
            writer.write(CUT)
            await writer.drain()
            rst(writer)
            return
        if path == b"/truncate":
            writer.write(CUT)
            await writer.drain()
            await truncate(reader, writer)
            return
        if path == b"/stall":
            await until_client_goes(reader)
            return
        if path == b"/trickle":
            await trickle(writer, OK)
            return
        # /idle-close: keep-alive, then closed after a short idle time.
        writer.write(OK)
        await writer.drain()
        idle_limit = IDLE_CLOSE


def smtp_server(context: ssl.SSLContext) -> Callable[..., Awaitable[None]]:
    """SMTP with STARTTLS (required before mail) that accepts every message."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 good.test ESMTP\r\n")
        secure = False
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                offer = b"250-PIPELINING\r\n" + (b"" if secure else b"250-STARTTLS\r\n")
                writer.write(b"250-good.test\r\n" + offer + b"250 8BITMIME\r\n")
            elif verb == b"STAR" and not secure:
                writer.write(b"220 ready for TLS\r\n")
                await writer.drain()
                await writer.start_tls(context)
                secure = True
                continue
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                while await reader.readline() not in (b".\r\n", b""):
                    pass
                writer.write(b"250 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                return
            elif verb in (b"MAIL", b"RCPT") and not secure:
                writer.write(b"530 5.7.0 STARTTLS first\r\n")
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()

    return script


async def faulty_smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Plain SMTP; the message's fate follows its recipient: reset@, stall@, tempfail@."""
    writer.write(b"220 faulty.test ESMTP\r\n")
    recipient = b""
    while line := await reader.readline():
        verb = line[:4].upper()
        if verb == b"EHLO":
            writer.write(b"250-faulty.test\r\n250 PIPELINING\r\n")
        elif verb == b"RCPT":
            recipient = line.split(b"<", 1)[-1].split(b"@", 1)[0]
            writer.write(b"250 ok\r\n")
        elif verb == b"DATA":
            writer.write(b"354 go ahead\r\n")
            await writer.drain()
            while await reader.readline() not in (b".\r\n", b""):
                pass
            if recipient == b"reset":
                rst(writer)
                return
            if recipient == b"stall":
                await until_client_goes(reader)
                return
            writer.write(b"451 4.3.0 try later\r\n" if recipient == b"tempfail" else b"250 ok\r\n")
        elif verb == b"QUIT":
            writer.write(b"221 bye\r\n")
            await writer.drain()
            return
        else:
            writer.write(b"250 ok\r\n")
        await writer.drain()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        writer.write(b"echo:" + line)
        await writer.drain()


async def faulty_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """TLS; the first line names the fault: reset, truncate, stall, trickle."""
    command = (await reader.readline()).strip()
    if command == b"reset":
        writer.write(b"partial")
        await writer.drain()
        rst(writer)
    elif command == b"truncate":
        writer.write(b"partial")
        await writer.drain()
        await truncate(reader, writer)
    elif command == b"stall":
        await until_client_goes(reader)
    else:
        await trickle(writer, b"t" * 1000)


async def serve(directory: str) -> None:
    """Start every server, print their ports as JSON, and on SIGTERM their socket peaks."""
    from aiohttp import web

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(f"{directory}/cert.pem", f"{directory}/key.pem")
    loop = asyncio.get_running_loop()
    listeners = {name: listener() for name in SERVERS}

    async def handle(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "body":
            return web.Response(body=b"b" * BODY_SIZE)
        if name == "echo":
            return web.Response(body=await request.read())
        if name == "slow":
            await asyncio.sleep(SLOW)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{name}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, listeners["https"], ssl_context=context).start()
    servers = [
        await asyncio.start_server(scripted(smtp_server(context)), sock=listeners["smtp"]),
        await asyncio.start_server(
            scripted(faulty_http), sock=listeners["https_faulty"], ssl=context
        ),
        await asyncio.start_server(scripted(faulty_smtp), sock=listeners["smtp_faulty"]),
        await asyncio.start_server(scripted(echo), sock=listeners["tcp"]),
        await asyncio.start_server(scripted(echo), sock=listeners["tls"], ssl=context),
        await asyncio.start_server(
            scripted(faulty_stream), sock=listeners["tls_faulty"], ssl=context
        ),
    ]
    ports = {name: sock.getsockname()[1] for name, sock in listeners.items()}
    print(json.dumps({"ports": ports}), flush=True)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    await stop
    peaks = {n: {"peak": s.peak, "accepted": s.accepted} for n, s in listeners.items()}
    print(json.dumps({"peaks": peaks}), flush=True)
    for server in servers:
        server.close()
    await runner.cleanup()


def main() -> int:
    asyncio.run(serve(sys.argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
