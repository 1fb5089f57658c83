"""HTTP under faults: each request ends in success or a named asyncsp error within its timeout,
never a hang, never a leaked socket. Misbehaving peers are scripted raw servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import uuid
from typing import Any

import aiohttp
import pytest
import trustme

from asyncsp import (
    AsyncspError,
    CertificateVerificationError,
    ConnectError,
    ConnectionManager,
    HttpError,
    ManagerClosedError,
    Response,
    SecurityProtocol,
    TimeoutError,
    TlsError,
    TlsPolicy,
)

from ..servers import (
    RawServer,
    ServerRecord,
    ThreadedServer,
    fd_baseline,
    read_request,
    reset,
    server_context,
    truncate_tls,
    wait_until,
)
from ..test_http_support import Trusted, endpoint_of, settled
from ._peers import WebApp

pytestmark = pytest.mark.stress

OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
TRICKLE_INTERVAL = 0.3
TRICKLE_BYTES = 100  # 30 s of trickling: far past any timeout below
TIMEOUT = 1.0
PROMPTLY = 10.0
"""An upper bound no correct run comes near: the failure it guards against is a hang."""


# -- resets, idle closes, truncation, trickles -------------------------------------------------


async def test_resets_mid_body_under_load_fail_only_their_own_requests() -> None:
    """Every third response on a connection is cut by a reset halfway through its body."""
    size = 10_000
    resets = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        nonlocal resets
        for served in range(1, 1_000):
            await read_request(reader)
            if served % 3 == 0:
                writer.write(OK_HEAD % size + b"x" * (size // 2))
                await writer.drain()
                resets += 1
                reset(writer)
                return
            writer.write(OK_HEAD % size + b"x" * size)
            await writer.drain()

    with fd_baseline():
        async with RawServer(script) as server, ConnectionManager() as mgr:
            mgr.find_service_point(server.url()).connection_limit = 10

            async def get() -> Response | BaseException:
                try:
                    response = await mgr.get(server.url(), timeout=PROMPTLY)
                except AsyncspError as exc:
                    return exc
                assert await response.read() == b"x" * size  # never a truncated success
                return response

            results = await asyncio.gather(*(get() for _ in range(300)))
            failures = [r for r in results if not isinstance(r, Response)]
            assert all(isinstance(f, HttpError) for f in failures), failures[:3]
            assert len(failures) == resets > 0  # a body cut short is never retried
            assert server.sockets.peak <= 10
            await settled(mgr, server.url())
            await server.sockets.wait_closed()


def idle_closing(*, when_asked: bool) -> tuple[RawServer, list[str]]:
    """A server that closes its first connection while idle, after one response.

    *when_asked*: it reads the next request first and closes without answering (the close
    crossed the request on the wire); otherwise it closes once idle, before any request.
    Later connections answer every request. The methods it saw are returned in a list.
    """
    methods: list[str] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            head = await read_request(reader)
            methods.append(head.split(b" ", 1)[0].decode())
            if n == 0 and len(methods) > 1:
                return  # the close crossed this request: it gets no answer
            writer.write(OK_HEAD % 2 + (b"" if methods[-1] == "HEAD" else b"ok"))
            await writer.drain()
            if n == 0 and not when_asked:
                return  # closed while idle, between requests

    return RawServer(script), methods


async def status_of(mgr: ConnectionManager, method: str, url: str) -> int:
    async with mgr.request(method, url, timeout=PROMPTLY) as response:
        await response.read()
        return response.status


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"])
async def test_idle_close_crossing_an_idempotent_request_is_retried_once(method: str) -> None:
    server, methods = idle_closing(when_asked=True)
    with fd_baseline():
        async with server, ConnectionManager() as mgr:
            assert (await mgr.get(server.url())).status == 200
            assert await status_of(mgr, method, server.url()) == 200
            assert methods == ["GET", method, method]  # once more, on a new connection
            assert server.connections == 2
            await mgr.aclose()
            await settled(mgr, server.url())


async def test_idle_close_crossing_a_post_is_never_resent() -> None:
    server, methods = idle_closing(when_asked=True)
    async with server, ConnectionManager() as mgr:
        assert (await mgr.post(server.url(), data=b"one")).status == 200
        with pytest.raises(HttpError, match="closed the connection"):
            await mgr.post(server.url(), data=b"two")
        assert methods == ["POST", "POST"]
        assert (await mgr.post(server.url(), data=b"three")).status == 200
        assert methods == ["POST", "POST", "POST"] and server.connections == 2


async def test_the_retry_after_a_stale_connection_takes_a_new_one() -> None:
    """Two pooled connections both closed by the server: the retry never takes the second."""
    closing = asyncio.Event()
    both_open = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            both_open.set()
        while True:  # bounded: the client closes, and read_request fails
            await read_request(reader)
            if closing.is_set() and n < 2:
                return  # the server closed this idle connection as the request arrived
            async with asyncio.timeout(PROMPTLY):
                await both_open.wait()  # the warm-up requests overlap: two connections
            writer.write(OK_HEAD % 2 + b"ok")
            await writer.drain()

    async with RawServer(script) as server, ConnectionManager() as mgr:
        mgr.find_service_point(server.url()).connection_limit = 2
        await asyncio.gather(mgr.get(server.url()), mgr.get(server.url()))  # two pooled
        assert server.connections == 2
        closing.set()
        assert (await mgr.get(server.url(), timeout=PROMPTLY)).status == 200
        assert server.connections == 3
        await mgr.aclose()
        await settled(mgr, server.url())


async def test_the_retry_runs_within_what_is_left_of_the_timeout() -> None:
    """A GET the server drops on a pooled connection after a while is retried once; both fit
    in one timeout."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n == 0:
            writer.write(OK_HEAD % 2 + b"ok")  # the first GET: the connection is pooled
            await read_request(reader)
            await asyncio.sleep(1.2)  # the server's behaviour: a long think, then it drops it
            return
        await reader.read()  # the retry: never answered

    async with RawServer(script) as server, ConnectionManager() as mgr:
        assert (await mgr.get(server.url(), timeout=PROMPTLY)).status == 200
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await mgr.get(server.url(), timeout=2.0)
        assert server.connections == 2  # retried once
        assert loop.time() - started < 3.0  # not 1.2 s and then a whole second timeout
        await mgr.aclose()
        await settled(mgr, server.url())


