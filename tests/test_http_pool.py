"""HTTP pooling through service points: keep-alive, limits, leases, sockets, sessions, swaps."""

from __future__ import annotations

import asyncio
import socket

import pytest
import trustme
from yarl import URL

import asyncsp
from asyncsp import ConnectionManager, SecurityProtocol
from asyncsp._http_pool import HttpLayer

from .servers import server_context, wait_until
from .test_http_support import Trusted, WebServer, endpoint_of
from .test_pool import run_counting_comparisons

TLS12, TLS13 = SecurityProtocol.TLS12, SecurityProtocol.TLS13


async def test_idle_connections_of_an_old_policy_close_at_the_change(
    https: WebServer, trusted: Trusted
) -> None:
    async with ConnectionManager(policy=trusted(protocols=TLS12)) as mgr:
        await asyncio.gather(*(mgr.get(https.url("/work")) for _ in range(3)))
        sp = mgr.find_service_point(https.url())
        idle_before = sp.current_connections
        assert idle_before >= 2
        async with mgr.request("GET", https.url("/stream")) as streamed:  # keeps one busy
            await https.stream_started.wait()
            mgr.security_protocol = TLS13
            await mgr.get(https.url())
            # The idle TLS 1.2 connections were closed at the change, not left to expire; the
            # streamed one and the new TLS 1.3 one remain.
            await wait_until(lambda: sp.current_connections == 2, 1.0)
            https.release_stream.set()
            assert await streamed.read() == b"first-last"
        await wait_until(lambda: sp.current_connections == 1, 1.0)


async def test_keep_alive_reuses_one_connection(https: WebServer, mgr: ConnectionManager) -> None:
    for _ in range(20):
        response = await mgr.get(https.url())
        assert await response.read() == b"hello"
    sp = mgr.find_service_point(https.url())
    assert https.seen.connections == 1
    assert len(set(https.seen.peers)) == 1
    assert sp.stats.connections_opened == 1
    assert sp.stats.requests == 20
    assert sp.current_connections == 1
    assert sp.idle_since is not None


async def test_connection_limit_holds_under_concurrency(
    https: WebServer, mgr: ConnectionManager
) -> None:
    sp = mgr.find_service_point(https.url())
    sp.connection_limit = 2
    peak = 0

    async def one() -> int:
        nonlocal peak
        response = await mgr.get(https.url("/work"))
        peak = max(peak, sp.current_connections)
        return response.status

    statuses = await asyncio.gather(*(one() for _ in range(30)))
    assert statuses == [200] * 30
    assert https.seen.peak_open <= 2
    assert https.seen.peak_in_flight == 2  # the limit was reached, never passed
    assert https.seen.connections <= 2
    assert peak <= 2
    assert sp.stats.requests == 30


async def test_lowering_the_limit_applies_to_next_requests(
    https: WebServer, mgr: ConnectionManager
) -> None:
    await asyncio.gather(*(mgr.get(https.url("/work")) for _ in range(6)))
    sp = mgr.find_service_point(https.url())
    sp.connection_limit = 1
    https.seen.peak_in_flight = 0
    statuses = await asyncio.gather(*(mgr.get(https.url("/work")) for _ in range(6)))
    assert statuses and all(r.status == 200 for r in statuses)
    assert https.seen.peak_in_flight == 1
    assert sp.current_connections <= 1


async def test_lease_timeout_rotates_connections(https: WebServer, mgr: ConnectionManager) -> None:
    sp = mgr.find_service_point(https.url())
    sp.connection_lease_timeout = 0.0  # every connection serves one request
    for _ in range(3):
        await mgr.get(https.url())
    assert https.seen.connections == 3
    assert len(set(https.seen.peers)) == 3
    sp.connection_lease_timeout = 0.2
    await mgr.get(https.url())
    await mgr.get(https.url())
    assert https.seen.peers[-1] == https.seen.peers[-2]
    # Time passing is what this tests: the pooled connection outlives its lease.
    await asyncio.sleep(0.25)
    await mgr.get(https.url())
    assert https.seen.peers[-1] != https.seen.peers[-2]
    assert https.seen.connections == 5


async def test_sockets_are_counted_until_closed(https: WebServer, trusted: Trusted) -> None:
    async with ConnectionManager(policy=trusted()) as mgr:
        sp = mgr.find_service_point(https.url())
        assert sp.current_connections == 0
        await asyncio.gather(*(mgr.get(https.url("/work")) for _ in range(4)))
        opened = sp.current_connections
        assert 1 <= opened <= 4 and opened == https.seen.open
        sp.max_idle_time = 0.05  # the next request gets a connector with the new keep-alive
        await mgr.get(https.url())
        # The old connector's idle sockets closed at the change; the new one's by keep-alive.
        await wait_until(lambda: sp.current_connections == 0, 2.0)
    assert sp.current_connections == 0


