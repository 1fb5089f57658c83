"""Scale: ``max_service_points`` bounds HTTP too.

A crawler-like client reaches hundreds of distinct loopback endpoints served by one
`LoopbackFarm`; what the manager keeps afterwards is counted with weak references.
"""

from __future__ import annotations

import asyncio
import gc
import resource
import socket
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Self

import pytest

from asyncsp import ConnectionManager, ServicePoint

from .servers import LOCAL, wait_until
from .test_http_support import endpoint_of

REQUEST = b"GET / HTTP/1.1\r\nHost: farm\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class _Answer(asyncio.Protocol):
    """Answers every request head with `ANSWER`, keeping the connection open."""

    def __init__(self, open_transports: set[asyncio.Transport]) -> None:
        self.open_transports = open_transports
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.open_transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open_transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.transport.write(ANSWER)


class LoopbackFarm:
    """HTTP on *count* distinct loopback endpoints, in the loop under test.

    One socket bound to 0.0.0.0 but tied to the loopback device (``SO_BINDTODEVICE lo``)
    answers every 127.x.y.z address and nothing from outside; where that option is refused,
    one listener per endpoint on 127.0.0.1 does instead.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.endpoints: list[tuple[str, int]] = []
        self._servers: list[asyncio.Server] = []
        self._transports: set[asyncio.Transport] = set()

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()

        def answer() -> _Answer:
            return _Answer(self._transports)

        shared = _loopback_only_socket()
        if shared is not None:
            port = shared.getsockname()[1]
            # 127.0.1.1 onwards: distinct hosts, each its own service point.
            self.endpoints = [
                (f"127.0.{1 + i // 250}.{1 + i % 250}", port) for i in range(self.count)
            ]
            self._servers.append(await loop.create_server(answer, sock=shared))
            return self
        for _ in range(self.count):
            server = await loop.create_server(answer, LOCAL, 0)
            self._servers.append(server)
            self.endpoints.append((LOCAL, server.sockets[0].getsockname()[1]))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for server in self._servers:
            server.close()
        for transport in list(self._transports):
            transport.close()
        for server in self._servers:
            await server.wait_closed()

    def urls(self) -> list[str]:
        return [f"http://{host}:{port}/" for host, port in self.endpoints]


def _loopback_only_socket() -> socket.socket | None:
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
        sock.bind(("0.0.0.0", 0))  # tied to lo above: loopback only
        sock.listen(1024)
    except (OSError, AttributeError):
        sock.close()
        return None
    sock.setblocking(False)
    return sock


@pytest.fixture(autouse=True, scope="module")
def _descriptors() -> Iterator[None]:
    """Room for a crawl's sockets, both ends, where the soft limit is low (1,024 in CI)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 8192) if hard != resource.RLIM_INFINITY else 8192
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def crawl(jobs: list[Callable[[], Awaitable[None]]], concurrency: int = 50) -> None:
    """Run every job, *concurrency* at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(one(job) for job in jobs))


def alive(refs: list[weakref.ref[Any]]) -> int:
    gc.collect()
    return sum(1 for ref in refs if ref() is not None)


async def test_a_bounded_manager_keeps_no_evicted_http_endpoint_alive() -> None:
    """With ``max_service_points=5``, 60 HTTP endpoints leave at most 5 service points,
    connectors and sessions alive once the evicted ones have closed their connections."""
    # aiohttp arms its keep-alive timer in the context of a request, and a cancelled timer
    # keeps that context until it is due: a short idle time bounds that wait.
    async with (
        LoopbackFarm(60) as served,
        ConnectionManager(max_service_points=5, max_idle_time=1.0) as mgr,
    ):
        points: list[weakref.ref[ServicePoint]] = []
        connectors: list[weakref.ref[Any]] = []
        sessions: list[weakref.ref[Any]] = []
        for url in served.urls():
            assert (await mgr.get(url, timeout=10)).status == 200
            sp = mgr.find_service_point(url)
            sp.connection_limit = 4  # a setting of its own: never reclaimed, still evicted
            points.append(weakref.ref(sp))
            connector = endpoint_of(mgr, url).current
            assert connector is not None
            connectors.append(weakref.ref(connector.aiohttp_connector))
            sessions.append(weakref.ref(connector.session))
            del sp, connector
        assert len(mgr.service_points) == 5
        await wait_until(
            lambda: alive(points) <= 5 and alive(connectors) <= 5 and alive(sessions) <= 5, 10
        )
        assert {ref() for ref in points} - {None} == set(mgr.service_points)
        assert len(mgr.service_points) == 5