async def test_redirects_run_within_one_timeout_from_the_first_request() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:  # bounded: the client closes, and read_request fails
            head = await read_request(reader)
            await asyncio.sleep(1.2)  # the server's behaviour: each answer takes a while
            if head.startswith(b"GET /a "):
                writer.write(b"HTTP/1.1 302 Found\r\nLocation: /b\r\nContent-Length: 0\r\n\r\n")
            else:
                writer.write(OK_HEAD % 2 + b"ok")
            await writer.drain()

    async with RawServer(script) as server, ConnectionManager() as mgr:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await mgr.get(server.url("/a"), timeout=2.0)
        assert loop.time() - started < 3.0  # not 1.2 s for /a and a whole timeout for /b
        assert (await mgr.get(server.url("/a"), timeout=PROMPTLY)).status == 200
        await mgr.aclose()
        await settled(mgr, server.url())


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_idle_close_seen_before_the_next_request_costs_nothing(method: str) -> None:
    """A close the client has read is never a failure: the request takes a new connection."""
    server, methods = idle_closing(when_asked=False)
    async with server, ConnectionManager() as mgr:
        sp = mgr.find_service_point(server.url())
        assert await status_of(mgr, method, server.url()) == 200
        await wait_until(lambda: sp.current_connections == 0)  # the client saw the FIN
        for _ in range(3):
            assert await status_of(mgr, method, server.url()) == 200
        assert methods == [method] * 4  # nothing sent twice
        assert server.connections == 2


