"""Trace hooks and the DEBUG log: typed events for what happened on each connection, and
nothing secret in either."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import aiohttp
import pytest
import trustme

import asyncsp
from asyncsp import ConnectionManager, TraceEvent
from asyncsp._http_pool import ENDPOINT_SLOT

from .servers import ThreadedServer, server_context, wait_until
from .test_http_support import Trusted, WebServer


@pytest.fixture(scope="module")
def server(server_cert: trustme.LeafCert) -> Iterator[ThreadedServer]:
    with ThreadedServer(server_context(server_cert)) as running:
        yield running


async def _exchange(mgr: ConnectionManager, port: int) -> None:
    async with mgr.open_stream("localhost", port, tls=True, timeout=5) as stream:
        stream.write(b"x")
        assert await stream.readexactly(6) == b"echo:x"


async def test_hooks_see_each_connection_from_open_to_close(
    server: ThreadedServer, trusted: Trusted
) -> None:
    seen: list[TraceEvent] = []
    late: list[TraceEvent] = []
    async with ConnectionManager(policy=trusted(), trace=[seen.append]) as mgr:
        mgr.add_trace(late.append)
        await _exchange(mgr, server.port)
        await _exchange(mgr, server.port)
    kinds = [type(event).__name__ for event in seen]
    assert kinds == [
        "ConnectionOpened",
        "HandshakeFinished",
        "ConnectionClosed",
        "ConnectionOpened",
        "HandshakeFinished",
        "ConnectionClosed",
    ]
    assert late == seen
    first, second = (e for e in seen if isinstance(e, asyncsp.HandshakeFinished))
    assert first.endpoint == f"tls://localhost:{server.port}"
    assert not first.tls.session_reused and second.tls.session_reused
    assert first.policy == trusted()
    opened = seen[0]
    assert isinstance(opened, asyncsp.ConnectionOpened) and opened.peer == (
        "127.0.0.1",
        server.port,
    )
    closed = seen[2]
    assert isinstance(closed, asyncsp.ConnectionClosed) and closed.reason == "closed"


async def test_a_refused_handshake_is_an_event_with_its_error(
    server: ThreadedServer, trusted: Trusted
) -> None:
    seen: list[TraceEvent] = []
    pinned = trusted(pins=frozenset({"0" * 64}))
    async with ConnectionManager(policy=pinned, trace=[seen.append]) as mgr:
        with pytest.raises(asyncsp.PinMismatchError) as caught:
            await _exchange(mgr, server.port)
    refused = [e for e in seen if isinstance(e, asyncsp.HandshakeFailed)]
    assert len(refused) == 1 and refused[0].error is caught.value
    assert refused[0].policy == pinned


async def test_a_hook_that_raises_is_logged_and_breaks_nothing(
    server: ThreadedServer, trusted: Trusted, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: TraceEvent) -> None:
        raise RuntimeError("hook bug")

    seen: list[TraceEvent] = []
    with caplog.at_level(logging.ERROR, logger="asyncsp"):
        async with ConnectionManager(policy=trusted(), trace=[broken, seen.append]) as mgr:
            await _exchange(mgr, server.port)
    assert len(seen) == 3  # the hook after the broken one still got every event
    assert any("hook bug" in (r.exc_text or "") for r in caplog.records)


def test_a_hook_must_be_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        ConnectionManager(trace=["not a hook"])  # type: ignore[list-item]


async def test_debug_logs_say_version_resumption_and_why_refused(
    server: ThreadedServer, trusted: Trusted, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="asyncsp"):
        async with ConnectionManager(policy=trusted()) as mgr:
            await _exchange(mgr, server.port)
            await _exchange(mgr, server.port)
        async with ConnectionManager(policy=trusted(pins=frozenset({"0" * 64}))) as mgr:
            with pytest.raises(asyncsp.PinMismatchError):
                await _exchange(mgr, server.port)
    tls = [r.getMessage() for r in caplog.records if r.name == "asyncsp.tls"]
    assert any("full handshake" in m for m in tls)
    assert any("resumed" in m for m in tls)
    assert any("TLS refused" in m and "pins" in m for m in tls)
    pool = [r.getMessage() for r in caplog.records if r.name == "asyncsp.pool"]
    assert any("connection opened" in m for m in pool)
    assert any("connection closed" in m for m in pool)


async def test_a_wait_for_a_slot_is_an_event_with_its_time(
    server: ThreadedServer, trusted: Trusted, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[TraceEvent] = []
    async with ConnectionManager(policy=trusted(), trace=[seen.append]) as mgr:
        sp = mgr.find_service_point(f"tls://localhost:{server.port}")
        sp.connection_limit = 1
        async with mgr.open_stream("localhost", server.port, tls=True, timeout=5):
            waiter = asyncio.ensure_future(_exchange(mgr, server.port))
            await wait_until(lambda: sp.is_idle is False and sp._pool.waiting == 1)
            await asyncio.sleep(0.05)  # the measured wait: at least this long
        with caplog.at_level(logging.DEBUG, logger="asyncsp.pool"):
            await waiter
    waits = [e for e in seen if isinstance(e, asyncsp.SlotWaited)]
    assert len(waits) == 1 and waits[0].seconds >= 0.05
    assert waits[0].endpoint == sp.address
    assert any("for a slot (connection_limit=1)" in r.getMessage() for r in caplog.records)


async def test_no_wait_no_event(server: ThreadedServer, trusted: Trusted) -> None:
    seen: list[TraceEvent] = []
    async with ConnectionManager(policy=trusted(), trace=[seen.append]) as mgr:
        await _exchange(mgr, server.port)
    assert not [e for e in seen if isinstance(e, asyncsp.SlotWaited)]


def test_a_policy_set_on_the_manager_or_a_service_point_is_an_event(
    trusted: Trusted, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[TraceEvent] = []
    mgr = ConnectionManager(policy=trusted(), security_protocol="Tls13", trace=[seen.append])
    assert seen == []  # making a manager swaps nothing
    with caplog.at_level(logging.DEBUG, logger="asyncsp"):
        mgr.security_protocol = asyncsp.SecurityProtocol.TLS12
    # The manager's own swap names no endpoint, and its record starts with no empty one.
    [record] = [r for r in caplog.records if r.name.startswith("asyncsp")]
    assert not record.getMessage().startswith(":"), record.getMessage()
    sp = mgr.find_service_point("https://a.test")
    sp.policy = trusted()
    sp.policy = None  # follows the manager again
    assert [(type(e).__name__, e.endpoint) for e in seen] == [
        ("PolicySwapped", ""),
        ("PolicySwapped", "https://a.test:443"),
        ("PolicySwapped", "https://a.test:443"),
    ]
    swaps = [e for e in seen if isinstance(e, asyncsp.PolicySwapped)]
    assert swaps[0].policy.protocols == asyncsp.SecurityProtocol.TLS12
    assert swaps[1].policy == trusted() and swaps[2].policy == mgr.policy
    with pytest.raises(TypeError):
        mgr.policy = "Tls12"  # type: ignore[assignment]
    assert len(seen) == 3  # a refused value swaps nothing


async def test_an_http_request_that_waited_for_a_slot_is_an_event() -> None:
    seen: list[TraceEvent] = []
    async with WebServer() as web, ConnectionManager(trace=[seen.append]) as mgr:
        sp = mgr.find_service_point(web.url())
        sp.connection_limit = 1
        async with mgr.request("GET", web.url("/stream")) as first:
            await web.stream_started.wait()
            second = asyncio.ensure_future(mgr.get(web.url(), timeout=5))
            await wait_until(lambda: bool(sp.layer(ENDPOINT_SLOT)._waiters))  # type: ignore[union-attr]
            await asyncio.sleep(0.05)  # the measured wait: at least this long
            web.release_stream.set()
            await first.read()
        assert (await second).status == 200
    waits = [e for e in seen if isinstance(e, asyncsp.SlotWaited)]
    assert len(waits) == 1 and waits[0].seconds >= 0.05 and waits[0].endpoint == sp.address


async def test_http_connections_are_events_from_open_to_close(
    https: WebServer, trusted: Trusted, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[TraceEvent] = []
    with caplog.at_level(logging.DEBUG, logger="asyncsp"):
        async with ConnectionManager(policy=trusted(), trace=[seen.append]) as mgr:
            for _ in range(2):
                assert (await mgr.get(https.url(), timeout=5)).status == 200
            await mgr.find_service_point(https.url()).close()
            await wait_until(lambda: any(isinstance(e, asyncsp.ConnectionClosed) for e in seen))
    kinds = [type(event).__name__ for event in seen]
    assert kinds == ["HandshakeFinished", "ConnectionOpened", "ConnectionClosed"]
    opened, closed = seen[1], seen[2]
    assert isinstance(opened, asyncsp.ConnectionOpened) and opened.peer == ("127.0.0.1", https.port)
    assert isinstance(closed, asyncsp.ConnectionClosed) and closed.reason == "closed while idle"
    assert opened.endpoint == closed.endpoint == f"https://127.0.0.1:{https.port}"
    http = [r.getMessage() for r in caplog.records if r.name == "asyncsp.http"]
    assert any("connection opened" in m for m in http)
    assert any("reusing an idle connection" in m for m in http)
    assert any("connection closed while idle" in m for m in http)


async def test_aiohttp_trace_configs_are_passed_through() -> None:
    seen: list[str] = []

    async def request_start(session: object, context: object, params: object) -> None:
        seen.append("request start")

    async def connection_made(session: object, context: object, params: object) -> None:
        seen.append("connection made")

    config = aiohttp.TraceConfig()
    config.on_request_start.append(request_start)
    config.on_connection_create_end.append(connection_made)
    async with WebServer() as web, ConnectionManager(trace_configs=[config]) as mgr:
        for _ in range(2):
            assert (await mgr.get(web.url(), timeout=5)).status == 200
    assert seen == ["request start", "connection made", "request start"]


def test_trace_configs_must_be_aiohttp_s() -> None:
    with pytest.raises(TypeError, match=r"aiohttp\.TraceConfig"):
        ConnectionManager(trace_configs=[print])
