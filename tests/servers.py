"""Real loopback peers for the tests: TLS servers pinned to versions, scripted raw servers.

The TLS server runs in its own thread with blocking `ssl` sockets, so it behaves like an
ordinary OpenSSL server (alerts included) and never shares the event loop under test.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import trustme

VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


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


def connected(fds: set[int]) -> int:
    """How many of these sockets' peers have not closed their end (no FIN or RST arrived)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLRDHUP)
    hung_up = select.POLLRDHUP | select.POLLHUP | select.POLLERR
    return len(fds) - sum(1 for _, events in poller.poll(0) if events & hung_up)


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
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)
