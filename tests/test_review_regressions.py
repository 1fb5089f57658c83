"""Regressions: STARTTLS injection during a context build, closes during connects, eviction."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable

import anyio.to_thread
import pytest
import trustme

from asyncsp import ConnectionManager, ManagerClosedError, TlsError, TlsPolicy

from .servers import ServerRecord, ThreadedServer, fd_baseline, server_context, wait_until
from .test_http_support import WebServer


async def test_bytes_injected_while_the_context_is_built_are_refused(
    server_cert: trustme.LeafCert, ca_pem: str
) -> None:
    inject = threading.Event()

    def go_then_inject(conn: socket.socket, record: ServerRecord) -> None:
        assert conn.recv(100) == b"STARTTLS\r\n"
        conn.sendall(b"GO\r\n")
        inject.wait(10)
        conn.sendall(b"250 INJECTED-IN-CLEAR\r\n")
        conn.recv(100)

    # A policy never used before: its context is built in a worker thread. With the worker
    # pool held busy, the injected bytes arrive while start_tls waits for that build.
    policy = TlsPolicy(cadata=ca_pem, alpn=("injection-race",))
    limiter = anyio.to_thread.current_default_thread_limiter()
    saved = limiter.total_tokens
    release = threading.Event()
    with ThreadedServer(None, go_then_inject) as server:
        async with ConnectionManager(policy=policy) as mgr:
            async with mgr.open_stream("localhost", server.port, timeout=10) as s:
                s.write(b"STARTTLS\r\n")
                assert await s.readline() == b"GO\r\n"
                limiter.total_tokens = 1
                try:
                    blocker = asyncio.create_task(anyio.to_thread.run_sync(release.wait, 10))
                    await asyncio.sleep(0)
                    upgrade = asyncio.create_task(s.start_tls())
                    await asyncio.sleep(0)
                    inject.set()
                    await wait_until(lambda: s.buffered > 0)
                    release.set()
                    with pytest.raises(TlsError, match="before the TLS handshake"):
                        await upgrade
                    await blocker
                finally:
                    release.set()
                    limiter.total_tokens = saved
                assert s.closed


async def test_closing_the_manager_interrupts_a_stalled_handshake(
    server_cert: trustme.LeafCert, trusted: Callable[..., TlsPolicy]
) -> None:
    with ThreadedServer(server_context(server_cert), handshake=False) as stalled, fd_baseline():
        mgr = ConnectionManager(policy=trusted())

        async def connect() -> None:
            async with mgr.open_stream("localhost", stalled.port, tls=True, timeout=30):
                pytest.fail("the stalled handshake completed")

        task = asyncio.create_task(connect())
        await wait_until(lambda: stalled.record.connections >= 1)
        await mgr.aclose()
        with pytest.raises(ManagerClosedError, match="while connecting"):
            await asyncio.wait_for(task, 5)
        assert stalled.record.connections == 1


async def test_a_user_cancel_during_connect_stays_a_cancellation(
    server_cert: trustme.LeafCert, trusted: Callable[..., TlsPolicy]
) -> None:
    with ThreadedServer(server_context(server_cert), handshake=False) as stalled:
        async with ConnectionManager(policy=trusted()) as mgr:

            async def connect() -> None:
                async with mgr.open_stream("localhost", stalled.port, tls=True, timeout=30):
                    pass

            task = asyncio.create_task(connect())
            await wait_until(lambda: stalled.record.connections >= 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            sp = mgr.find_service_point(f"tls://localhost:{stalled.port}")
            assert sp.current_connections == 0


async def test_evicting_a_service_point_closes_its_http_connections() -> None:
    async with WebServer() as server:
        async with ConnectionManager(max_service_points=1) as mgr:
            resp = await mgr.get(server.url(), timeout=5)
            assert resp.status == 200
            first = mgr.find_service_point(server.url())
            await wait_until(lambda: server.seen.open == 1)
            mgr.find_service_point("https://other.test")  # evicts the idle HTTP service point
            await wait_until(lambda: server.seen.open == 0)
            assert first not in mgr.service_points
