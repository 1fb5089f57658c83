"""Raw TCP/TLS streams: a small buffered protocol we own, and the `Stream` users hold.

asyncio's ``StreamReader`` keeps bytes that arrived in plain text across ``start_tls`` and
offers no public way to see them, which is the STARTTLS response-injection hole (RFC 3207
§4.2). Our protocol owns its buffer, so `Stream.start_tls` refuses to upgrade while any
unread plain-text byte is waiting.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import logging
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ._errors import (
    AsyncspError,
    ConnectionClosedError,
    ManagerClosedError,
    ReadLimitError,
    TimeoutError,
    TlsError,
)
from ._events import ConnectionClosed
from ._policy import TlsPolicy
from ._tls import TlsInfo, established_info, received_close_notify

if TYPE_CHECKING:
    from ._servicepoint import ServicePoint

__all__ = ["DEFAULT_LINE_LIMIT", "Stream", "StreamProtocol"]

DEFAULT_LINE_LIMIT = 64 * 1024
"""Longest line `Stream.readline`/`readuntil` accept, separator included."""
_CLOSE_TIMEOUT = 2.0
"""How long a close waits for TLS close_notify to go out before the socket is aborted."""

T = TypeVar("T")
_LINGER_RESET = struct.pack("ii", 1, 0)
"""``SO_LINGER`` on, zero seconds: closing the socket sends RST."""


POOL_LOG = logging.getLogger("asyncsp.pool")


def _abort(transport: asyncio.Transport, protocol: StreamProtocol) -> None:
    """Abort *transport* with a TCP reset (RST), never a FIN: a peer would take a FIN for a
    whole stream, or sit blocked on our full window until its FIN timeout. asyncio closes the
    socket a callback later; *protocol* counts it lost then (a cut handshake never tells it).
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()
    protocol.lost.get_loop().call_soon(protocol.mark_lost)


