"""Happy Eyeballs (RFC 8305): a resolved address that never answers costs at most the attempt
delay before the next one is tried, never the whole connect timeout.

The address that never answers is a loopback listener whose accept queue is full: Linux drops
the SYNs it cannot queue, so a connect to it neither succeeds nor fails. The resolver is the
test's (it answers one name with that address first, then a good one); nothing but 127.0.0.1 is
ever contacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from asyncsp import ConnectionManager

from .servers import LOCAL, RawServer
from .test_smtp import responder, scripted

NAME = "dual.test"


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A port on 127.0.0.1 whose listener answers no new SYN (its accept queue is full)."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind((LOCAL, 0))
        listener.listen(0)  # room for one connection that is never accepted
        port: int = listener.getsockname()[1]
        filler = socket.create_connection((LOCAL, port), timeout=5)
        fillers.append(filler)
        probe = socket.socket()
        fillers.append(probe)
        probe.setblocking(False)
        probe.connect_ex((LOCAL, port))
        _, writable, _ = select.select([], [probe], [], 0.5)
        if writable and probe.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            pytest.skip("this kernel completes connections past a full accept queue")
        yield port
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """The addresses the running loop resolves NAME to, in order (set by the test)."""
    answers: list[tuple[str, int]] = []
    real = asyncio.base_events.BaseEventLoop.getaddrinfo

    async def getaddrinfo(self: Any, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != NAME:
            return await real(self, host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", address) for address in answers]

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "getaddrinfo", getaddrinfo)
    yield answers


@contextlib.asynccontextmanager
async def timed(limit: float) -> AsyncIterator[None]:
    started = time.monotonic()
    yield
    elapsed = time.monotonic() - started
    assert elapsed < limit, f"took {elapsed:.2f} s"


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    writer.write(await reader.read(1))
    await writer.drain()


async def test_a_stream_reaches_the_next_address_within_the_delay(
    resolver: list[tuple[str, int]],
) -> None:
    async with RawServer(echo) as good:
        with black_hole() as silent:
            resolver[:] = [(LOCAL, silent), (LOCAL, good.port)]
            async with ConnectionManager() as mgr, timed(1.5):
                async with mgr.open_stream(NAME, good.port, timeout=5) as stream:
                    stream.write(b"x")
                    assert await stream.readexactly(1) == b"x"
    assert good.connections == 1


async def test_an_smtp_session_reaches_the_next_address_within_the_delay(
    resolver: list[tuple[str, int]],
) -> None:
    async with scripted(responder()) as (server, port):
        with black_hole() as silent:
            resolver[:] = [(LOCAL, silent), (LOCAL, port)]
            async with ConnectionManager() as mgr, timed(1.5):
                async with mgr.smtp(NAME, port, security="none", timeout=5) as client:
                    assert (await client.noop()).code == 250
    assert server.connections == 1
