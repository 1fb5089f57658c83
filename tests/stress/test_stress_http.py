"""HTTPS under load: 10,000 requests at concurrency 500 through a limit of 20 (a few seconds)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import trustme

from asyncsp import ConnectionManager, TlsPolicy

from ..servers import fd_baseline, server_context
from ._peers import WebApp

pytestmark = pytest.mark.stress

LIMIT = 20
CONCURRENCY = 500
REQUESTS = 10_000


async def test_ten_thousand_https_requests_through_a_limit_of_twenty(
    server_cert: trustme.LeafCert, trusted: Callable[..., TlsPolicy]
) -> None:
    with fd_baseline():
        async with WebApp(server_context(server_cert)) as app:
            async with ConnectionManager(policy=trusted(), default_connection_limit=LIMIT) as mgr:
                sp = mgr.find_service_point(app.url())
                queue = iter(range(REQUESTS))
                ok = 0
                peak = 0

                async def worker() -> None:
                    nonlocal ok, peak
                    for n in queue:
                        path = "/hello" if n % 2 else f"/body?size={n % 4096}"
                        response = await mgr.get(app.url(path), timeout=30)
                        peak = max(peak, sp.current_connections)
                        body = await response.read()
                        assert response.status == 200
                        assert body == (b"hello" if n % 2 else b"b" * (n % 4096))
                        assert response.tls is not None
                        ok += 1

                await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
                assert ok == REQUESTS
                assert peak <= LIMIT
                assert app.sockets.peak <= LIMIT
                assert sp.stats.requests == REQUESTS
                # Keep-alive: the connections opened are those of the first wave, no more.
                assert app.sockets.accepted == sp.stats.connections_opened <= LIMIT
            assert sp.current_connections == 0
            await app.sockets.wait_closed()
    assert app.requests == REQUESTS