CLOSE_DELIMITED = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"y" * 1000


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (OK_HEAD % 5000 + b"y" * 1000, "incomplete"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" + b"y" * 1000,
            "incomplete",
        ),
        # RFC 9112 §9.8: without a length only close_notify ends the body; a FIN may be a cut.
        (CLOSE_DELIMITED, "without TLS close_notify"),
        (OK_HEAD % 1000 + b"y" * 1000, None),  # complete by its length
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n"
            + b"y" * 1000
            + b"\r\n0\r\n\r\n",
            None,
        ),
    ],
    ids=[
        "length-short",
        "chunked-short",
        "close-delimited",
        "length-complete",
        "chunked-complete",
    ],
)
async def test_tls_truncated_without_close_notify(
    server_cert: trustme.LeafCert, trusted: Trusted, response: bytes, error: str | None
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(response)
        await writer.drain()
        await truncate_tls(reader, writer)

    with fd_baseline():
        async with RawServer(script, server_context(server_cert)) as server:
            async with ConnectionManager(policy=trusted()) as mgr:
                for _ in range(2):  # whole, and streamed
                    if error is None:
                        assert await (await mgr.get(server.url(), timeout=PROMPTLY)).read() == (
                            b"y" * 1000
                        )
                        async with mgr.request("GET", server.url(), timeout=PROMPTLY) as streamed:
                            assert await streamed.content.read() == b"y" * 1000
                        continue
                    with pytest.raises(HttpError, match=error):
                        await mgr.get(server.url(), timeout=PROMPTLY)
                    with pytest.raises(HttpError, match=error):
                        async with mgr.request("GET", server.url(), timeout=PROMPTLY) as streamed:
                            await streamed.content.read()
                await settled(mgr, server.url())
            await server.sockets.wait_closed()


@pytest.mark.parametrize("tls", [True, False], ids=["close_notify", "plain"])
async def test_a_close_delimited_body_ended_cleanly_is_whole(
    server_cert: trustme.LeafCert, trusted: Trusted, tls: bool
) -> None:
    """The same body, ended by close_notify (TLS) or by a FIN (plain HTTP), is accepted."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(CLOSE_DELIMITED)
        await writer.drain()
        writer.close()  # under TLS asyncio sends close_notify first
        await writer.wait_closed()

    context = server_context(server_cert) if tls else None
    async with RawServer(script, context) as server, ConnectionManager(policy=trusted()) as mgr:
        assert await (await mgr.get(server.url(), timeout=PROMPTLY)).read() == b"y" * 1000
        async with mgr.request("GET", server.url(), timeout=PROMPTLY) as streamed:
            assert [chunk async for chunk in streamed.content.iter_any()] != []
            assert streamed.closed  # the body's end was seen, and accepted
        await settled(mgr, server.url())


async def trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Send *data* one byte every `TRICKLE_INTERVAL` seconds (bounded: `TRICKLE_BYTES`)."""
    for byte in data[:TRICKLE_BYTES]:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(TRICKLE_INTERVAL)


@pytest.mark.parametrize("part", ["head", "body"])
async def test_trickling_peer_ends_at_the_timeout(part: str) -> None:
    """One byte every 300 ms keeps a connection alive forever; the 1 s timeout ends it."""
    head = OK_HEAD % TRICKLE_BYTES

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        if part == "head":
            await trickle(writer, head + b"z" * TRICKLE_BYTES)
        else:
            writer.write(head)
            await trickle(writer, b"z" * TRICKLE_BYTES)

    with fd_baseline():
        async with RawServer(script) as server, ConnectionManager() as mgr:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(TimeoutError, match=str(server.port)):
                await mgr.get(server.url(), timeout=TIMEOUT)
            assert loop.time() - started < PROMPTLY
            started = loop.time()
            with pytest.raises(TimeoutError):
                async with mgr.request("GET", server.url(), timeout=TIMEOUT) as streamed:
                    await streamed.content.read()
            assert loop.time() - started < PROMPTLY
            await settled(mgr, server.url())
            await server.sockets.wait_closed()


# -- restarts, closes, storms ------------------------------------------------------------------


async def test_server_restarted_with_two_hundred_requests_in_flight(
    server_cert: trustme.LeafCert, trusted: Trusted
) -> None:
    with fd_baseline():
        app = WebApp(server_context(server_cert))
        async with app, ConnectionManager(policy=trusted(), default_connection_limit=20) as mgr:
            url = app.url("/hold")

            async def get() -> Response | BaseException:
                try:
                    return await mgr.get(url, timeout=PROMPTLY)
                except AsyncspError as exc:
                    return exc

            loop = asyncio.get_running_loop()
            started = loop.time()
            tasks = [asyncio.create_task(get()) for _ in range(200)]
            await wait_until(lambda: app.holding == 20)
            await app.stop(crash=True)
            await app.start()  # the same port
            app.release.set()
            results = await asyncio.gather(*tasks)
            assert loop.time() - started < 2 * PROMPTLY
            failures = [r for r in results if not isinstance(r, Response)]
            assert all(isinstance(f, HttpError | ConnectError) for f in failures), failures[:3]
            assert all(r.status == 200 for r in results if isinstance(r, Response))
            assert len(failures) <= 20  # only those on the server at the crash could fail
            # The pool is whole: a full round on the restarted server succeeds.
            again = await asyncio.gather(*(mgr.get(url, timeout=PROMPTLY) for _ in range(40)))
            assert [r.status for r in again] == [200] * 40
            assert app.sockets.peak <= 20
        await app.sockets.wait_closed()


async def test_manager_closed_with_requests_in_flight(
    server_cert: trustme.LeafCert, trusted: Trusted
) -> None:
    with fd_baseline():
        async with WebApp(server_context(server_cert)) as app:
            mgr = ConnectionManager(policy=trusted(), default_connection_limit=20)
            held = [asyncio.create_task(mgr.get(app.url("/hold"))) for _ in range(150)]
            streamed = mgr.request("GET", app.url(f"/body?size={2**22}"))
            response = await streamed.__aenter__()
            assert len(await response.content.readexactly(1000)) == 1000
            await wait_until(lambda: app.holding == 19)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await mgr.aclose()
            results = await asyncio.gather(*held, return_exceptions=True)
            assert all(isinstance(r, ManagerClosedError) for r in results), results[:3]
            with pytest.raises(ManagerClosedError):
                await response.content.read()
            await streamed.__aexit__(None, None, None)
            with pytest.raises(ManagerClosedError):
                await mgr.get(app.url())
            assert loop.time() - started < PROMPTLY
            assert mgr.find_service_point(app.url()).current_connections == 0
            await app.sockets.wait_closed()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
@pytest.mark.parametrize("ending", ["manager closed", "response closed", "read cancelled"])
async def test_a_server_blocked_on_a_full_window_is_reset_when_the_client_gives_up(
    server_cert: trustme.LeafCert, trusted: Trusted, tls: bool, ending: str
) -> None:
    """A server streaming a large body faster than it is read blocks on our full receive
    window. When we give up, it must see a reset at once: after a FIN alone it would stay
    blocked for its FIN timeout (60 s on Linux), holding its socket and buffers."""
    chunk = b"x" * 65536
    blocked = asyncio.Event()
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(OK_HEAD % (1 << 34))
        high_water = writer.transport.get_write_buffer_limits()[1]
        with contextlib.suppress(ConnectionError):  # how the connection ended is read below
            for _ in range(1 << 18):  # 16 GiB: the window is full long before
                writer.write(chunk)
                if writer.transport.get_write_buffer_size() > high_water:
                    blocked.set()  # the kernel takes no more: drain waits for our window
                    await writer.drain()  # ...or for the connection's end
                    break
                await writer.drain()
        try:
            await reader.read()  # raises how the connection ended, if not by an end of stream
        except ConnectionResetError:
            outcome.set_result("reset")
        except OSError as exc:
            outcome.set_result(type(exc).__name__)
        else:
            outcome.set_result("end of stream")

    async with RawServer(script, server_context(server_cert) if tls else None) as server:
        mgr = ConnectionManager(policy=trusted())
        async with mgr.request("GET", server.url(), timeout=PROMPTLY) as response:
            assert len(await response.content.readexactly(len(chunk))) == len(chunk)
            await asyncio.wait_for(blocked.wait(), PROMPTLY)
            if ending == "response closed":
                response.close()
            else:
                reading = asyncio.create_task(response.content.readexactly(1 << 33))
                await asyncio.sleep(0)
                if ending == "read cancelled":
                    reading.cancel()
                else:
                    await mgr.aclose()
                with pytest.raises((asyncio.CancelledError, ManagerClosedError)):
                    await reading
        assert await asyncio.wait_for(outcome, PROMPTLY) == "reset"
        await mgr.aclose()
        await server.sockets.wait_closed()


async def test_five_hundred_failed_handshakes_and_five_hundred_timeouts(
    server_cert: trustme.LeafCert, trusted: Trusted
) -> None:
    stranger = TlsPolicy(cadata=trustme.CA().cert_pem.bytes().decode())

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.read()  # never answers; ends when the client goes

    with fd_baseline(slack=2):
        async with (
            WebApp(server_context(server_cert, "TLSv1.2", "TLSv1.2")) as tls12_only,
            RawServer(silent) as quiet,
        ):
            async with ConnectionManager(policy=stranger, default_connection_limit=50) as mgr:
                untrusted = await asyncio.gather(
                    *(mgr.get(tls12_only.url()) for _ in range(250)), return_exceptions=True
                )
                assert all(isinstance(r, CertificateVerificationError) for r in untrusted)
                mgr.policy = trusted(protocols=SecurityProtocol.TLS13)
                refused = await asyncio.gather(
                    *(mgr.get(tls12_only.url()) for _ in range(250)), return_exceptions=True
                )
                # No version in common: OpenSSL refuses inside the handshake.
                assert all(isinstance(r, TlsError) for r in refused), refused[:2]
                tls_silent = f"https://127.0.0.1:{quiet.port}/"
                timed_out = await asyncio.gather(
                    *(mgr.get(quiet.url(), timeout=0.05) for _ in range(250)),
                    *(mgr.get(tls_silent, timeout=0.05) for _ in range(250)),
                    return_exceptions=True,
                )
                assert all(isinstance(r, TimeoutError) for r in timed_out), timed_out[:2]
                for url in (tls12_only.url(), quiet.url(), tls_silent):
                    await settled(mgr, url)
            assert tls12_only.requests == 0
            await tls12_only.sockets.wait_closed()
            await quiet.sockets.wait_closed()


@pytest.mark.parametrize("end", ["cancelled", "timed out"])
async def test_a_request_ended_early_keeps_its_slot_until_its_socket_is_gone(
    server_cert: trustme.LeafCert, trusted: Trusted, end: str
) -> None:
    """aiohttp closes the TLS connection of a request that never got its response; until that
    socket is gone the next request must not open another (limit 1: never two at once)."""
    async with (
        WebApp(server_context(server_cert)) as app,
        ConnectionManager(policy=trusted(), default_connection_limit=1) as mgr,
    ):
        sp = mgr.find_service_point(app.url())
        for _ in range(3):  # a new connection, then after each early end
            first = asyncio.create_task(mgr.get(app.url("/hold"), timeout=0.5))
            await wait_until(lambda: app.holding == 1)
            if end == "cancelled":
                first.cancel()
            with pytest.raises(asyncio.CancelledError if end == "cancelled" else TimeoutError):
                await first
            second = asyncio.create_task(mgr.get(app.url("/hello"), timeout=PROMPTLY))
            peak = 0
            while not second.done():  # bounded: the request ends within its timeout
                peak = max(peak, sp.current_connections)
                await asyncio.sleep(0)
            assert (await second).status == 200
            assert peak <= 1, f"{peak} sockets open at once with connection_limit=1"
            assert app.sockets.peak <= 1
            app.release.set()
            await wait_until(lambda: app.holding == 0)
            app.release.clear()
        await mgr.aclose()
        await settled(mgr, app.url())


# -- the gate ----------------------------------------------------------------------------------


async def test_a_request_waiting_for_a_free_connection_ends_at_its_timeout(
    server_cert: trustme.LeafCert, trusted: Trusted
) -> None:
    async with (
        WebApp(server_context(server_cert)) as app,
        ConnectionManager(policy=trusted(), default_connection_limit=1) as mgr,
    ):
        holder = asyncio.create_task(mgr.get(app.url("/hold"), timeout=PROMPTLY))
        await wait_until(lambda: app.holding == 1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError, match=r"no connection became free within 0\.5 s"):
            await mgr.get(app.url("/hello"), timeout=0.5)
        assert 0.5 <= loop.time() - started < PROMPTLY
        started = loop.time()
        connect_only = aiohttp.ClientTimeout(total=None, connect=0.5)  # aiohttp counts it too
        with pytest.raises(TimeoutError, match=r"no connection became free within 0\.5 s"):
            await mgr.get(app.url("/hello"), timeout=connect_only)
        assert 0.5 <= loop.time() - started < PROMPTLY
        app.release.set()
        assert (await holder).status == 200
        assert (await mgr.get(app.url("/hello"), timeout=PROMPTLY)).status == 200  # no slot lost
        await mgr.aclose()
        await settled(mgr, app.url())


def unshared_policy(ca_pem: str) -> TlsPolicy:
    """A policy no other test uses, so its SSL context is built (in a thread) on first use.

    Text outside the PEM block is ignored by OpenSSL, but makes the policy a new value.
    """
    return TlsPolicy(cadata=f"unshared {uuid.uuid4()}\n{ca_pem}")


async def test_requests_choosing_their_connector_go_on_when_the_limit_is_lowered(
    server_cert: trustme.LeafCert, ca_pem: str
) -> None:
    """Admitted requests wait for closing sockets only, never for the lowered limit itself."""
    async with (
        WebApp(server_context(server_cert)) as app,
        ConnectionManager(policy=unshared_policy(ca_pem), default_connection_limit=2) as mgr,
    ):
        requests = [
            asyncio.create_task(mgr.get(app.url("/hello"), timeout=PROMPTLY)) for _ in range(2)
        ]
        await asyncio.sleep(0)  # both admitted, both waiting for the context being built
        endpoint = endpoint_of(mgr, app.url())
        assert endpoint.held == 2 and endpoint.current is None
        endpoint.sp.connection_limit = 1
        assert [r.status for r in await asyncio.gather(*requests)] == [200, 200]
        assert (await mgr.get(app.url("/hello"), timeout=PROMPTLY)).status == 200
        await mgr.aclose()
        await settled(mgr, app.url())


async def test_a_manager_closed_while_a_request_chooses_its_connector_makes_none(
    server_cert: trustme.LeafCert, ca_pem: str
) -> None:
    async with WebApp(server_context(server_cert)) as app:
        mgr = ConnectionManager(policy=unshared_policy(ca_pem))
        request = asyncio.create_task(mgr.get(app.url("/hello"), timeout=PROMPTLY))
        await asyncio.sleep(0)  # admitted, waiting for the context being built
        endpoint = endpoint_of(mgr, app.url())
        assert endpoint.held == 1 and endpoint.current is None
        await mgr.aclose()
        with pytest.raises(ManagerClosedError):
            await request
        assert endpoint.current is None  # no connector made after the close
        assert app.sockets.accepted == 0


@pytest.mark.parametrize("closed_by", ["keep-alive expiry", "policy change"])
async def test_idle_tls_connections_we_close_leave_at_once_and_are_counted_until_then(
    server_cert: trustme.LeafCert, trusted: Trusted, closed_by: str
) -> None:
    """A peer that never answers our close_notify: its socket must neither linger (asyncio
    waits 30 s for the answer) nor be left out of the count while it closes."""
    test_over = threading.Event()

    def silent_after_close_notify(conn: socket.socket, record: ServerRecord) -> None:
        pending = b""
        while True:  # bounded: the client closes, or the test ends
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:  # the client's close_notify: never answered
                test_over.wait(PROMPTLY)
                return
            pending += chunk
            while b"\r\n\r\n" in pending:
                _, pending = pending.split(b"\r\n\r\n", 1)
                conn.sendall(OK_HEAD % 2 + b"ok")

    context = server_context(server_cert, "TLSv1.2", "TLSv1.3")
    with ThreadedServer(context, silent_after_close_notify) as server:
        url = f"https://127.0.0.1:{server.port}/"
        try:
            async with ConnectionManager(policy=trusted(), default_connection_limit=1) as mgr:
                sp = mgr.find_service_point(url)
                sp.max_idle_time = 0.3
                assert (await mgr.get(url, timeout=PROMPTLY)).status == 200
                connector = endpoint_of(mgr, url).current
                assert connector is not None
                if closed_by == "policy change":
                    mgr.security_protocol = SecurityProtocol.TLS12
                else:  # aiohttp's keep-alive cleanup closes it
                    await wait_until(lambda: not connector._idle(), PROMPTLY)
                loop = asyncio.get_running_loop()
                started = loop.time()
                second = asyncio.create_task(mgr.get(url, timeout=PROMPTLY))
                peak = 0
                while not second.done():  # bounded: the request ends within its timeout
                    peak = max(peak, sp.current_connections)
                    await asyncio.sleep(0)
                assert (await second).status == 200
                assert loop.time() - started < 5  # not asyncio's 30 s TLS shutdown wait
                assert peak <= 1, f"{peak} sockets open at once with connection_limit=1"
                assert server.record.connections == 2
        finally:
            test_over.set()


async def test_every_connection_aiohttp_expires_is_counted_until_it_is_gone(
    server_cert: trustme.LeafCert, trusted: Trusted
) -> None:
    """aiohttp's keep-alive expiry closes idle connections itself; each must be an orphan the
    gate counts while it closes, whatever the moment it was pooled."""
    closed_counted: list[bool] = []
    async with (
        WebApp(server_context(server_cert)) as app,
        ConnectionManager(policy=trusted(), default_connection_limit=20) as mgr,
    ):
        sp = mgr.find_service_point(app.url())
        sp.max_idle_time = 0.2
        assert (await mgr.get(app.url("/hello"), timeout=PROMPTLY)).status == 200
        endpoint = endpoint_of(mgr, app.url())
        socket_closed = endpoint.socket_closed

        def noting(ticket: Any) -> None:
            closed_counted.append(ticket.orphan)
            socket_closed(ticket)

        endpoint.socket_closed = noting  # type: ignore[method-assign]
        for _ in range(3):  # bursts pooled at moments spread around the expiry ticks
            await asyncio.gather(*(mgr.get(app.url("/work"), timeout=PROMPTLY) for _ in range(20)))
            await wait_until(lambda: sp.current_connections == 0, PROMPTLY)
        assert len(closed_counted) >= 20
        assert all(closed_counted), f"{closed_counted.count(False)} closed uncounted"
        assert endpoint.orphans == 0 and endpoint.held == 0


async def test_cancellation_storm_then_the_pool_serves_at_full_limit(
    server_cert: trustme.LeafCert, trusted: Trusted
) -> None:
    rng = random.Random(20240607)  # a fixed seed: the same storm every run
    limit = 20
    with fd_baseline():
        async with WebApp(server_context(server_cert)) as app:
            async with ConnectionManager(policy=trusted(), default_connection_limit=limit) as mgr:

                async def streamed(url: str) -> None:
                    async with mgr.request("GET", url) as response:
                        await response.content.read(1000)

                kinds = [
                    lambda: mgr.get(app.url("/hello")),
                    lambda: mgr.get(app.url("/work")),
                    lambda: mgr.get(app.url("/body?size=300000")),
                    lambda: mgr.post(app.url("/echo"), data=b"e" * 50_000),
                    lambda: streamed(app.url("/body?size=1000000")),
                ]
                loop = asyncio.get_running_loop()
                tasks = []
                for _ in range(1_000):
                    task = asyncio.create_task(rng.choice(kinds)())  # type: ignore[operator]
                    loop.call_later(rng.uniform(0, 0.4), task.cancel)
                    tasks.append(task)
                results = await asyncio.gather(*tasks, return_exceptions=True)
                cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
                assert all(
                    not isinstance(r, BaseException) or isinstance(r, asyncio.CancelledError)
                    for r in results
                ), [r for r in results if isinstance(r, BaseException)][:3]
                assert cancelled > 500  # a storm, not a drizzle
                endpoint = endpoint_of(mgr, app.url())
                sp = endpoint.sp
                await wait_until(
                    lambda: (
                        endpoint.held == 0
                        and endpoint.orphans == 0
                        and sp.current_connections <= limit
                    )
                )
                app.sockets.reset_peak()
                # Full strength: `limit` requests on the server at once, none left waiting.
                held = [asyncio.create_task(mgr.get(app.url("/hold"))) for _ in range(limit)]
                await wait_until(lambda: app.holding == limit)
                app.release.set()
                assert [r.status for r in await asyncio.gather(*held)] == [200] * limit
                assert app.sockets.peak <= limit
            await app.sockets.wait_closed()