async def test_idle_since_follows_requests(https: WebServer, mgr: ConnectionManager) -> None:
    sp = mgr.find_service_point(https.url())
    assert sp.idle_since is not None
    async with mgr.request("GET", https.url("/stream")) as response:
        assert sp.idle_since is None
        https.release_stream.set()
        await response.read()
    since = sp.idle_since
    assert since is not None and since.tzinfo is not None


async def test_service_point_close_closes_idle_http_connections(
    https: WebServer, mgr: ConnectionManager
) -> None:
    await asyncio.gather(*(mgr.get(https.url("/work")) for _ in range(3)))
    sp = mgr.find_service_point(https.url())
    assert sp.current_connections >= 2
    async with mgr.request("GET", https.url("/stream")) as streamed:
        await https.stream_started.wait()
        await sp.close()  # the streamed one is in use: it stays
        await wait_until(lambda: sp.current_connections == 1, 1.0)
        https.release_stream.set()
        assert await streamed.read() == b"first-last"


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
async def test_new_connections_resume_the_service_points_session(
    server_cert: trustme.LeafCert, trusted: Trusted, version: str
) -> None:
    async with (
        WebServer(server_context(server_cert, version, version)) as server,
        ConnectionManager(policy=trusted()) as mgr,
    ):
        sp = mgr.find_service_point(server.url())
        sp.connection_lease_timeout = 0.0  # one request per connection
        infos = [(await mgr.get(server.url())).tls for _ in range(3)]
        assert [i.session_reused for i in infos if i is not None] == [False, True, True]
        assert server.seen.connections == 3
        assert sp.stats.tls_handshakes == 1 and sp.stats.session_resumptions == 2
        assert sp.stats.versions == {version: 3}


async def test_socket_options_apply_to_http_connections(plain: WebServer, trusted: Trusted) -> None:
    for nodelay in (True, False):
        async with ConnectionManager(tcp_nodelay=nodelay) as mgr:
            await mgr.get(plain.url())
            connector = endpoint_of(mgr, plain.url()).current
            assert connector is not None
            sockets = [t.socket() for t in connector._tickets.values()]
            assert len(sockets) == 1 and sockets[0] is not None
            value = sockets[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert bool(value) is nodelay
    async with ConnectionManager(local_address="127.0.0.2") as mgr:
        await mgr.get(plain.url())
    assert plain.seen.hosts[-1] == "127.0.0.2"


def test_http_under_uvloop(server_cert: trustme.LeafCert, trusted: Trusted) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def run() -> tuple[list[str], int, int]:
        async with (
            WebServer(server_context(server_cert)) as server,
            ConnectionManager(policy=trusted()) as mgr,
        ):
            responses = await asyncio.gather(*(mgr.get(server.url("/work")) for _ in range(4)))
            sp = mgr.find_service_point(server.url())
            opened = sp.current_connections
            sp.connection_lease_timeout = 0.0
            resumed = await mgr.get(server.url())
            assert resumed.tls is not None and resumed.tls.session_reused
        versions = [r.tls.version for r in responses if r.tls is not None]
        return versions, opened, sp.current_connections

    versions, opened, after = uvloop.run(run())
    assert versions == ["TLSv1.3"] * 4
    assert 1 <= opened <= 4
    assert after == 0


async def test_twenty_cancelled_requests_under_a_limit_of_two(
    https: WebServer, mgr: ConnectionManager
) -> None:
    sp = mgr.find_service_point(https.url())
    sp.connection_limit = 2
    tasks = [asyncio.create_task(mgr.get(https.url("/stall"))) for _ in range(20)]
    await https.in_flight_reached(2).wait()
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    endpoint = endpoint_of(mgr, https.url())
    # The cancelled requests' connections finish closing.
    await wait_until(lambda: endpoint.held == 0, 1.0)
    statuses = await asyncio.gather(*(mgr.get(https.url("/work")) for _ in range(10)))
    assert [r.status for r in statuses] == [200] * 10
    # The server still runs the two stalled handlers, so count its sockets, not requests.
    assert https.seen.peak_open <= 2
    assert https.seen.connections == 4  # the two cancelled ones were closed, two new
    assert sp.current_connections <= 2


async def test_policy_flips_under_load_keep_the_limit(https: WebServer, trusted: Trusted) -> None:
    """Connectors swap under load; sockets (ours, counted until closed) never pass the limit."""
    async with ConnectionManager(policy=trusted(protocols=TLS12)) as mgr:
        sp = mgr.find_service_point(https.url())
        sp.connection_limit = 3
        peak = 0
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, sp.current_connections)
                await asyncio.sleep(0)

        async def flip() -> None:
            for _ in range(20):
                await https.in_flight_reached(1).wait()
                mgr.security_protocol = TLS13 if mgr.security_protocol is TLS12 else TLS12
                await asyncio.sleep(0.005)

        sampler = asyncio.create_task(sample())
        flipper = asyncio.create_task(flip())
        responses = await asyncio.gather(*(mgr.get(https.url("/work")) for _ in range(90)))
        await flipper
        done.set()
        await sampler
        assert [r.status for r in responses] == [200] * 90
        versions = {r.tls.version for r in responses if r.tls is not None}
        assert versions == {"TLSv1.2", "TLSv1.3"}
        assert peak <= 3
        endpoint = endpoint_of(mgr, https.url())
        assert endpoint.retired == [] and endpoint.held == 0