class StreamProtocol(asyncio.Protocol):
    """Buffers what arrives, pauses the peer past a high-water mark, wakes one reader."""

    def __init__(self, high_water: int) -> None:
        self._buffer = bytearray()
        self._high_water = high_water
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._reading_paused = False
        self._writing_paused = False
        self.eof = False
        self.eof_is_tls_close = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.exception: BaseException | None = None

    # -- asyncio.Protocol callbacks ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they offer the same API.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._wake()
        if (
            not self._reading_paused
            and len(self._buffer) > self._high_water
            and self._transport is not None
        ):
            self._transport.pause_reading()
            self._reading_paused = True

    def eof_received(self) -> bool:
        self.eof = True
        ssl_object = (
            None if self._transport is None else self._transport.get_extra_info("ssl_object")
        )
        # Under TLS asyncio calls this both for the peer's close_notify and for a bare TCP FIN
        # (a truncation). Only after close_notify does OpenSSL report a zero return on read.
        self.eof_is_tls_close = ssl_object is not None and received_close_notify(ssl_object)
        self._wake()
        return ssl_object is None  # plain TCP: keep our half open (the owner closes)

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None and self.exception is None:
            self.exception = exc
        self._wake()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.mark_lost()

    def mark_lost(self) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    # -- used by Stream --------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def set_transport(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def take(self, n: int) -> bytes:
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        if self._reading_paused and len(self._buffer) <= self._high_water // 2:
            self._reading_paused = False
            if self._transport is not None and not self._transport.is_closing():
                self._transport.resume_reading()
        return data

    def find(self, sep: bytes, start: int) -> int:
        return self._buffer.find(sep, start)

    async def wait_data(self, what: str = "this connection") -> None:
        """Wait until more bytes, EOF or a lost connection arrive; one task at a time."""
        if self._waiter is not None:
            # Two readers would split the bytes at random: as asyncio's StreamReader does.
            raise RuntimeError(f"another task is reading {what}; only one task may read it")
        self._waiter = asyncio.get_running_loop().create_future()
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def drain(self) -> None:
        if self.lost.done():
            raise ConnectionResetError("connection lost")
        if not self._writing_paused:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        await waiter

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Stream:
    """One TCP or TLS connection to a service point, counted against its connection limit.

    Every operation is bounded by the stream's ``timeout`` (when set); a timed-out or failed
    operation closes the stream, since the peer's state is then unknown. Errors are asyncsp's:
    `TimeoutError`, `ConnectionClosedError`, `ReadLimitError`, `ManagerClosedError`.
    """

    def __init__(
        self,
        *,
        service_point: ServicePoint,
        transport: asyncio.Transport,
        protocol: StreamProtocol,
        policy: TlsPolicy,
        timeout: float | None,
        server_hostname: str,
        on_close: Callable[[Stream], None],
        line_limit: int = DEFAULT_LINE_LIMIT,
    ) -> None:
        self._service_point = service_point
        self._transport = transport
        self._protocol = protocol
        self._policy = policy
        self._server_hostname = server_hostname
        self._on_close = on_close
        self._line_limit = line_limit
        self._closed = False
        self._broken = False
        self._closed_by_manager = False
        self.timeout = timeout
        """Seconds each operation may take (``None``: unbounded)."""
        self.opened_at = time.monotonic()
        """`time.monotonic()` when the connection was made."""

    # -- facts -----------------------------------------------------------------------------

    @property
    def service_point(self) -> ServicePoint:
        return self._service_point

    @property
    def policy(self) -> TlsPolicy:
        """The policy snapshot this connection was made under."""
        return self._policy

    @property
    def endpoint(self) -> str:
        return self._service_point.address

    @property
    def tls(self) -> TlsInfo | None:
        """What the TLS handshake negotiated, or ``None`` for a plain connection."""
        return established_info(self._transport.get_extra_info("ssl_object"))

    @property
    def peer_address(self) -> tuple[Any, ...]:
        """The socket address of the peer (``(host, port)`` for IPv4)."""
        return tuple(self._transport.get_extra_info("peername") or ())

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read."""
        return self._protocol.buffered

    @property
    def closed(self) -> bool:
        """Whether the stream was closed (by us, a failure, or the manager)."""
        return self._closed

    @property
    def closed_by_manager(self) -> bool:
        """Whether the manager's close aborted this stream."""
        return self._closed_by_manager

    def at_eof(self) -> bool:
        """Whether the peer has ended the stream and every byte was read."""
        return self._protocol.eof and not self._protocol.buffered

    @property
    def ended_with_close_notify(self) -> bool:
        """Whether a TLS peer ended the stream with close_notify (a clean, untruncated end)."""
        return self._protocol.eof_is_tls_close

    @property
    def server_hostname(self) -> str:
        """The name TLS verifies (and sends as SNI) on this connection."""
        return self._server_hostname

    def tls_session(self) -> ssl.SSLSession | None:
        """The connection's TLS session, to offer on a related connection (each call copies it).

        Under TLS 1.3 the resumable ticket arrives after the handshake: read it once the first
        reply after the handshake has been received.
        """
        ssl_object = self._transport.get_extra_info("ssl_object")
        return None if ssl_object is None else ssl_object.session

    def is_reusable(self) -> bool:
        """Whether the stream can carry another exchange (open, healthy, nothing unread)."""
        return not (
            self._closed
            or self._broken
            or self._protocol.eof
            or self._protocol.buffered
            or self._transport.is_closing()
        )

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The transport's extra info (``"socket"``, ``"peername"``, ``"ssl_object"``, ...)."""
        return self._transport.get_extra_info(name, default)

    # -- reading ---------------------------------------------------------------------------

    async def read(self, n: int = -1) -> bytes:
        """Up to *n* bytes (at least one unless at EOF); ``n=-1`` reads until EOF."""
        if n == 0:
            return b""
        if n < 0:
            return await self._guard(self._read_all())
        return await self._guard(self._read_some(n))

    async def readexactly(self, n: int) -> bytes:
        """Exactly *n* bytes; `ConnectionClosedError` if the stream ends first."""
        return await self._guard(self._readexactly(n))

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """Bytes up to and including *separator*, at most the stream's line limit."""
        if not separator:
            raise ValueError("separator must not be empty")
        return await self._guard(self._readuntil(separator))

    async def readline(self) -> bytes:
        """One line, ending with ``\\n``; at EOF the rest (possibly ``b""``)."""
        try:
            return await self.readuntil(b"\n")
        except ConnectionClosedError as exc:
            if exc.partial is not None and not self._closed:
                return exc.partial
            raise

    async def _read_some(self, n: int) -> bytes:
        while not self._protocol.buffered:
            self._raise_if_lost()
            if self._protocol.eof:
                return b""
            await self._protocol.wait_data(f"the stream to {self.endpoint}")
        return self._protocol.take(n)

    async def _read_all(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            chunk = await self._read_some(DEFAULT_LINE_LIMIT)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    async def _readexactly(self, n: int) -> bytes:
        while self._protocol.buffered < n:
            self._raise_if_lost()
            if self._protocol.eof:
                partial = self._protocol.take(self._protocol.buffered)
                raise ConnectionClosedError(
                    f"{self.endpoint} closed the connection after {len(partial)} of {n} bytes",
                    endpoint=self.endpoint,
                    partial=partial,
                )
            await self._protocol.wait_data(f"the stream to {self.endpoint}")
        return self._protocol.take(n)

    async def _readuntil(self, separator: bytes) -> bytes:
        start = 0
        while True:
            found = self._protocol.find(separator, start)
            if found >= 0:
                end = found + len(separator)
                if end > self._line_limit:
                    break
                return self._protocol.take(end)
            if self._protocol.buffered > self._line_limit:
                break
            start = max(0, self._protocol.buffered - len(separator) + 1)
            self._raise_if_lost()
            if self._protocol.eof:
                partial = self._protocol.take(self._protocol.buffered)
                raise ConnectionClosedError(
                    f"{self.endpoint} closed the connection before {separator!r}",
                    endpoint=self.endpoint,
                    partial=partial,
                )
            await self._protocol.wait_data(f"the stream to {self.endpoint}")
        self._broken = True
        raise ReadLimitError(
            f"{self.endpoint} sent more than {self._line_limit} bytes without {separator!r}",
            endpoint=self.endpoint,
        )

    def _raise_if_lost(self) -> None:
        if self._closed:
            raise self._closed_error()
        if self._protocol.exception is not None:
            raise ConnectionClosedError(
                f"connection to {self.endpoint} lost: {self._protocol.exception}",
                endpoint=self.endpoint,
            ) from self._protocol.exception

    # -- writing ---------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue *data*; await `drain` to wait for the peer to take it."""
        if self._closed:
            raise self._closed_error()
        if self._transport.is_closing():
            raise ConnectionClosedError(
                f"connection to {self.endpoint} is closing", endpoint=self.endpoint
            )
        self._transport.write(data)

    async def drain(self) -> None:
        """Wait until the write buffer is below its high-water mark."""
        await self._guard(self._protocol.drain())

    # -- TLS upgrade -----------------------------------------------------------------------

    async def start_tls(self, server_hostname: str | None = None) -> TlsInfo:
        """Upgrade this connection to TLS in place, under the stream's policy snapshot.

        Refuses (`TlsError`) while plain-text bytes are waiting unread: a peer that sends
        anything between its "go ahead" and the handshake is injecting (RFC 3207 §4.2).
        """
        if self.tls is not None:
            raise TlsError(f"{self.endpoint}: the stream already runs TLS", endpoint=self.endpoint)
        hostname = server_hostname or self._server_hostname
        return await self._guard(self._service_point.dialer.upgrade(self, hostname))

    def _replace_transport(self, transport: asyncio.Transport, server_hostname: str) -> None:
        self._transport = transport
        self._server_hostname = server_hostname  # the name the handshake verified
        self._protocol.set_transport(transport)

    # -- closing ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connection (with TLS close_notify when possible) and free its slot;
        return once the socket is closed (also when it was aborted or is closing already)."""
        if self._closed:
            await self.wait_closed()
            return
        self._closed = True
        transport = self._transport
        try:
            if not self._broken:
                self._service_point.dialer.remember_stream_session(self)
            if not transport.is_closing():
                transport.close()
            if not self._protocol.lost.done():
                await asyncio.wait_for(asyncio.shield(self._protocol.lost), _CLOSE_TIMEOUT)
        except asyncio.CancelledError:
            _abort(transport, self._protocol)
            raise
        except Exception:  # the peer never acknowledged our close (a timeout included): abort
            _abort(transport, self._protocol)
        finally:
            self._report_closed("closed")
            self._on_close(self)
        await self.wait_closed()

    def _report_closed(self, reason: str) -> None:
        event = ConnectionClosed(endpoint=self.endpoint, reason=reason)
        self._service_point.manager.tracer.emit(event, POOL_LOG, f"connection {reason}")

    def abort(self, *, by_manager: bool = False) -> None:
        """Close at once with a TCP reset (no close_notify, no FIN); free the slot. The socket
        goes a loop callback later (`wait_closed`); no new connection is made before that."""
        self._closed_by_manager |= by_manager
        self._broken = True
        if not self._transport.is_closing() or not self._protocol.lost.done():
            _abort(self._transport, self._protocol)
        if not self._closed:
            self._closed = True
            self._report_closed("closed by the manager" if by_manager else "aborted")
            self._on_close(self)

    @property
    def socket_closed(self) -> bool:
        """Whether the socket is closed (a loop callback after `abort`)."""
        return self._protocol.lost.done()

    async def wait_closed(self) -> None:
        """Wait until the socket is closed, after `aclose` or `abort`."""
        await asyncio.shield(self._protocol.lost)

    def mark_broken(self) -> None:
        """Never reuse this stream (its protocol state is unknown)."""
        self._broken = True

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        tls = self.tls
        state = "closed" if self._closed else (tls.version if tls else "plain")
        return f"<Stream {self.endpoint} {state}>"

    # -- the error boundary of every operation ---------------------------------------------

    def _closed_error(self) -> AsyncspError:
        if self._closed_by_manager:
            return ManagerClosedError(
                f"the connection manager was closed; stream to {self.endpoint} aborted",
                endpoint=self.endpoint,
            )
        return ConnectionClosedError(f"stream to {self.endpoint} is closed", endpoint=self.endpoint)

    async def _guard(self, operation: Awaitable[T]) -> T:
        if self._closed:
            if asyncio.iscoroutine(operation):
                operation.close()
            raise self._closed_error()
        try:
            async with asyncio.timeout(self.timeout):
                return await operation
        except builtins.TimeoutError as exc:
            self.abort()
            raise TimeoutError(
                f"{self.endpoint} did not answer within {self.timeout} s; the connection was "
                "closed",
                endpoint=self.endpoint,
            ) from exc
        except asyncio.CancelledError:
            self._broken = True
            raise
        except AsyncspError as exc:
            self._broken = True
            if self._closed_by_manager:
                raise self._closed_error() from exc
            raise
        except (OSError, ssl.SSLError, EOFError) as exc:
            self.abort()
            if self._closed_by_manager:
                raise self._closed_error() from exc
            raise ConnectionClosedError(
                f"connection to {self.endpoint} failed: {exc}", endpoint=self.endpoint
            ) from exc
