"""The core runs under uvloop too (its transports are not asyncio.Transport subclasses)."""

from __future__ import annotations

import trustme
import uvloop

from asyncsp import ConnectionManager, TlsPolicy

from .servers import ThreadedServer, server_context


def test_tls_streams_and_resumption_under_uvloop(
    server_cert: trustme.LeafCert, ca_pem: str
) -> None:
    async def run() -> list[tuple[str, bool]]:
        seen: list[tuple[str, bool]] = []
        async with ConnectionManager(policy=TlsPolicy(cadata=ca_pem)) as mgr:
            for _ in range(2):
                async with mgr.open_stream("localhost", server.port, tls=True, timeout=5) as s:
                    s.write(b"hi")
                    assert await s.readexactly(7) == b"echo:hi"
                    assert s.tls is not None
                    seen.append((s.tls.version, s.tls.session_reused))
        return seen

    with ThreadedServer(server_context(server_cert)) as server:
        assert uvloop.run(run()) == [("TLSv1.3", False), ("TLSv1.3", True)]
