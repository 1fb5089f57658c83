"""SMTP under faults: every session ends in success or a named asyncsp error within its timeout,
never a hang, never a leaked socket. Misbehaving peers are scripted raw servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import trustme

from asyncsp import (
    AsyncspError,
    CertificateVerificationError,
    ConnectionClosedError,
    ConnectionManager,
    ManagerClosedError,
    SendResult,
    TimeoutError,
    TlsPolicy,
)

from ..servers import LOCAL, RawServer, fd_baseline, reset, server_context, truncate_tls, wait_until
from ..test_smtp import mail_server

pytestmark = pytest.mark.stress

TRICKLE_INTERVAL = 0.3
TRICKLE_BYTES = 100  # 30 s of trickling: far past the timeout
TIMEOUT = 1.0
PROMPTLY = 10.0
"""An upper bound no correct run comes near: the failure it guards against is a hang."""
PLAIN = {"security": "none", "timeout": TIMEOUT}
EHLO = b"250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"

DataReply = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def queued(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    writer.write(b"250 2.0.0 queued\r\n")


def smtp_server(
    on_data: DataReply = queued,
    *,
    greeting: bytes = b"220 mx.test ESMTP\r\n",
    context: object = None,
) -> RawServer:
    """A small SMTP server; *on_data(reader, writer, message_number)* answers each message."""
    messages = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        nonlocal messages
        writer.write(greeting)
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(EHLO)
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                while await reader.readline() not in (b".\r\n", b""):
                    pass
                messages += 1
                await on_data(reader, writer, messages)
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()

    return RawServer(script, context)  # type: ignore[arg-type]


async def trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Send *data* one byte every `TRICKLE_INTERVAL` seconds (bounded: `TRICKLE_BYTES`)."""
    for byte in data[:TRICKLE_BYTES]:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(TRICKLE_INTERVAL)


async def send_one(mgr: ConnectionManager, port: int, n: int = 0, **kw: object) -> SendResult:
    async with mgr.smtp(LOCAL, port, **{**PLAIN, **kw}) as client:  # type: ignore[arg-type]
        return await client.sendmail("a@example.org", [f"r{n}@example.org"], b"%d\r\n" % n)


# -- trickles ----------------------------------------------------------------------------------


async def test_trickled_greeting_ends_at_the_timeout() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await trickle(writer, b"220-" + b"m" * TRICKLE_BYTES)

    with fd_baseline():
        async with RawServer(script) as server, ConnectionManager() as mgr:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(TimeoutError, match="greeting"):
                await send_one(mgr, server.port)
            assert loop.time() - started < PROMPTLY
            assert mgr.find_service_point(f"smtp://{LOCAL}:{server.port}").current_connections == 0
            await server.sockets.wait_closed()


async def test_trickled_reply_to_the_message_ends_at_the_timeout() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            await trickle(writer, b"250-" + b"q" * TRICKLE_BYTES)
        else:
            writer.write(b"250 queued\r\n")

    with fd_baseline():
        async with smtp_server(slow) as server, ConnectionManager() as mgr:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(TimeoutError):
                await send_one(mgr, server.port)
            assert loop.time() - started < PROMPTLY
            sp = mgr.find_service_point(f"smtp://{LOCAL}:{server.port}")
            assert sp.current_connections == 0  # closed, never pooled
            assert (await send_one(mgr, server.port)).reply.code == 250
            assert server.connections == 2
        await server.sockets.wait_closed()


# -- resets, truncation, restarts --------------------------------------------------------------


async def test_resets_mid_session_under_load_fail_only_their_own_sends() -> None:
    resets = 0

    async def flaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        nonlocal resets
        if n % 4 == 0:
            resets += 1
            reset(writer)
            raise ConnectionResetError("reset by the script")
        writer.write(b"250 queued\r\n")

    with fd_baseline():
        async with smtp_server(flaky) as server, ConnectionManager() as mgr:
            sp = mgr.find_service_point(f"smtp://{LOCAL}:{server.port}")
            sp.connection_limit = 5

            async def send(n: int) -> SendResult | BaseException:
                try:
                    return await send_one(mgr, server.port, n, timeout=PROMPTLY)
                except AsyncspError as exc:
                    return exc

            results = await asyncio.gather(*(send(n) for n in range(200)))
            failures = [r for r in results if not isinstance(r, SendResult)]
            assert all(isinstance(f, ConnectionClosedError) for f in failures), failures[:3]
            assert len(failures) == resets == 50
            assert server.sockets.peak <= 5
            assert sp.stats.connections_opened == server.connections <= 5 + resets
        assert sp.current_connections == 0
        await server.sockets.wait_closed()


