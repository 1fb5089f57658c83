"""Per-operation deadlines on raw streams: one timer per stream, re-armed, never one per call.

Each read and drain is bounded by the stream's ``timeout``; what these pin is that the cheap
mechanism (a deadline per operation, checked by one timer) keeps the behaviour of a timeout
around every call: the same error, the stream closed, a later operation getting its own full
time, a shortened timeout taking effect, cancellation leaving nothing armed.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator

import pytest

import asyncsp
from asyncsp import ConnectionClosedError, ConnectionManager, Stream


class _Peer:
    """A loopback server whose replies the test sends by hand (and which can stop reading)."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.readers: list[asyncio.StreamReader] = []
        self.connected = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.readers.append(reader)
        self.writers.append(writer)
        self.connected.set()


@pytest.fixture
async def peer() -> AsyncIterator[tuple[_Peer, int]]:
    state = _Peer()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    try:
        yield state, server.sockets[0].getsockname()[1]
    finally:
        for writer in state.writers:
            writer.transport.abort()
        server.close()


async def test_each_operation_gets_the_whole_timeout(peer: tuple[_Peer, int]) -> None:
    """Three reads, each answered after 60% of the timeout: none times out (one deadline
    per operation, not one for the stream's life or for the timer's first arming)."""
    state, port = peer
    async with ConnectionManager() as mgr:
        async with mgr.open_stream("127.0.0.1", port, timeout=0.25) as s:
            await state.connected.wait()
            for _ in range(3):
                await asyncio.sleep(0.15)
                state.writers[0].write(b"x")
                assert await asyncio.wait_for(s.read(1), 1) == b"x"
                assert not s.closed
            asyncio.get_running_loop().call_later(0.15, state.writers[0].write, b"line\n")
            assert await s.readline() == b"line\n"


async def test_a_stalled_read_after_quick_ones_times_out(peer: tuple[_Peer, int]) -> None:
    state, port = peer
    async with ConnectionManager() as mgr:
        async with mgr.open_stream("127.0.0.1", port, timeout=0.2) as s:
            await state.connected.wait()
            for _ in range(20):  # buffered already: no wait, no timer
                state.writers[0].write(b"ab")
                assert await s.readexactly(2) == b"ab"
            started = time.monotonic()
            with pytest.raises(asyncsp.TimeoutError) as info:
                await s.readexactly(5)
            assert 0.15 <= time.monotonic() - started < 1.5
            assert isinstance(info.value, builtins.TimeoutError)
            assert isinstance(info.value.__cause__, builtins.TimeoutError)
            assert s.closed
            with pytest.raises(ConnectionClosedError):
                await s.read(1)


async def test_a_shortened_timeout_applies_to_the_next_wait(peer: tuple[_Peer, int]) -> None:
    """The timer armed for a long deadline is brought forward for a shorter one."""
    state, port = peer
    async with ConnectionManager() as mgr:
        async with mgr.open_stream("127.0.0.1", port, timeout=30) as s:
            await state.connected.wait()
            asyncio.get_running_loop().call_later(0.05, state.writers[0].write, b"x")
            assert await s.read(1) == b"x"  # arms the timer 30 s out
            s.timeout = 0.1
            started = time.monotonic()
            with pytest.raises(asyncsp.TimeoutError):
                await s.read(1)
            assert time.monotonic() - started < 2


async def test_a_drain_blocked_by_a_peer_that_stops_reading_times_out(
    peer: tuple[_Peer, int],
) -> None:
    state, port = peer
    async with ConnectionManager() as mgr:
        async with mgr.open_stream("127.0.0.1", port, timeout=0.3) as s:
            await state.connected.wait()
            state.writers[0].transport.pause_reading()
            chunk = b"z" * 1024 * 1024
            with pytest.raises(asyncsp.TimeoutError):
                for _ in range(256):  # far more than the socket buffers hold
                    s.write(chunk)
                    await s.drain()
            assert s.closed


async def test_read_and_drain_in_two_tasks_keep_their_own_deadlines(
    peer: tuple[_Peer, int],
) -> None:
    """A read waiting in one task and a drain in another: each times out on its own."""
    state, port = peer
    async with ConnectionManager() as mgr:
        async with mgr.open_stream("127.0.0.1", port, timeout=0.4) as s:
            await state.connected.wait()
            state.writers[0].transport.pause_reading()
            reading = asyncio.ensure_future(s.read(1))
            await asyncio.sleep(0.2)

            async def flood() -> None:
                chunk = b"z" * 1024 * 1024
                for _ in range(256):
                    s.write(chunk)
                    await s.drain()

            writing = asyncio.ensure_future(flood())
            results = await asyncio.gather(reading, writing, return_exceptions=True)
            assert isinstance(results[0], asyncsp.TimeoutError)
            assert isinstance(results[1], asyncsp.TimeoutError | ConnectionClosedError)


async def test_a_cancelled_read_leaves_the_stream_unusable_and_no_timer_behind(
    peer: tuple[_Peer, int],
) -> None:
    state, port = peer
    async with ConnectionManager() as mgr:
        stream: Stream
        async with mgr.open_stream("127.0.0.1", port, timeout=5) as stream:
            await state.connected.wait()
            task = asyncio.ensure_future(stream.read(1))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not stream.is_reusable()
            # Another read may wait again (the cancelled one gave the reader's place back).
            state.writers[0].write(b"y")
            assert await stream.read(1) == b"y"
        assert stream._timer is None  # closing disarms the timer


async def test_two_readers_at_once_are_refused(peer: tuple[_Peer, int]) -> None:
    state, port = peer
    async with ConnectionManager() as mgr:
        async with mgr.open_stream("127.0.0.1", port, timeout=5) as s:
            await state.connected.wait()
            first = asyncio.ensure_future(s.read(1))
            await asyncio.sleep(0.05)
            with pytest.raises(RuntimeError, match="another task is reading"):
                await s.read(1)
            state.writers[0].write(b"q")
            assert await first == b"q"


async def test_no_timeout_means_no_timer(peer: tuple[_Peer, int]) -> None:
    state, port = peer
    async with ConnectionManager() as mgr:
        async with mgr.open_stream("127.0.0.1", port) as s:
            await state.connected.wait()
            asyncio.get_running_loop().call_later(0.05, state.writers[0].write, b"k")
            assert await s.read(1) == b"k"
            assert s._timer is None


async def test_read_before_a_deadline(peer: tuple[_Peer, int]) -> None:
    """`read_before` bounds a read by the caller's deadline (a whole reply's) through the
    stream's one timer, and the stream's own timeout still applies when it is shorter."""
    state, port = peer
    async with ConnectionManager() as mgr:
        loop = asyncio.get_running_loop()
        async with mgr.open_stream("127.0.0.1", port) as s:
            await state.connected.wait()
            loop.call_later(0.05, state.writers[0].write, b"ab")
            assert await s.read_before(1, loop.time() + 5) == b"a"
            assert await s.read_before(5, loop.time() - 1) == b"b"  # buffered: no wait
            assert s._timer is not None  # armed for the first deadline, left to lapse
            started = time.monotonic()
            with pytest.raises(asyncsp.TimeoutError, match="did not answer in time"):
                await s.read_before(1, loop.time() + 0.1)
            assert 0.05 <= time.monotonic() - started < 2
            assert s.closed
        async with mgr.open_stream("127.0.0.1", port, timeout=0.1) as s:
            started = time.monotonic()
            with pytest.raises(asyncsp.TimeoutError):
                await s.read_before(1, loop.time() + 30)
            assert time.monotonic() - started < 2
            assert s.closed
