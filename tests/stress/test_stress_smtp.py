"""SMTP under load: 500 sends through 5 pooled STARTTLS sessions against aiosmtpd."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import trustme

from asyncsp import ConnectionManager, TlsPolicy

from ..servers import fd_baseline
from ..test_smtp import LOCAL, PASSWORD, USER, mail_server

pytestmark = pytest.mark.stress

LIMIT = 5
SENDS = 500


async def test_five_hundred_sends_through_five_pooled_sessions(
    server_cert: trustme.LeafCert, trusted: Callable[..., TlsPolicy]
) -> None:
    with mail_server(server_cert) as server, fd_baseline():
        async with ConnectionManager(policy=trusted(), default_connection_limit=LIMIT) as mgr:
            sp = mgr.find_service_point(f"smtp://{LOCAL}:{server.port}")
            peak = 0

            async def send(n: int) -> None:
                nonlocal peak
                async with mgr.smtp(
                    LOCAL, server.port, username=USER, password=PASSWORD, timeout=30
                ) as client:
                    peak = max(peak, sp.current_connections)
                    assert client.tls is not None
                    content = b"Subject: %d\r\n\r\n%d\r\n" % (n, n)
                    result = await client.sendmail(
                        "sender@example.org", [f"r{n}@example.org"], content
                    )
                    assert result.accepted == [f"r{n}@example.org"]

            await asyncio.gather(*(send(n) for n in range(SENDS)))
            assert peak <= LIMIT
            assert sp.stats.requests == SENDS
            assert sp.stats.connections_opened <= LIMIT
            # One full handshake, then resumption for every other session of the endpoint.
            assert sp.stats.tls_handshakes + sp.stats.session_resumptions == (
                sp.stats.connections_opened
            )
        assert sp.current_connections == 0
    box = server.box
    assert len(box.messages) == SENDS
    assert box.connections <= LIMIT and box.peak <= LIMIT
    received = sorted(int(rcpts[0][1:].split("@")[0]) for _, rcpts, _, _ in box.messages)
    assert received == list(range(SENDS))
    for _, rcpts, content, _ in box.messages:
        n = rcpts[0][1:].split("@")[0].encode()
        assert content == b"Subject: " + n + b"\r\n\r\n" + n + b"\r\n"
    assert box.quits == box.connections  # every pooled session said goodbye at close