async def test_tls_truncated_without_close_notify(
    server_cert: trustme.LeafCert, trusted: Callable[..., TlsPolicy]
) -> None:
    """A bare FIN mid-reply is a closed connection, never a reply; a session it ends is gone."""

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            writer.write(b"250-first line of a reply that never ends\r\n")
            await writer.drain()
            await truncate_tls(reader, writer)
            raise ConnectionResetError("truncated by the script")
        writer.write(b"250 queued\r\n")

    with fd_baseline():
        async with smtp_server(cut, context=server_context(server_cert)) as server:
            async with ConnectionManager(policy=trusted()) as mgr:
                tls = {"security": "tls", "timeout": PROMPTLY}
                with pytest.raises(ConnectionClosedError, match="closed the connection"):
                    await send_one(mgr, server.port, **tls)
                assert (await send_one(mgr, server.port, **tls)).reply.code == 250
                assert server.connections == 2
            await server.sockets.wait_closed()


async def test_server_crash_with_sends_in_flight() -> None:
    """Every connection reset at once while 20 sends wait for their reply; then all is well."""
    crashed = asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        if not crashed.is_set():
            await asyncio.sleep(PROMPTLY)  # the crash comes first
        writer.write(b"250 queued\r\n")

    with fd_baseline():
        async with smtp_server(held) as server, ConnectionManager() as mgr:
            sp = mgr.find_service_point(f"smtp://{LOCAL}:{server.port}")
            sp.connection_limit = 5
            tasks = [
                asyncio.create_task(send_one(mgr, server.port, n, timeout=PROMPTLY))
                for n in range(20)
            ]
            await wait_until(lambda: server.connections == 5 and server.sockets.connected() == 5)
            await asyncio.sleep(0.1)  # let the five reach their DATA (no event says so)
            crashed.set()
            server.sockets.reset_all()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            failures = [r for r in results if not isinstance(r, SendResult)]
            assert all(isinstance(f, AsyncspError) for f in failures), failures[:3]
            assert len(failures) >= 5  # those on the server at the crash
            assert all(r.reply.code == 250 for r in results if isinstance(r, SendResult))
            again = await asyncio.gather(*(send_one(mgr, server.port, n) for n in range(20)))
            assert all(r.reply.code == 250 for r in again)
            assert server.sockets.peak <= 5
        await server.sockets.wait_closed()


# -- closing, handshakes, timeouts -------------------------------------------------------------


async def test_manager_closed_with_sends_in_flight() -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.read()  # the reply to the message never comes

    with fd_baseline():
        async with smtp_server(never) as server:
            mgr = ConnectionManager(default_connection_limit=5)
            tasks = [
                asyncio.create_task(send_one(mgr, server.port, n, timeout=60)) for n in range(50)
            ]
            await wait_until(lambda: server.connections == 5)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await mgr.aclose()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, ManagerClosedError) for r in results), results[:3]
            assert loop.time() - started < PROMPTLY
            assert mgr.find_service_point(f"smtp://{LOCAL}:{server.port}").current_connections == 0
            await server.sockets.wait_closed()


async def test_failed_handshakes_and_timeouts_leave_no_descriptor(
    server_cert: trustme.LeafCert,
) -> None:
    stranger = TlsPolicy(cadata=trustme.CA().cert_pem.bytes().decode())

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.read()  # no greeting, ever

    with mail_server(server_cert) as good, fd_baseline(slack=2):
        async with RawServer(silent) as quiet:
            async with ConnectionManager(policy=stranger, default_connection_limit=50) as mgr:
                untrusted = await asyncio.gather(
                    *(
                        send_one(mgr, good.port, security="starttls", timeout=PROMPTLY)
                        for _ in range(200)
                    ),
                    return_exceptions=True,
                )
                assert all(isinstance(r, CertificateVerificationError) for r in untrusted), [
                    r for r in untrusted if not isinstance(r, CertificateVerificationError)
                ][:2]
                timed_out = await asyncio.gather(
                    *(send_one(mgr, quiet.port, timeout=0.05) for _ in range(200)),
                    *(send_one(mgr, quiet.port, security="tls", timeout=0.05) for _ in range(200)),
                    return_exceptions=True,
                )
                assert all(isinstance(r, TimeoutError) for r in timed_out), timed_out[:2]
                for scheme in ("smtp", "smtps"):
                    for port in (good.port, quiet.port):
                        sp = mgr.find_service_point(f"{scheme}://{LOCAL}:{port}")
                        assert sp.current_connections == 0
            await quiet.sockets.wait_closed()
    assert good.box.messages == []