def test_gate_admission_does_not_scan_the_queue() -> None:
    """Admitting and cancelling a waiter costs the same however many requests wait: with
    2,000 of them a scan per admission would compare futures about two million times."""
    waiters = 2000
    admitted: list[int] = []

    async def main() -> None:
        async with ConnectionManager() as mgr:
            endpoint = HttpLayer.of(mgr).endpoint(URL("http://127.0.0.1:9/"))  # never contacted
            endpoint.sp.connection_limit = 1

            async def one(n: int) -> None:
                await endpoint.admit()
                admitted.append(n)
                await asyncio.sleep(0)
                endpoint.give_back()

            tasks = [asyncio.create_task(one(n)) for n in range(waiters)]
            await asyncio.sleep(0)
            cancelled = tasks[waiters // 2 :: 100]
            for task in cancelled:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert len(admitted) == waiters - len(cancelled)
            assert admitted == sorted(admitted)  # first come, first served
            assert endpoint.held == 0

    assert run_counting_comparisons(main) < waiters


async def test_waiting_requests_go_in_order_and_a_cancelled_one_frees_nothing(
    plain: WebServer, mgr: ConnectionManager
) -> None:
    sp = mgr.find_service_point(plain.url())
    sp.connection_limit = 1
    async with mgr.request("GET", plain.url("/stream")) as holder:
        await plain.stream_started.wait()
        endpoint = endpoint_of(mgr, plain.url())
        tasks = []
        for n in range(6):
            tasks.append(asyncio.create_task(mgr.get(plain.url(), headers={"X-N": str(n)})))
            await wait_until(lambda: len(endpoint._waiters) == len(tasks))
        tasks[2].cancel()
        with pytest.raises(asyncio.CancelledError):
            await tasks[2]
        assert len(endpoint._waiters) == 5 and endpoint.held == 1
        plain.release_stream.set()
        assert await holder.read() == b"first-last"
    responses = await asyncio.wait_for(asyncio.gather(*(t for t in tasks if t is not tasks[2])), 5)
    assert [r.status for r in responses] == [200] * 5
    # Each freed slot went to the next request in line; none was lost to the cancelled one.
    order = [h["X-N"] for h in plain.seen.headers if "X-N" in h]
    assert order == ["0", "1", "3", "4", "5"]
    assert plain.seen.peak_open == 1
    await wait_until(lambda: endpoint.held == 0 and not endpoint._waiters)


async def test_requests_waiting_for_a_slot_each_end_at_their_own_deadline(
    https: WebServer, mgr: ConnectionManager
) -> None:
    """The gate's waiters share one expiry timer: each still ends at its own deadline, a later
    waiter with a sooner deadline first, and one whose slot frees in time gets it."""
    sp = mgr.find_service_point(https.url())
    sp.connection_limit = 1
    loop = asyncio.get_running_loop()
    async with mgr.request("GET", https.url("/stream")) as holder:  # takes the only slot
        await https.stream_started.wait()
        started = loop.time()
        ended: dict[str, float] = {}

        async def waiting(name: str, timeout: float) -> BaseException | int:
            try:
                return (await mgr.get(https.url(), timeout=timeout)).status
            except Exception as exc:
                return exc
            finally:
                ended[name] = loop.time() - started

        slow = asyncio.ensure_future(waiting("slow", 0.6))
        await wait_until(lambda: len(endpoint_of(mgr, https.url())._waiters) == 1, 1.0)
        quick = asyncio.ensure_future(waiting("quick", 0.2))  # arrives later, due sooner
        patient = asyncio.ensure_future(waiting("patient", 30.0))
        quick_error = await quick
        assert isinstance(quick_error, asyncsp.TimeoutError)
        assert "within 0.2 s" in str(quick_error) and 0.2 <= ended["quick"] < 5
        slow_error = await slow
        assert isinstance(slow_error, asyncsp.TimeoutError)
        assert "within 0.6 s" in str(slow_error) and 0.6 <= ended["slow"] < 5
        assert ended["quick"] < ended["slow"]  # the sooner deadline first, not the first waiter
        assert not patient.done()  # its deadline is far: still waiting
        https.release_stream.set()
        assert await holder.read() == b"first-last"
    assert await patient == 200  # the slot freed in time
    assert not endpoint_of(mgr, https.url())._waiters
