"""`StreamProtocol`: the asyncio protocol under every stream, and the buffer it owns.

asyncio's ``StreamReader`` keeps bytes that arrived in plain text across ``start_tls`` and
offers no public way to see them, which is the STARTTLS response-injection hole (RFC 3207
§4.2). This protocol owns its buffer, so `Stream.start_tls` (and the HTTP CONNECT tunnel, which
reads its proxy's answer from one) can refuse to go on while any unread plain-text byte waits.
It knows nothing of deadlines or errors: those are `Stream`'s.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import cast

from ._tls import received_close_notify

__all__ = ["StreamProtocol"]


class StreamProtocol(asyncio.Protocol):
    """Buffers what arrives, pauses the peer past a high-water mark, wakes one reader.

    Each chunk is copied into one ``bytearray`` and the transport's ``bytes`` freed at once.
    (Keeping the chunk itself to hand it out uncopied was tried: a chunk from ``recv`` lives
    in a block sized for the largest read, and a thousand of them held between reads cost
    more in memory mappings than the copy saves.) A read copies out of it once.
    """

    def __init__(self, high_water: int) -> None:
        self.buffer = bytearray()
        """What arrived and no read has taken yet (taken with `take`; a stream's fast paths
        test it directly)."""
        self._high_water = high_water
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        # Made by the first drain that waits (most streams never wait for one).
        self._drain_waiters: collections.deque[asyncio.Future[None]] | None = None
        self._reading_paused = False
        self.writing_paused = False
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
        buffer = self.buffer
        buffer += data
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if (
            not self._reading_paused
            and len(buffer) > self._high_water
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
        self.wake_reader()
        return ssl_object is None  # plain TCP: keep our half open (the owner closes)

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None and self.exception is None:
            self.exception = exc
        self.wake_reader()
        self.wake_drainers()
        self.mark_lost()

    def mark_lost(self) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.wake_drainers()

    # -- used by Stream --------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return len(self.buffer)

    def set_transport(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def take(self, n: int) -> bytes:
        buffer = self.buffer
        if n >= len(buffer):
            data = bytes(buffer)
            buffer.clear()
        else:
            with memoryview(buffer) as view:  # one copy out (a slice would copy twice)
                data = bytes(view[:n])
            del buffer[:n]
        if self._reading_paused and len(self.buffer) <= self._high_water // 2:
            self._reading_paused = False
            if self._transport is not None and not self._transport.is_closing():
                self._transport.resume_reading()
        return data

    def find(self, sep: bytes, start: int) -> int:
        return self.buffer.find(sep, start)

    def reader_waiter(self, what: str | Callable[[], str]) -> asyncio.Future[None]:
        """A future set when more bytes, EOF or a lost connection arrive (one reader only);
        the reader calls `reader_done` once it has been woken. *what* names the connection
        in the error (a callable is only called then)."""
        if self._waiter is not None:
            # Two readers would split the bytes at random: as asyncio's StreamReader does.
            what = what if isinstance(what, str) else what()
            raise RuntimeError(f"another task is reading {what}; only one task may read it")
        self._waiter = waiter = self.lost.get_loop().create_future()
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()
        return waiter

    def reader_done(self) -> None:
        self._waiter = None

    async def wait_data(self, what: str = "this connection") -> None:
        """Wait until more bytes, EOF or a lost connection arrive; one task at a time."""
        waiter = self.reader_waiter(what)
        try:
            await waiter
        finally:
            self._waiter = None

    async def drain(self) -> None:
        """Wait until the transport takes writes again; `ConnectionResetError` once lost."""
        if self.lost.done():
            raise ConnectionResetError("connection lost")
        if self.writing_paused:
            await self.drain_waiter()

    def drain_waiter(self) -> asyncio.Future[None]:
        """A future set once the transport takes writes again (or the connection is lost)."""
        waiter: asyncio.Future[None] = self.lost.get_loop().create_future()
        if self._drain_waiters is None:
            self._drain_waiters = collections.deque()
        self._drain_waiters.append(waiter)
        return waiter

    def wake_reader(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def wake_drainers(self) -> None:
        if not self._drain_waiters:
            return
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
