"""Scale: memory follows the endpoints in use; ``max_service_points`` bounds HTTP too.

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


async def test_a_crawl_leaves_no_service_point_after_the_idle_time() -> None:
    """HTTP and raw-stream endpoints alike: once idle for ``max_idle_time`` with their
    connections closed, every service point leaves, with its connector and session."""
    idle = 0.3
    async with LoopbackFarm(600) as served, ConnectionManager(max_idle_time=idle) as mgr:
        http = served.urls()[:400]
        streams = served.endpoints[400:]
        connectors: list[weakref.ref[Any]] = []
        points: list[weakref.ref[Any]] = []

        def get(url: str) -> Callable[[], Awaitable[None]]:
            async def job() -> None:
                response = await mgr.get(url, timeout=10)
                assert response.status == 200
                connector = endpoint_of(mgr, url).current
                assert connector is not None
                connectors.append(weakref.ref(connector.aiohttp_connector))
                # Its keep-alive connection holds the point until the idle time has passed.
                points.append(weakref.ref(mgr.find_service_point(url)))

            return job

        def talk(host: str, port: int) -> Callable[[], Awaitable[None]]:
            async def job() -> None:
                async with mgr.open_stream(host, port, timeout=10) as stream:
                    stream.write(REQUEST)
                    assert (await stream.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
                    assert await stream.readexactly(2) == b"ok"
                    points.append(weakref.ref(stream.service_point))

            return job

        await crawl([get(url) for url in http] + [talk(h, p) for h, p in streams])
        # A point each endpoint, seen while in use (on a slow machine the first may be gone
        # by the time the last is reached: the idle time is short).
        assert len(points) == 600 and len(connectors) == 400
        # Idle keep-alive connections close after the idle time, then their points go.
        await wait_until(lambda: not mgr.service_points, 20)
        await wait_until(lambda: alive(points) == 0 and alive(connectors) == 0, 5)
        # A later request makes a fresh point, from the manager's settings.
        again = mgr.find_service_point(http[0])
        assert again.stats.requests == 0 and again.max_idle_time == idle
        assert (await mgr.get(http[0], timeout=10)).status == 200
        assert again.stats.requests == 1


async def test_a_point_in_use_or_with_settings_of_its_own_stays() -> None:
    idle = 0.2
    async with LoopbackFarm(3) as served, ConnectionManager(max_idle_time=idle) as mgr:
        host_a, port_a = served.endpoints[0]
        _, plain, own = served.urls()
        await mgr.get(plain, timeout=10)
        await mgr.get(own, timeout=10)
        sp_own = mgr.find_service_point(own)
        sp_own.connection_limit = 3
        sp_plain = mgr.find_service_point(plain)
        async with mgr.open_stream(host_a, port_a, timeout=10) as held:
            busy = held.service_point
            # The unused point going shows the idle time has passed for the others too.
            await wait_until(lambda: sp_plain not in mgr.service_points, 10)
            assert busy in mgr.service_points  # a stream is open on it
            assert sp_own in mgr.service_points  # its limit was set here
        await wait_until(lambda: busy not in mgr.service_points, 10)
        assert mgr.service_points == [sp_own]
        assert mgr.find_service_point(own) is sp_own and sp_own.connection_limit == 3
        assert mgr.find_service_point(plain) is not sp_plain


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
