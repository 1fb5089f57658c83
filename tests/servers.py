"""Real loopback peers for the tests: TLS servers pinned to versions, scripted raw servers.

`ThreadedServer` runs in its own thread with blocking `ssl` sockets, so it behaves like an
ordinary OpenSSL server (alerts included) and never shares the event loop under test.

`RawServer` runs in the loop under test, a script per connection, for the peers a real server
never is; `LineServer` builds on it for line-by-line dialogues. Both accept through a
`CountingListener`, so they count their sockets at the TCP level, TLS handshakes in progress
included. The peak is what "the server never sees more than N sockets" means: at each accept,
the sockets it holds whose client has not hung up. (A client that closes one socket and opens
the next stays within its limit, yet the server may accept the new one before it reads the old
one's FIN; the kernel already knows the FIN arrived.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import ssl
import struct
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, Self, TypeVar

import trustme

LOCAL = "127.0.0.1"

VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


SERVER_CIPHERS = (
    "@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM"
)
"""The TLS 1.2 suites of a python.org or pyenv CPython's own default, set explicitly: Debian's
CPython leaves OpenSSL's DEFAULT list in place (CBC with SHA-1 included), and a test server
must offer the same suites on every build."""


def server_context(
    cert: trustme.LeafCert, minimum: str = "TLSv1.2", maximum: str = "TLSv1.3"
) -> ssl.SSLContext:
    """A server context pinned to [minimum, maximum]; legacy versions get security level 0."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = VERSIONS[minimum]
        ctx.maximum_version = VERSIONS[maximum]
    if VERSIONS[minimum] < ssl.TLSVersion.TLSv1_2:
        # OpenSSL 3 signs TLS 1.0/1.1 handshakes with SHA-1: only security level 0 allows it.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    else:
        ctx.set_ciphers(SERVER_CIPHERS)
    return ctx


@dataclass
class ServerRecord:
    """What a test server saw."""

    connections: int = 0
    handshakes: int = 0
    received: list[bytes] = field(default_factory=list)
    active: int = 0
    peak_active: int = 0
    """The most connections open at once: at each accept, those whose client has not hung up
    (handler threads notice a close late under load, so they are not what is counted)."""
    live_fds: set[int] = field(default_factory=set)
    peers: list[tuple[str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class ThreadedServer:
    """A loopback TCP server (TLS when given a context), one thread per connection.

    ``handler(conn, record)`` talks to one client; the default echoes each chunk with a
    ``"echo:"`` prefix until the client closes. ``handshake=False`` accepts and never starts
    TLS (a stalled handshake).
    """

    def __init__(
        self,
        context: ssl.SSLContext | None = None,
        handler: Callable[[socket.socket, ServerRecord], None] | None = None,
        *,
        host: str = "127.0.0.1",
        handshake: bool = True,
    ) -> None:
        self.context = context
        self.handler = handler or echo_handler
        self.handshake = handshake
        self.record = ServerRecord()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(128)
        self.port: int = self._sock.getsockname()[1]
        self.host = host
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()
        self._thread.join(5)
        for t in self._threads:
            t.join(5)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, peer = self._sock.accept()
            except OSError:
                return
            self._conns.append(raw)
            with self.record.lock:
                self.record.connections += 1
                self.record.peers.append(peer[:2])
                self.record.live_fds.add(raw.fileno())
                self.record.peak_active = max(
                    self.record.peak_active, connected(self.record.live_fds)
                )
            t = threading.Thread(target=self._client, args=(raw,), daemon=True)
            self._threads.append(t)
            t.start()

    def _client(self, raw: socket.socket) -> None:
        record = self.record
        with record.lock:
            record.active += 1
        fd = raw.fileno()
        conn: socket.socket = raw
        try:
            raw.settimeout(10)
            if self.context is not None:
                if not self.handshake:
                    self._stop.wait(30)
                    return
                conn = self.context.wrap_socket(raw, server_side=True)
                self._conns.append(conn)
                with record.lock:
                    record.handshakes += 1
            self.handler(conn, record)
        except (OSError, ssl.SSLError):
            pass
        finally:
            with record.lock:
                record.active -= 1
                record.live_fds.discard(fd)  # before the close: the number may be reused
            with contextlib.suppress(OSError):
                conn.close()
            with contextlib.suppress(OSError):
                raw.close()


def connected(sockets: Collection[int | socket.socket]) -> int:
    """How many of these sockets (or file descriptors) have a peer that has not closed its
    end (no FIN or RST arrived)."""
    poller = select.poll()
    for sock in sockets:
        poller.register(sock, select.POLLRDHUP)
    hung_up = select.POLLRDHUP | select.POLLHUP | select.POLLERR
    return len(sockets) - sum(1 for _, events in poller.poll(0) if events & hung_up)


def echo_handler(conn: socket.socket, record: ServerRecord) -> None:
    """Echo each chunk back as b"echo:" + chunk until the client closes."""
    while True:
        data = conn.recv(65536)
        if not data:
            break
        with record.lock:
            record.received.append(data)
        conn.sendall(b"echo:" + data)


def open_fds() -> int:
    """The number of file descriptors this process has open now."""
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def fd_baseline(slack: int = 2) -> Iterator[None]:
    """Assert the process's open fds are back at their baseline (±slack) after the block."""
    import gc

    gc.collect()
    before = open_fds()
    yield
    # Server-side sockets close in the server's own threads, a moment after our side is done:
    # give them a bounded moment before counting (our side is closed when the block ends).
    deadline = time.monotonic() + 2.0
    while True:
        gc.collect()
        after = open_fds()
        if after <= before + slack or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert after <= before + slack, f"{after - before} file descriptors leaked"


async def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait (bounded) for a condition that no event reports, such as a kernel buffer filling."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


# -- counted sockets and scripted raw servers, in the loop under test --------------------------


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
        return connected(self.live)

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

    async def __aenter__(self) -> Self:
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

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """One request (`read_request`), its head kept in `heads`."""
        head = await self.read_head(reader)
        await _read_body(reader, head)
        return head


class Dialogue(Protocol):
    """The server's side of one connection, as a `LineServer` dialogue talks through it."""

    async def line(self) -> bytes:
        """The next line from the client: b"" (or a ConnectionError) once it has gone."""
        ...


PeerT = TypeVar("PeerT", bound=Dialogue)


class LineServer(RawServer, Generic[PeerT]):
    """A `RawServer` for line-by-line protocols, whose scripts talk through a peer object.

    Each connection is wrapped in ``make_peer(reader, writer)``, kept in `peers`, and runs
    ``dialogue(peer)``; then the server reads lines until the client goes, so what the client
    sends last is recorded by its peer too.
    """

    def __init__(
        self,
        make_peer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], PeerT],
        dialogue: Callable[[PeerT], Awaitable[None]],
    ) -> None:
        super().__init__(self._converse)
        self.make_peer = make_peer
        self.dialogue = dialogue
        self.peers: list[PeerT] = []

    async def _converse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        peer = self.make_peer(reader, writer)
        self.peers.append(peer)
        await self.dialogue(peer)
        while await peer.line():
            pass


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One HTTP request head, and its body when it announces a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    await _read_body(reader, head)
    return head


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> None:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            await reader.readexactly(int(value))


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
