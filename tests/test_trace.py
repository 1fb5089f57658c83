"""Trace hooks and the DEBUG log: typed events for what happened on each connection, and
nothing secret in either."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import trustme

import asyncsp
from asyncsp import ConnectionManager, TraceEvent

from .servers import ThreadedServer, server_context
from .test_http_support import Trusted


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
