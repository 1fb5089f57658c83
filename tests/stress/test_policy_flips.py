"""Policy flips under load: 200 concurrent HTTPS requests while the manager's
`security_protocol` flips between TLS 1.2 and TLS 1.3 a hundred times.

The flips are numbered. The server notes the flip number at each accept and the version it
negotiated; each request notes the numbers at its start and at its end. The oracle:

- a connection is made under a policy in force at some moment between the start of the
  request that opened it and the server's accept of its socket;
- a request given an existing connection gets one whose policy was in force (by value) at
  some moment of the request: an idle connection of a retired policy is never handed out;
- the version a response reports is the one the server negotiated on that connection;
- no request fails.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import trustme
from aiohttp import web

from asyncsp import AsyncspError, ConnectionManager, SecurityProtocol

from ..servers import CountedSocket, fd_baseline, server_context
from ..test_http_support import Trusted, endpoint_of
from ._peers import WebApp

pytestmark = pytest.mark.stress

TLS12, TLS13 = SecurityProtocol.TLS12, SecurityProtocol.TLS13
VERSION = {TLS12: "TLSv1.2", TLS13: "TLSv1.3"}
CONCURRENCY = 200
REQUESTS_EACH = 4  # so that connections are also reused, during the flips and after them
FLIPS = 100
SERVED_PER_FLIP = 3  # 100 flips span 300 of the 800 responses: all under load
# Above concurrency plus the sockets a swap may close: a request never waits for a slot, so
# the window between its start and its connection stays short (a sharp oracle). Under the
# small limit requests wait for slots and for closing sockets while the policy changes.
WIDE_LIMIT = 2 * CONCURRENCY + 100
SMALL_LIMIT = 20


@dataclasses.dataclass
class Connection:
    accepted_at_flip: int
    requests: list[int] = dataclasses.field(default_factory=list)  # request ids, served order
    negotiated: str = ""  # the version the server negotiated


@dataclasses.dataclass
class Call:
    started_at_flip: int
    ended_at_flip: int
    version: str


@pytest.mark.parametrize("limit", [WIDE_LIMIT, SMALL_LIMIT])
async def test_flips_under_load_never_mix_policies_and_never_fail(
    server_cert: trustme.LeafCert, trusted: Trusted, limit: int
) -> None:
    flips = 0
    policies = [TLS12]  # policies[n]: in force after n flips
    connections: dict[int, Connection] = {}
    by_fd: dict[int, int] = {}  # server socket fd -> connection number (fds are reused)
    served = asyncio.Semaphore(0)  # one release per response the server sends
    calls: dict[int, Call] = {}
    in_flight_at_flip: list[int] = []

    def on_accept(sock: CountedSocket) -> None:
        number = len(connections)
        connections[number] = Connection(flips)
        by_fd[sock.fileno()] = number

    def on_request(request: web.Request) -> None:
        assert request.transport is not None
        number = by_fd[request.transport.get_extra_info("socket").fileno()]
        connection = connections[number]
        connection.requests.append(int(request.headers["X-Request"]))
        connection.negotiated = request.transport.get_extra_info("ssl_object").version()
        served.release()

    app = WebApp(server_context(server_cert, "TLSv1.2", "TLSv1.3"))
    app.sockets.on_accept = on_accept
    app.on_request = on_request
    with fd_baseline():
        async with app, ConnectionManager(policy=trusted(protocols=TLS12)) as mgr:
            sp = mgr.find_service_point(app.url())
            sp.connection_limit = limit
            in_flight = 0

            async def flipper() -> None:
                nonlocal flips
                for _ in range(FLIPS):
                    for _ in range(SERVED_PER_FLIP):  # paced by the load, not by the clock
                        await served.acquire()
                    policy = TLS13 if policies[-1] is TLS12 else TLS12
                    mgr.security_protocol = policy
                    policies.append(policy)
                    flips += 1
                    in_flight_at_flip.append(in_flight)

            async def worker(first: int) -> None:
                nonlocal in_flight
                for n in range(first, first + REQUESTS_EACH):
                    started = flips
                    in_flight += 1
                    path = "/work" if n % 3 else "/body?size=100000"
                    async with mgr.request(
                        "GET", app.url(path), headers={"X-Request": str(n)}, timeout=30
                    ) as response:
                        assert response.status == 200
                        await response.read()
                        assert response.tls is not None
                        version = response.tls.version
                    in_flight -= 1
                    calls[n] = Call(started, flips, version)

            flipping = asyncio.create_task(flipper())
            await asyncio.gather(*(worker(w * REQUESTS_EACH) for w in range(CONCURRENCY)))
            await asyncio.wait_for(flipping, 5)  # done long before: 300 of 800 answers
            assert flips == FLIPS
            assert all(n > 0 for n in in_flight_at_flip)  # every flip under load

            def in_force(first: int, last: int) -> set[str]:
                return {VERSION[p] for p in policies[first : last + 1]}

            seen_versions = set()
            for number, conn in connections.items():
                if not conn.requests:
                    continue  # a socket no request came over (closed at a swap)
                opener, *reusers = (calls[n] for n in conn.requests)
                assert opener.version in in_force(opener.started_at_flip, conn.accepted_at_flip), (
                    f"connection {number} opened under a policy not in force: {opener}, {conn}"
                )
                for call in reusers:
                    assert call.version in in_force(call.started_at_flip, call.ended_at_flip), (
                        f"connection {number} handed out under another policy: {call}, {conn}"
                    )
                assert {c.version for c in (opener, *reusers)} == {conn.negotiated}
                seen_versions.add(conn.negotiated)
            assert seen_versions == {"TLSv1.2", "TLSv1.3"}
            # Every request succeeded, and each was served exactly once.
            assert len(calls) == CONCURRENCY * REQUESTS_EACH
            assert sum(len(c.requests) for c in connections.values()) == len(calls)
            assert sum(sp.stats.versions.values()) == sp.stats.connections_opened
            assert sp.stats.requests == len(calls)
        await app.sockets.wait_closed()


async def test_a_connection_opened_after_a_flip_uses_the_policy_then_in_force(
    server_cert: trustme.LeafCert, trusted: Trusted
) -> None:
    """A request that waits for closing sockets chooses its connector after the wait."""
    async with (
        WebApp(server_context(server_cert, "TLSv1.2", "TLSv1.3")) as app,
        ConnectionManager(policy=trusted(protocols=TLS12)) as mgr,
    ):
        sp = mgr.find_service_point(app.url())
        sp.connection_limit = 2
        # Two idle TLS 1.2 connections; the flip closes them (not gone yet: "orphans").
        await asyncio.gather(mgr.get(app.url("/work")), mgr.get(app.url("/work")))
        endpoint = endpoint_of(mgr, app.url())
        mgr.security_protocol = TLS13
        late = asyncio.create_task(mgr.get(app.url("/hello")))
        for _ in range(10_000):  # until it waits for the closing sockets, TLS 1.3 chosen
            await asyncio.sleep(0)
            if endpoint._drain_waiters or late.done():
                break
        assert endpoint._drain_waiters, "the request did not wait for the closing sockets"
        mgr.security_protocol = TLS12  # before its connection is made
        response = await late
        assert response.tls is not None
        assert response.tls.version == "TLSv1.2", "a new connection under a retired policy"


async def test_flips_every_few_milliseconds_while_requests_wait_never_fail_a_request(
    server_cert: trustme.LeafCert, trusted: Trusted
) -> None:
    """Flips paced by the clock, faster than connections close: a request that waited for a
    slot or for closing sockets never runs on a connector retired (and closed) meanwhile."""
    failures: list[BaseException] = []
    for _ in range(3):
        async with (
            WebApp(server_context(server_cert, "TLSv1.2", "TLSv1.3")) as app,
            ConnectionManager(policy=trusted(protocols=TLS12)) as mgr,
        ):
            mgr.find_service_point(app.url()).connection_limit = 50
            flipping = True

            async def flipper() -> None:
                nonlocal flipping
                for _ in range(FLIPS):
                    await asyncio.sleep(0.005)
                    mgr.security_protocol = TLS13 if mgr.security_protocol is TLS12 else TLS12
                flipping = False

            async def worker() -> None:
                for _ in range(FLIPS):  # bounded: ends with the flips
                    if not flipping:  # noqa: B023 - read live on purpose
                        return
                    try:
                        await mgr.get(app.url("/work"), timeout=30)
                    except AsyncspError as exc:
                        failures.append(exc)

            await asyncio.gather(flipper(), *(worker() for _ in range(CONCURRENCY)))
    assert not failures, f"{len(failures)} requests failed, e.g. {failures[0]}"
