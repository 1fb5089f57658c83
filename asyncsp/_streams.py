"""Raw TCP/TLS streams: the `Stream` users hold, over the buffer we own (`asyncsp._stream_buffer`).

Every read and write of every protocol goes through here: the stream's one deadline timer,
the error boundary that turns what asyncio and OpenSSL raise into asyncsp's errors, and the
close that waits for the socket to be gone.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._endpoint import normalise_host
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
from ._sockets import reset_on_close
from ._stream_buffer import StreamProtocol
from ._tls import TlsInfo, established_info

if TYPE_CHECKING:
    from ._servicepoint import ServicePoint

__all__ = ["DEFAULT_LINE_LIMIT", "Stream"]

DEFAULT_LINE_LIMIT = 64 * 1024
"""Longest line `Stream.readline`/`readuntil` accept, separator included."""
_CLOSE_TIMEOUT = 2.0
"""How long a close waits for TLS close_notify to go out before the socket is aborted."""

T = TypeVar("T")


POOL_LOG = logging.getLogger("asyncsp.pool")


def _abort(transport: asyncio.Transport, protocol: StreamProtocol) -> None:
    """Abort *transport* with a TCP reset (RST), never a FIN: a peer would take a FIN for a
    whole stream, or sit blocked on our full window until its FIN timeout. asyncio closes the
    socket a callback later; *protocol* counts it lost then (a cut handshake never tells it).
    """
    reset_on_close(transport.get_extra_info("socket"))
    transport.abort()
    protocol.lost.get_loop().call_soon(protocol.mark_lost)


class Stream:
    """One TCP or TLS connection to a service point, counted against its connection limit.

    Every operation is bounded by the stream's ``timeout`` (when set); a timed-out or failed
    operation closes the stream, since the peer's state is then unknown. Errors are asyncsp's:
    `TimeoutError`, `ConnectionClosedError`, `ReadLimitError`, `ManagerClosedError`.

    The bound costs no timer per operation. An operation records its deadline; only when it
    has to wait does the stream make sure its one timer is armed no later than that, and the
    timer, when it fires, ends the waits whose deadline has passed and re-arms itself for the
    rest. An operation that finds its bytes already buffered (or room to write) never waits,
    so it touches no timer at all; back-to-back operations share the timer armed by the first.
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
        self._loop = protocol.lost.get_loop()
        # The deadline of the read (and of the drain) in progress, and whether it passed.
        self._read_deadline: float | None = None
        self._read_expired = False
        self._drain_deadline: float | None = None
        self._drain_expired = False
        self._drain_waiting: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
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
            return await self._guard(self._read_all(), _READ)
        if self._protocol.buffer and not self._closed:  # nothing to wait for
            return self._protocol.take(n)
        return await self._guard(self._read_some(n), _READ)

    async def read_before(self, n: int, deadline: float) -> bytes:
        """Up to *n* bytes (at least one unless at EOF) that arrive before *deadline* (loop
        time), and within the stream's own timeout when it has one; past either, the stream
        is aborted and `TimeoutError` raised.

        For a protocol that bounds a whole reply, not each read: the stream's one timer
        watches *deadline*, where an ``asyncio.timeout_at`` around `read` would arm a timer
        of its own per read.
        """
        if n <= 0:
            raise ValueError("n must be at least 1")
        if self._protocol.buffer and not self._closed:  # nothing to wait for
            return self._protocol.take(n)
        timeout = self.timeout
        if timeout is not None:
            deadline = min(deadline, self._loop.time() + timeout)
        if self._read_deadline is not None:  # another read is running: a timer of its own
            return await self._guard(self._read_some_before(n, deadline), _SET)
        self._read_deadline = deadline
        self._read_expired = False
        try:
            return await self._guard(self._read_some(n), _SET)
        finally:
            self._read_deadline = None

    async def _read_some_before(self, n: int, deadline: float) -> bytes:
        async with asyncio.timeout_at(deadline):
            return await self._read_some(n)

    async def readexactly(self, n: int) -> bytes:
        """Exactly *n* bytes; `ConnectionClosedError` if the stream ends first."""
        if len(self._protocol.buffer) >= n and not self._closed:  # nothing to wait for
            return self._protocol.take(n)
        return await self._guard(self._readexactly(n), _READ)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """Bytes up to and including *separator*, at most the stream's line limit."""
        if not separator:
            raise ValueError("separator must not be empty")
        return await self._guard(self._readuntil(separator), _READ)

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
            waiter = self._data_waiter()
            try:
                await waiter
            finally:
                self._protocol.reader_done()
            if self._read_expired:
                raise builtins.TimeoutError
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
            waiter = self._data_waiter()
            try:
                await waiter
            finally:
                self._protocol.reader_done()
            if self._read_expired:
                raise builtins.TimeoutError
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
            waiter = self._data_waiter()
            try:
                await waiter
            finally:
                self._protocol.reader_done()
            if self._read_expired:
                raise builtins.TimeoutError
        self._broken = True
        raise ReadLimitError(
            f"{self.endpoint} sent more than {self._line_limit} bytes without {separator!r}",
            endpoint=self.endpoint,
        )

    def _data_waiter(self) -> asyncio.Future[None]:
        """The future a read awaits for more bytes, EOF or a lost connection, with the timer
        armed for the read's deadline. (Awaited in place: a coroutine around it would cost
        a layer per wait.) After it: `StreamProtocol.reader_done`, then `_read_expired`."""
        waiter = self._protocol.reader_waiter(self._describe)
        deadline = self._read_deadline
        if deadline is not None:
            self._arm(deadline)
        return waiter

    def _describe(self) -> str:
        return f"the stream to {self.endpoint}"

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
        protocol = self._protocol
        if not protocol.writing_paused and not self._closed and not protocol.lost.done():
            return  # room to write: nothing to wait for
        await self._guard(self._drain(), _DRAIN)

    async def _drain(self) -> None:
        protocol = self._protocol
        if protocol.lost.done():
            raise ConnectionResetError("connection lost")
        if not protocol.writing_paused:
            return
        waiter = protocol.drain_waiter()
        deadline = self._drain_deadline
        if deadline is not None:
            self._drain_waiting = waiter
            self._arm(deadline)
        try:
            await waiter
        finally:
            self._drain_waiting = None
        if self._drain_expired:
            raise builtins.TimeoutError

    # -- TLS upgrade -----------------------------------------------------------------------

    async def start_tls(self, server_hostname: str | None = None) -> TlsInfo:
        """Upgrade this connection to TLS in place, under the stream's policy snapshot.

        Refuses (`TlsError`) while plain-text bytes are waiting unread: a peer that sends
        anything between its "go ahead" and the handshake is injecting (RFC 3207 §4.2).
        """
        if self.tls is not None:
            raise TlsError(f"{self.endpoint}: the stream already runs TLS", endpoint=self.endpoint)
        hostname = normalise_host(server_hostname or self._server_hostname)
        upgrade = self._service_point.dialer.upgrade(
            self, hostname, self._transport, self._protocol
        )
        transport = await self._guard(upgrade, _WHOLE)
        self._transport = transport
        self._server_hostname = hostname  # the name the handshake verified
        self._protocol.set_transport(transport)
        info = self.tls
        assert info is not None
        return info

    # -- closing ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connection (with TLS close_notify when possible) and free its slot;
        return once the socket is closed (also when it was aborted or is closing already)."""
        if self._closed:
            await self.wait_closed()
            return
        self._closed = True
        self._disarm()
        transport = self._transport
        try:
            if not self._broken:
                self._service_point.dialer.remember_stream_session(self)
            bound: float | None = _CLOSE_TIMEOUT
            if not transport.is_closing():
                if (
                    transport.get_write_buffer_size() == 0
                    and transport.get_extra_info("ssl_object") is None
                ):
                    # Plain TCP with nothing left to send: the transport ends the socket a
                    # loop callback after close() (no peer to wait for), so no timer.
                    bound = None
                transport.close()
            if not self._protocol.lost.done():
                await self._lost_within(bound)
        except asyncio.CancelledError:
            _abort(transport, self._protocol)
            raise
        except Exception:  # the peer never acknowledged our close (a timeout included): abort
            _abort(transport, self._protocol)
        finally:
            self._report_closed("closed")
            self._on_close(self)
        if not self._protocol.lost.done():
            await self.wait_closed()

    async def _lost_within(self, timeout: float | None) -> None:
        """Wait until the socket is closed; `TimeoutError` after *timeout* seconds (``None``:
        no timer, for a close the transport ends by itself).

        What ``wait_for(shield(lost), timeout)`` does (a cancelled wait leaves the socket's
        future alone), with one future and one timer instead of a task, two futures and a
        timeout object.
        """
        lost = self._protocol.lost
        waiter = self._loop.create_future()

        def wake(_: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        lost.add_done_callback(wake)
        timer = None if timeout is None else self._loop.call_later(timeout, wake)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            lost.remove_done_callback(wake)
        if not lost.done():
            raise builtins.TimeoutError

    def _report_closed(self, reason: str) -> None:
        tracer = self._service_point.manager.tracer
        if tracer.wants(POOL_LOG):  # else nobody reads it: no event is built
            event = ConnectionClosed(endpoint=self.endpoint, reason=reason)
            tracer.emit(event, POOL_LOG, f"connection {reason}")

    def abort(self, *, by_manager: bool = False) -> None:
        """Close at once with a TCP reset (no close_notify, no FIN); free the slot. The socket
        goes a loop callback later (`wait_closed`); no new connection is made before that."""
        self._closed_by_manager |= by_manager
        self._broken = True
        if not self._transport.is_closing() or not self._protocol.lost.done():
            _abort(self._transport, self._protocol)
        self._disarm()
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
        if not self._protocol.lost.done():
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

    async def _guard(self, operation: Awaitable[T], kind: int) -> T:
        """Run *operation* under the stream's timeout and translate what it raises.

        *kind* says which deadline the operation's waits observe: a read's (`_READ`), a
        drain's (`_DRAIN`), or, for an operation that waits on something other than our
        protocol (the TLS upgrade), a timeout of its own around the whole of it (`_WHOLE`).
        A second read or drain running at the same time as the first gets `_WHOLE` too.
        `_SET`: the caller set the read's deadline (and folded the stream's timeout into it).
        """
        if self._closed:
            if asyncio.iscoroutine(operation):
                operation.close()
            raise self._closed_error()
        timeout = self.timeout
        owned = 0
        if timeout is not None:
            if kind == _READ and self._read_deadline is None:
                self._read_deadline = self._loop.time() + timeout
                self._read_expired = False
                owned = _READ
            elif kind == _DRAIN and self._drain_deadline is None:
                self._drain_deadline = self._loop.time() + timeout
                self._drain_expired = False
                owned = _DRAIN
        try:
            if owned or timeout is None or kind == _SET:
                return await operation
            async with asyncio.timeout(timeout):
                return await operation
        except builtins.TimeoutError as exc:
            self.abort()
            within = "in time" if kind == _SET else f"within {self.timeout} s"
            raise TimeoutError(
                f"{self.endpoint} did not answer {within}; the connection was closed",
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
        finally:
            if owned == _READ:
                self._read_deadline = None
            elif owned == _DRAIN:
                self._drain_deadline = None

    # -- the one timer behind every deadline -----------------------------------------------

    def _arm(self, deadline: float) -> None:
        """Make sure the timer fires no later than *deadline*."""
        timer = self._timer
        if timer is not None:
            if timer.when() <= deadline:
                return  # it fires first, and then re-arms for what is left
            timer.cancel()  # the timeout was shortened in between
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        """End the waits whose deadline has passed; re-arm for the nearest one left."""
        self._timer = None
        # A loop may run a timer a hair early (uvloop counts whole milliseconds): within
        # _TIMER_SLACK of the deadline counts as reached, rather than re-arming in a spin.
        now = self._loop.time() + _TIMER_SLACK
        next_deadline: float | None = None
        deadline = self._read_deadline
        if deadline is not None:
            if deadline <= now:
                self._read_expired = True
                self._protocol.wake_reader()
            else:
                next_deadline = deadline
        deadline = self._drain_deadline
        if deadline is not None:
            if deadline <= now:
                self._drain_expired = True
                waiter = self._drain_waiting
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            elif next_deadline is None or deadline < next_deadline:
                next_deadline = deadline
        if next_deadline is not None:
            self._timer = self._loop.call_at(next_deadline, self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


_TIMER_SLACK = 0.001
_READ, _DRAIN, _WHOLE, _SET = 1, 2, 3, 4
"""Which deadline an operation observes (see `Stream._guard`); `_SET`: the one its caller
set already (`Stream.read_before`)."""
