"""The core runs under uvloop too (its transports are not asyncio.Transport subclasses)."""

from __future__ import annotations

import asyncio

import pytest
import trustme
import uvloop

from asyncsp import ConnectionManager, HttpError, TlsPolicy

from .servers import RawServer, ThreadedServer, reset, server_context


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


def test_a_pooled_connection_that_began_its_answer_is_never_retried_under_uvloop() -> None:
    """uvloop reads sockets itself (never through the socket object): the bytes a reused
    connection received are still counted, so a request whose answer had begun before a reset
    is not sent again."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 20")  # the start of an answer, then a reset
        await writer.drain()
        reset(writer)

    async def run() -> int:
        async with server, ConnectionManager() as mgr:
            assert await (await mgr.put(server.url(), data=b"one")).read() == b"ok"
            with pytest.raises(HttpError):
                await mgr.put(server.url(), data=b"two")
            return len(server.heads)

    server = RawServer(script)
    assert uvloop.run(run()) == 2  # the second PUT went out once
