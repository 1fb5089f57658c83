"""Raw streams under load and under a cancellation storm (bounded: a few seconds each)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest
import trustme

from asyncsp import ConnectionManager, TlsPolicy

from ..servers import ThreadedServer, fd_baseline, server_context

pytestmark = pytest.mark.stress

LIMIT = 20
CONCURRENCY = 500


async def test_ten_thousand_plain_streams_through_a_limit_of_twenty() -> None:
    with ThreadedServer() as server, fd_baseline():
        async with ConnectionManager(default_connection_limit=LIMIT) as mgr:
            sp = mgr.find_service_point(f"tcp://127.0.0.1:{server.port}")
            peak = 0
            queue = iter(range(10_000))
            done = 0

            async def worker() -> None:
                nonlocal peak, done
                for n in queue:
                    async with mgr.open_stream("127.0.0.1", server.port, timeout=30) as s:
                        peak = max(peak, sp.current_connections)
                        payload = b"%d" % n
                        s.write(payload)
                        assert await s.readexactly(5 + len(payload)) == b"echo:" + payload
                    done += 1

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            assert done == 10_000
            assert peak <= LIMIT
            assert sp.current_connections == 0
            assert sp.stats.connections_opened == 10_000
    assert server.record.peak_active <= LIMIT
    assert server.record.connections == 10_000


async def test_tls_streams_through_a_limit_with_resumption(
    server_cert: trustme.LeafCert, trusted: Callable[..., TlsPolicy]
) -> None:
    with ThreadedServer(server_context(server_cert)) as server, fd_baseline():
        async with ConnectionManager(policy=trusted(), default_connection_limit=LIMIT) as mgr:
            sp = mgr.find_service_point(f"tls://localhost:{server.port}")
            queue = iter(range(1_000))

            async def worker() -> None:
                for _ in queue:
                    async with mgr.open_stream("localhost", server.port, tls=True, timeout=30) as s:
                        s.write(b"x")
                        assert await s.readexactly(6) == b"echo:x"

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            assert sp.stats.tls_handshakes + sp.stats.session_resumptions == 1_000
            assert sp.stats.session_resumptions > 900  # all but the first wave resume
            assert sp.current_connections == 0
    assert server.record.peak_active <= LIMIT


async def test_cancellation_storm_leaves_the_pool_at_full_strength() -> None:
    rng = random.Random(7)  # a fixed seed: the same storm every run
    with ThreadedServer() as server, fd_baseline():
        async with ConnectionManager(default_connection_limit=LIMIT) as mgr:
            sp = mgr.find_service_point(f"tcp://127.0.0.1:{server.port}")

            async def exchange(n: int) -> None:
                async with mgr.open_stream("127.0.0.1", server.port, timeout=30) as s:
                    for _ in range(3):
                        s.write(b"%d" % n)
                        await s.readexactly(5 + len(b"%d" % n))

            tasks = [asyncio.create_task(exchange(n)) for n in range(1_000)]
            for task in tasks:
                if rng.random() < 0.5:
                    await asyncio.sleep(0)  # let some run into connect, read or write first
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results)
            assert sp.current_connections == 0
            assert sp._pool.waiting == 0
            # Full strength: LIMIT streams open at once, none waits.
            held = asyncio.Event()
            opened = 0

            async def hold() -> None:
                nonlocal opened
                async with mgr.open_stream("127.0.0.1", server.port, timeout=5):
                    opened += 1
                    if opened == LIMIT:
                        held.set()
                    await held.wait()

            await asyncio.wait_for(asyncio.gather(*(hold() for _ in range(LIMIT))), 10)
            assert opened == LIMIT
