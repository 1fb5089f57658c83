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
from collections.abc import Callable

import pytest
import trustme
from aiohttp import web

from asyncsp import ConnectionManager, SecurityProtocol, TlsPolicy

from ..servers import fd_baseline, server_context
from ._peers import CountedSocket, WebApp

pytestmark = pytest.mark.stress

TLS12, TLS13 = SecurityProtocol.TLS12, SecurityProtocol.TLS13
VERSION = {TLS12: "TLSv1.2", TLS13: "TLSv1.3"}
CONCURRENCY = 200
REQUESTS_EACH = 4  # so that connections are also reused, during the flips and after them
FLIPS = 100
SERVED_PER_FLIP = 3  # 100 flips span 300 of the 800 responses: all under load
# Above concurrency plus the sockets a swap may close: a request never waits for a slot, so
# the window between its start and its connection stays short (a sharp oracle).
LIMIT = 2 * CONCURRENCY + 100


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


async def test_flips_under_load_never_mix_policies_and_never_fail(
    server_cert: trustme.LeafCert, trusted: Callable[..., TlsPolicy]
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
            sp.connection_limit = LIMIT
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
