"""Raw streams under faults: each stream ends in success or a named asyncsp error within its
timeout, never a hang, never a leaked socket. Misbehaving peers are scripted raw servers."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import trustme

from asyncsp import (
    CertificateVerificationError,
    ConnectError,
    ConnectionClosedError,
    ConnectionManager,
    ManagerClosedError,
    TimeoutError,
    TlsPolicy,
)
from asyncsp._sockets import SocketOptions

from ..servers import LOCAL, RawServer, fd_baseline, reset, server_context, truncate_tls, wait_until
from ..test_http_support import Trusted

pytestmark = pytest.mark.stress

TRICKLE_INTERVAL = 0.3
TRICKLE_BYTES = 100  # 30 s of trickling: far past the timeout
TIMEOUT = 1.0
PROMPTLY = 10.0
"""An upper bound no correct run comes near: the failure it guards against is a hang."""


async def trickler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    """One byte every `TRICKLE_INTERVAL` seconds, never a line end (bounded)."""
    for _ in range(TRICKLE_BYTES):
        writer.write(b"t")
        await writer.drain()
        await asyncio.sleep(TRICKLE_INTERVAL)


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    await reader.read()  # never a byte back; ends when the client goes


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_trickling_peer_ends_at_the_timeout(
    server_cert: trustme.LeafCert, trusted: Trusted, tls: bool
) -> None:
    context = server_context(server_cert) if tls else None
    with fd_baseline():
        async with RawServer(trickler, context) as server:
            async with ConnectionManager(policy=trusted()) as mgr:
                loop = asyncio.get_running_loop()
                started = loop.time()
                async with mgr.open_stream(LOCAL, server.port, tls=tls, timeout=TIMEOUT) as s:
                    with pytest.raises(TimeoutError, match=str(server.port)):
                        await s.readline()
                    assert loop.time() - started < PROMPTLY
                    assert s.closed  # a timed-out stream is aborted: its state is unknown
                    with pytest.raises(ConnectionClosedError):
                        await s.read(1)
                sp = mgr.find_service_point(f"{'tls' if tls else 'tcp'}://{LOCAL}:{server.port}")
                assert sp.current_connections == 0
            await server.sockets.wait_closed()


async def test_resets_mid_read_under_load_fail_only_their_own_streams() -> None:
    size = 20_000

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readexactly(1)
        if n % 3 == 0:
            writer.write(b"x" * (size // 2))
            await writer.drain()
            reset(writer)
            return
        writer.write(b"x" * size)
        await writer.drain()
        await reader.read()

    with fd_baseline():
        async with RawServer(script) as server, ConnectionManager() as mgr:
            sp = mgr.find_service_point(f"tcp://{LOCAL}:{server.port}")
            sp.connection_limit = 20

            async def exchange() -> bool:
                async with mgr.open_stream(LOCAL, server.port, timeout=PROMPTLY) as s:
                    s.write(b"?")
                    try:
                        assert await s.readexactly(size) == b"x" * size
                    except ConnectionClosedError as exc:
                        assert exc.partial is None or len(exc.partial) < size
                        return False
                    return True

            results = await asyncio.gather(*(exchange() for _ in range(300)))
            assert results.count(False) == 100
            assert server.sockets.peak <= 20
            assert sp.current_connections == 0
            await server.sockets.wait_closed()


async def test_tls_truncated_without_close_notify(
    server_cert: trustme.LeafCert, trusted: Trusted
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"whole line\npartial")
        await writer.drain()
        if n == 0:
            await truncate_tls(reader, writer)  # else: closed with close_notify on return

    with fd_baseline():
        async with RawServer(script, server_context(server_cert)) as server:
            async with ConnectionManager(policy=trusted()) as mgr:
                async with mgr.open_stream(LOCAL, server.port, tls=True, timeout=PROMPTLY) as s:
                    assert await s.readline() == b"whole line\n"
                    with pytest.raises(ConnectionClosedError) as caught:
                        await s.readexactly(100)
                    assert caught.value.partial == b"partial"
                    assert s.at_eof() and not s.ended_with_close_notify  # a truncation
                async with mgr.open_stream(LOCAL, server.port, tls=True, timeout=PROMPTLY) as s:
                    assert await s.read() == b"whole line\npartial"
                    assert s.at_eof() and s.ended_with_close_notify  # a clean end
            await server.sockets.wait_closed()


async def test_manager_closed_with_streams_in_flight(
    server_cert: trustme.LeafCert, trusted: Trusted
) -> None:
    """Streams reading, streams waiting for a slot, handshakes that never finish: all end."""
    stalled_handshake = RawServer(silent)  # spoken to in TLS, it never answers the hello
    with fd_baseline():
        async with RawServer(silent) as quiet, stalled_handshake:
            mgr = ConnectionManager(policy=trusted(), default_connection_limit=20)

            async def read_forever(port: int, tls: bool) -> None:
                async with mgr.open_stream(LOCAL, port, tls=tls, timeout=60) as s:
                    s.write(b"?")
                    await s.read(1)

            tasks = [asyncio.create_task(read_forever(quiet.port, False)) for _ in range(100)]
            tasks += [
                asyncio.create_task(read_forever(stalled_handshake.port, True)) for _ in range(5)
            ]
            await wait_until(lambda: quiet.connections == 20 and stalled_handshake.connections == 5)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await mgr.aclose()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, ManagerClosedError) for r in results), results[:3]
            assert loop.time() - started < PROMPTLY
            for server in (quiet, stalled_handshake):
                scheme = "tls" if server is stalled_handshake else "tcp"
                sp = mgr.find_service_point(f"{scheme}://{LOCAL}:{server.port}")
                assert sp.current_connections == 0
                await server.sockets.wait_closed()


async def test_five_hundred_failed_handshakes_and_five_hundred_timeouts(
    server_cert: trustme.LeafCert,
) -> None:
    stranger = TlsPolicy(cadata=trustme.CA().cert_pem.bytes().decode())

    async def echo_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        writer.write(await reader.read(100))
        await reader.read()

    with fd_baseline(slack=2):
        async with (
            RawServer(echo_once, server_context(server_cert)) as tls_server,
            RawServer(silent) as quiet,
        ):
            async with ConnectionManager(policy=stranger, default_connection_limit=50) as mgr:

                async def attempt(port: int, tls: bool, timeout: float) -> None:
                    async with mgr.open_stream(LOCAL, port, tls=tls, timeout=timeout) as s:
                        s.write(b"?")
                        await s.readexactly(1)

                refused = await asyncio.gather(
                    *(attempt(tls_server.port, True, PROMPTLY) for _ in range(500)),
                    return_exceptions=True,
                )
                assert all(isinstance(r, CertificateVerificationError) for r in refused)
                timed_out = await asyncio.gather(
                    *(attempt(quiet.port, False, 0.05) for _ in range(250)),
                    *(attempt(quiet.port, True, 0.05) for _ in range(250)),  # stalled handshake
                    return_exceptions=True,
                )
                assert all(isinstance(r, TimeoutError) for r in timed_out), timed_out[:2]
                for address in (f"tls://{LOCAL}:{tls_server.port}", f"tcp://{LOCAL}:{quiet.port}"):
                    assert mgr.find_service_point(address).current_connections == 0
            await tls_server.sockets.wait_closed()
            await quiet.sockets.wait_closed()


async def test_refused_ports_are_connect_errors_and_leave_nothing() -> None:
    async with RawServer(silent) as server:
        port = server.port  # closed below: nothing listens there any more
    with fd_baseline():
        async with ConnectionManager(default_connection_limit=10) as mgr:

            async def connect() -> None:
                async with mgr.open_stream(LOCAL, port, timeout=PROMPTLY):
                    pass

            results = await asyncio.gather(*(connect() for _ in range(200)), return_exceptions=True)
            assert all(isinstance(r, ConnectError) for r in results), results[:2]
            assert all(isinstance(r, ConnectionError) for r in results)  # the builtin family too
            assert mgr.find_service_point(f"tcp://{LOCAL}:{port}").current_connections == 0


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_an_aborted_stream_is_gone_before_the_next_connection_is_made(
    server_cert: trustme.LeafCert, trusted: Trusted, tls: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncio closes an aborted socket a loop callback later. Its slot is free at once, yet no
    task (not even one already scheduled) connects again before it is gone: the peer never
    sees one socket more than the limit."""
    context = server_context(server_cert) if tls else None
    aborted: list[socket.socket] = []
    still_open_at_connect: list[bool] = []
    make_socket = SocketOptions.create_socket

    def watched(self: SocketOptions, family: int, proto: int = 0, **kwargs: Any) -> socket.socket:
        still_open_at_connect.extend(sock.fileno() != -1 for sock in aborted)
        return make_socket(self, family, proto, **kwargs)

    monkeypatch.setattr(SocketOptions, "create_socket", watched)
    async with RawServer(silent, context) as server:
        async with ConnectionManager(policy=trusted(), default_connection_limit=1) as mgr:

            async def reopen() -> None:
                async with mgr.open_stream(LOCAL, server.port, tls=tls, timeout=PROMPTLY):
                    assert server.sockets.peak == 1

            for timed_out in (False, True):
                async with mgr.open_stream(LOCAL, server.port, tls=tls, timeout=0.05) as s:
                    await wait_until(lambda: server.sockets.connected() == 1)
                    aborted.append(s.get_extra_info("socket"))
                    if timed_out:
                        with pytest.raises(TimeoutError):
                            await s.readline()  # the timeout aborts the stream
                        following = asyncio.create_task(reopen())
                    else:
                        following = asyncio.create_task(reopen())  # scheduled before the close
                        s.abort()
                    assert s.service_point.current_connections == 0  # the slot is free at once
                await following
                assert still_open_at_connect == [False] * len(aborted)
                aborted.clear()
                still_open_at_connect.clear()
            await server.sockets.wait_closed()
