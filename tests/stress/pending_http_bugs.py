# Reproductions of known HTTP-layer bugs (not collected: the file name has no test_ prefix).
# Each test fails on main today; rename it into a test_ module together with its fix.
"""Reproductions of HTTP-layer bugs found by the stress suite, kept until they are fixed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest
import trustme

from asyncsp import AsyncspError, ConnectionManager, SecurityProtocol, TlsPolicy

from ..servers import server_context, wait_until
from ._peers import RawServer, WebApp, read_request, truncate_tls

TLS12, TLS13 = SecurityProtocol.TLS12, SecurityProtocol.TLS13
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_a_cancelled_tls_request_keeps_its_slot_until_its_socket_is_gone(
    server_cert: trustme.LeafCert, trusted: Callable[..., TlsPolicy]
) -> None:
    async with (
        WebApp(server_context(server_cert)) as app,
        ConnectionManager(policy=trusted(), default_connection_limit=1) as mgr,
    ):
        sp = mgr.find_service_point(app.url())
        first = asyncio.create_task(mgr.get(app.url("/hold")))
        await wait_until(lambda: app.holding == 1)
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        second = asyncio.create_task(mgr.get(app.url("/hello")))
        peak = 0
        while not second.done():  # bounded: the request ends within its default timeout
            peak = max(peak, sp.current_connections)
            await asyncio.sleep(0)
        assert (await second).status == 200
        assert peak <= 1, f"{peak} sockets open at once with connection_limit=1"


async def test_a_connection_opened_after_a_flip_uses_the_policy_then_in_force(
    server_cert: trustme.LeafCert, trusted: Callable[..., TlsPolicy]
) -> None:
    async with (
        WebApp(server_context(server_cert, "TLSv1.2", "TLSv1.3")) as app,
        ConnectionManager(policy=trusted(protocols=TLS12)) as mgr,
    ):
        sp = mgr.find_service_point(app.url())
        sp.connection_limit = 2
        # Two idle TLS 1.2 connections; the flip closes them (not gone yet: "orphans").
        await asyncio.gather(mgr.get(app.url("/work")), mgr.get(app.url("/work")))
        endpoint = sp.layer_state["http"]
        mgr.security_protocol = TLS13
        late = asyncio.create_task(mgr.get(app.url("/hello")))
        for _ in range(10_000):  # until it waits for the orphans, its TLS 1.3 connector chosen
            await asyncio.sleep(0)
            if endpoint._drain_waiters or late.done():
                break
        assert endpoint._drain_waiters, "the request did not wait for the closing sockets"
        mgr.security_protocol = TLS12  # before its connection is made
        response = await late
        assert response.tls is not None
        assert response.tls.version == "TLSv1.2", "a new connection under a retired policy"


async def test_flips_while_requests_wait_for_closing_sockets_never_fail_a_request(
    server_cert: trustme.LeafCert, trusted: Callable[..., TlsPolicy]
) -> None:
    failures: list[BaseException] = []
    for _ in range(3):
        async with (
            WebApp(server_context(server_cert, "TLSv1.2", "TLSv1.3")) as app,
            ConnectionManager(policy=trusted(protocols=TLS12)) as mgr,
        ):
            mgr.find_service_point(app.url()).connection_limit = 50
            flipping = True

            async def flipper() -> None:
                nonlocal flipping
                for _ in range(100):
                    await asyncio.sleep(0.005)
                    mgr.security_protocol = TLS13 if mgr.security_protocol is TLS12 else TLS12
                flipping = False

            async def worker() -> None:
                for _ in range(100):
                    if not flipping:  # noqa: B023 - read live on purpose
                        return
                    try:
                        await mgr.get(app.url("/work"), timeout=30)
                    except AsyncspError as exc:
                        failures.append(exc)

            await asyncio.gather(flipper(), *(worker() for _ in range(200)))
    assert not failures, f"{len(failures)} requests failed, e.g. {failures[0]}"


async def test_the_retry_after_a_stale_connection_takes_a_new_one() -> None:
    closing = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            if closing.is_set() and n < 2:
                return  # the server closed this idle connection as the request arrived
            if n < 2:
                await asyncio.sleep(0.05)  # overlap the two warm-up requests
            writer.write(OK)
            await writer.drain()

    async with RawServer(script) as server, ConnectionManager() as mgr:
        mgr.find_service_point(server.url()).connection_limit = 2
        await asyncio.gather(mgr.get(server.url()), mgr.get(server.url()))  # two pooled
        closing.set()
        assert (await mgr.get(server.url(), timeout=5)).status == 200  # fails: HttpError


async def test_a_close_delimited_tls_body_cut_without_close_notify_is_an_error(
    server_cert: trustme.LeafCert, trusted: Callable[..., TlsPolicy]
) -> None:
    """RFC 9112 §9.8: without Content-Length or chunking, only close_notify ends the body."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"y" * 1000)
        await writer.drain()
        await truncate_tls(reader, writer)  # a FIN, no close_notify: the attacker's cut

    async with (
        RawServer(script, server_context(server_cert)) as server,
        ConnectionManager(policy=trusted()) as mgr,
    ):
        with pytest.raises(AsyncspError):
            response = await mgr.get(server.url(), timeout=5)
            await response.read()  # fails: 1000 bytes returned as the whole body
