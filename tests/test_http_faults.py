"""HTTP faults: malformed and truncated responses from scripted servers, oversized bodies,
stale pooled connections, cancellation, closing the manager, and leaked descriptors."""

from __future__ import annotations

import asyncio
import gc
import io
import socket
import ssl
import threading
import warnings

import aiohttp
import pytest
import trustme
from yarl import URL

from asyncsp import (
    BodyTooLargeError,
    CertificateVerificationError,
    ConnectionManager,
    HttpError,
    ManagerClosedError,
    ProxyError,
    TimeoutError,
    TlsPolicy,
)
from asyncsp._http_pool import HttpLayer

from .servers import (
    LOCAL,
    RawServer,
    ServerRecord,
    ThreadedServer,
    connected,
    fd_baseline,
    reset,
    server_context,
    wait_until,
)
from .test_http_support import Trusted, WebServer, endpoint_of, settled

OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"


# -- malformed, truncated and oversized responses ------------------------------------------


def answering(response: bytes, *, then_reset: bool = False) -> RawServer:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await server.read_head(reader)
        writer.write(response)
        await writer.drain()
        if then_reset:
            reset(writer)

    server = RawServer(script)
    return server


@pytest.mark.parametrize(
    ("name", "response", "then_reset"),
    [
        ("short body", OK_HEAD % 100 + b"x" * 50, False),
        ("garbage status line", b"HTTX/9 what is this\r\n\r\n", False),
        ("oversized header", b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", False),
        ("too many headers", b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 300 + b"\r\n", False),
        ("reset mid-body", OK_HEAD % 100000 + b"x" * 1000, True),
        (
            "bad gzip",
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 9\r\n\r\nnot gzip!",
            False,
        ),
    ],
)
async def test_bad_responses_are_http_errors(name: str, response: bytes, then_reset: bool) -> None:
    async with answering(response, then_reset=then_reset) as server, ConnectionManager() as mgr:
        with pytest.raises(HttpError) as caught:
            await mgr.get(server.url())
        assert caught.value.endpoint == f"http://{LOCAL}:{server.port}"
        assert f"{LOCAL}:{server.port}" in str(caught.value)
        await settled(mgr, server.url())


async def test_truncation_while_streaming_content_is_an_http_error() -> None:
    async with answering(OK_HEAD % 100000 + b"x" * 1000, then_reset=True) as server:
        async with ConnectionManager() as mgr:
            async with mgr.request("GET", server.url()) as response:
                assert response.status == 200
                with pytest.raises(HttpError, match=r"lost|incomplete"):
                    while await response.content.read(4096):
                        pass
            await settled(mgr, server.url())


async def test_truncated_tls_body_is_an_http_error(
    server_cert: trustme.LeafCert, trusted: Trusted
) -> None:
    """A TLS peer that resets mid-body (no close_notify) never yields a truncated success."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await server.read_head(reader)
        writer.write(OK_HEAD % 5000 + b"y" * 100)
        await writer.drain()
        reset(writer)

    server = RawServer(script, server_context(server_cert))
    async with server, ConnectionManager(policy=trusted()) as mgr:
        with pytest.raises(HttpError):
            await mgr.get(server.url())


async def test_gzip_body_over_max_body_size(
    server_cert: trustme.LeafCert, trusted: Trusted
) -> None:
    async with (
        WebServer(server_context(server_cert)) as server,
        ConnectionManager(policy=trusted(), max_body_size=2**20) as mgr,
    ):
        url = server.url(f"/gzip?size={4 * 2**20}")  # ~4 KiB on the wire, 4 MiB decoded
        with pytest.raises(BodyTooLargeError, match="max_body_size=1048576"):
            await mgr.get(url)
        bigger = await mgr.get(url, max_body_size=8 * 2**20)
        assert len(await bigger.read()) == 4 * 2**20
        async with mgr.request("GET", url) as response:  # streaming is not bounded
            total = 0
            async for chunk in response.content.iter_chunked(65536):
                total += len(chunk)
            assert total == 4 * 2**20
        with pytest.raises(BodyTooLargeError):
            async with mgr.request("GET", url) as response:
                await response.read()  # read() is bounded like get()


async def test_announced_length_over_the_limit_fails_before_reading() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await server.read_head(reader)
        writer.write(OK_HEAD % 10**9 + b"z" * 10)
        await writer.drain()
        await reader.read()  # hold the connection open: only the client can end this

    server = RawServer(script)
    async with server, ConnectionManager(max_body_size=1000) as mgr:
        with pytest.raises(BodyTooLargeError):
            await asyncio.wait_for(mgr.get(server.url()), 5)
        await settled(mgr, server.url())


# -- stale pooled connections ------------------------------------------------------------------


def closing_after_first_response(context: ssl.SSLContext | None = None) -> RawServer:
    """Connection 0 answers once, then takes the next request and closes without a word."""

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        while True:
            await server.read_request(reader)
            if index == 0 and len(server.heads) > 1:
                return  # closes: the request on the pooled connection gets no answer
            writer.write(OK_HEAD % 2 + b"ok")
            await writer.drain()

    server = RawServer(script, context)
    return server


async def test_stale_connection_is_retried_once_for_get() -> None:
    async with closing_after_first_response() as server, ConnectionManager() as mgr:
        assert await (await mgr.get(server.url())).read() == b"ok"
        assert await (await mgr.get(server.url())).read() == b"ok"
        assert server.connections == 2
        assert len(server.heads) == 3  # the second GET went out twice


@pytest.mark.parametrize("traced", [False, True])
async def test_stale_connections_taken_at_once_are_each_retried(traced: bool) -> None:
    """Two requests take two stale pooled connections at once. Traced, each waits in a trace
    hook before aiohttp's pool lookup, so the other runs in between: each request's claim
    must still reach its own lookup (see asyncsp._http_pool_connector.PoolConnector._get)."""

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        answered = False
        while True:
            await server.read_request(reader)
            if index < 2 and answered:
                return  # the first two connections answer once, then go stale
            writer.write(OK_HEAD % 2 + b"ok")
            await writer.drain()
            answered = True

    configs = []
    if traced:
        config = aiohttp.TraceConfig()

        async def waits(*_: object) -> None:
            await asyncio.sleep(0)

        config.on_request_start.append(waits)
        configs.append(config)
    server = RawServer(script)
    async with server, ConnectionManager(trace_configs=configs) as mgr:
        for _ in range(2):
            responses = await asyncio.gather(mgr.get(server.url()), mgr.get(server.url()))
            assert [await response.read() for response in responses] == [b"ok", b"ok"]
        assert server.connections == 4
        assert len(server.heads) == 6  # both second-round GETs went out twice
        endpoint = endpoint_of(mgr, server.url())
        await wait_until(lambda: endpoint.sp.current_connections == 2)  # the stale ones gone
        assert endpoint.held == 0 and endpoint.orphans == 0


async def test_stale_tls_connection_is_retried_once(
    server_cert: trustme.LeafCert, trusted: Trusted
) -> None:
    """The close_notify of the server's close arrives, but no byte of an answer."""
    server = closing_after_first_response(server_context(server_cert))
    async with server, ConnectionManager(policy=trusted()) as mgr:
        assert await (await mgr.get(server.url())).read() == b"ok"
        assert await (await mgr.get(server.url())).read() == b"ok"
        assert server.connections == 2 and len(server.heads) == 3


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("ending", ["close", "reset"])
async def test_a_new_connection_dropped_after_the_request_is_never_retried(
    method: str, ending: str
) -> None:
    """Only a connection that sat in the pool can be stale (RFC 9112 §9.3.1): a new one that
    drops the request may have been acted on, and sending it again would repeat the action."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await server.read_request(reader)  # acted on, then the server goes away
        if ending == "reset":
            reset(writer)

    server = RawServer(script)
    async with server, ConnectionManager() as mgr:
        with pytest.raises(HttpError, match=r"closed the connection|connection was lost"):
            async with mgr.request(method, server.url()):
                pass
        assert len(server.heads) == 1 and server.connections == 1
        await settled(mgr, server.url())


@pytest.mark.parametrize(
    ("ending", "tls"), [("close", False), ("reset", False), ("close", True), ("reset", True)]
)
async def test_a_pooled_connection_that_began_its_answer_is_never_retried(
    ending: str, tls: bool, server_cert: trustme.LeafCert, trusted: Trusted
) -> None:
    """A response byte means the server took the request: it is not sent again."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await server.read_request(reader)
        writer.write(OK_HEAD % 2 + b"ok")
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 20")  # the start of an answer, then the server goes away
        await writer.drain()
        if ending == "reset":
            reset(writer)

    server = RawServer(script, server_context(server_cert) if tls else None)
    async with server, ConnectionManager(policy=trusted()) as mgr:
        assert await (await mgr.put(server.url(), data=b"one")).read() == b"ok"
        with pytest.raises(HttpError):
            await mgr.put(server.url(), data=b"two")
        assert len(server.heads) == 2 and server.connections == 1
        await settled(mgr, server.url())


async def test_stale_connection_is_never_retried_for_post() -> None:
    async with closing_after_first_response() as server, ConnectionManager() as mgr:
        assert await (await mgr.post(server.url(), data=b"one")).read() == b"ok"
        with pytest.raises(HttpError, match="closed the connection"):
            await mgr.post(server.url(), data=b"two")
        assert len(server.heads) == 2  # never sent again
        assert await (await mgr.post(server.url(), data=b"three")).read() == b"ok"


# -- cancellation, closing, descriptors --------------------------------------------------------


async def test_cancellation_storm_leaves_the_pool_whole(
    server_cert: trustme.LeafCert, trusted: Trusted
) -> None:
    async with (
        WebServer(server_context(server_cert)) as server,
        ConnectionManager(policy=trusted(), default_connection_limit=5) as mgr,
    ):
        urls = [server.url(path) for path in ("/work", "/stall", "/hello", "/gzip?size=100000")]
        tasks = [asyncio.create_task(mgr.get(urls[i % len(urls)])) for i in range(200)]
        for i, task in enumerate(tasks):  # cancel at many different points of their progress
            for _ in range(i % 13):
                await asyncio.sleep(0)
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        endpoint = endpoint_of(mgr, server.url())
        for _ in range(200):
            if endpoint.held == 0:
                break
            await asyncio.sleep(0.01)
        assert endpoint.held == 0 and endpoint.orphans == 0
        assert mgr.find_service_point(server.url()).current_connections <= 5
        server.seen.peak_open = server.seen.open
        results = await asyncio.gather(*(mgr.get(server.url("/work")) for _ in range(20)))
        assert all(r.status == 200 for r in results)
        assert server.seen.peak_open <= 5


async def test_manager_close_fails_a_streamed_body() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await server.read_head(reader)
        writer.write(OK_HEAD % 100 + b"x" * 10)
        await writer.drain()
        await reader.read()

    server = RawServer(script)
    async with server:
        mgr = ConnectionManager()
        async with mgr.request("GET", server.url()) as response:
            assert await response.content.readexactly(10) == b"x" * 10
            await mgr.aclose()
            with pytest.raises(ManagerClosedError):
                await response.content.read()
        assert mgr.find_service_point(server.url()).current_connections == 0


async def test_descriptors_return_after_failed_handshakes_and_timeouts(
    server_cert: trustme.LeafCert,
) -> None:
    """Hundreds of refused handshakes and timed-out requests leave no socket behind."""
    stranger = TlsPolicy(cadata=trustme.CA().cert_pem.bytes().decode())

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.read()  # never answers; ends when the client goes

    with fd_baseline():
        async with (
            WebServer(server_context(server_cert)) as tls_server,
            RawServer(stall) as stalled,
        ):
            # The same silent server, spoken to in TLS: a handshake that never completes.
            stalled_handshake = f"https://{LOCAL}:{stalled.port}/"
            async with ConnectionManager(policy=stranger, default_connection_limit=50) as mgr:
                refused = await asyncio.gather(
                    *(mgr.get(tls_server.url()) for _ in range(200)), return_exceptions=True
                )
                assert all(isinstance(r, CertificateVerificationError) for r in refused)
                timed_out = await asyncio.gather(
                    *(mgr.get(stalled.url(), timeout=0.05) for _ in range(200)),
                    return_exceptions=True,
                )
                assert all(isinstance(r, TimeoutError) for r in timed_out)
                # A server that accepts and never completes the TLS handshake.
                stuck = await asyncio.gather(
                    *(mgr.get(stalled_handshake, timeout=0.05) for _ in range(100)),
                    return_exceptions=True,
                )
                assert all(isinstance(r, TimeoutError) for r in stuck), stuck[:3]
                for url in (tls_server.url(), stalled.url(), stalled_handshake):
                    await settled(mgr, url)
            assert tls_server.seen.requests == 0


async def test_socket_accounting_follows_close_detach_and_collection(trusted: Trusted) -> None:
    """Each socket leaves the count once: closed, detached, or collected without a close."""
    async with ConnectionManager(policy=trusted()) as mgr:
        sp = mgr.find_service_point("https://127.0.0.1:9")
        connector = await HttpLayer.of(mgr).endpoint(URL("https://127.0.0.1:9/")).connector()
        info = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 9))
        closed = connector._make_socket(info)
        detached = connector._make_socket(info)
        dropped = connector._make_socket(info)
        assert sp.current_connections == 3 and connector.open_sockets == 3
        closed.close()
        closed.close()  # idempotent
        assert sp.current_connections == 2
        socket.close(detached.detach())
        assert sp.current_connections == 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            del dropped
            gc.collect()
        assert sp.current_connections == 0 and connector.open_sockets == 0


async def test_manager_close_interrupts_a_stalled_handshake() -> None:
    """aiohttp would let a handshake run to its timeout; closing the manager cuts it short."""

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.read()

    with fd_baseline():
        async with RawServer(stall) as silent:
            mgr = ConnectionManager()
            url = f"https://{LOCAL}:{silent.port}/"  # TLS to a server that never answers
            pending = [asyncio.create_task(mgr.get(url, timeout=30)) for _ in range(3)]
            for _ in range(200):
                if silent.connections == 3:
                    break
                await asyncio.sleep(0.01)
            assert silent.connections == 3
            loop = asyncio.get_running_loop()
            started = loop.time()
            await mgr.aclose()
            for task in pending:
                with pytest.raises(ManagerClosedError):
                    await task
            assert loop.time() - started < 5
            assert mgr.find_service_point(url).current_connections == 0


# -- how a connection ends: reset when interrupted, FIN when finished --------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
@pytest.mark.parametrize(
    ("ending", "seen"),
    [
        ("response closed", "reset"),
        ("response released", "reset"),
        ("read cancelled", "reset"),
        ("body too large", "reset"),
        ("manager closed", "reset"),
        ("body read, manager closed", "end of stream"),
        ("body read, closed after a lease", "end of stream"),
    ],
)
async def test_an_interrupted_response_is_reset_and_a_finished_one_ended(
    server_cert: trustme.LeafCert, trusted: Trusted, tls: bool, ending: str, seen: str
) -> None:
    """A body cut off by the client ends in RST, never a FIN: with everything sent so far read
    (nothing left unread that would make the kernel reset anyway), a FIN would leave a server
    still streaming blocked on a full window until its FIN timeout. A finished exchange ends
    with a FIN."""
    finished = ending.startswith("body read")
    body = b"x" * 1000
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await server.read_request(reader)
        writer.write((OK_HEAD % (len(body) if finished else 1 << 25)) + body)
        await writer.drain()
        try:
            await reader.read()
        except ConnectionResetError:
            outcome.set_result("reset")
        else:
            outcome.set_result("end of stream")

    server = RawServer(script, server_context(server_cert) if tls else None)
    async with server:
        mgr = ConnectionManager(policy=trusted())
        if ending.endswith("lease"):
            mgr.find_service_point(server.url()).connection_lease_timeout = 0
        limit = len(body) if ending == "body too large" else None
        async with mgr.request("GET", server.url(), timeout=30, max_body_size=limit) as response:
            if finished:
                assert await response.read() == body
            else:
                assert await response.content.readexactly(len(body)) == body
            if ending == "response closed":
                response.close()
            elif ending == "read cancelled":
                reading = asyncio.create_task(response.read())
                await asyncio.sleep(0)  # the read waits for more of the body
                reading.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await reading
            elif ending == "body too large":
                with pytest.raises(BodyTooLargeError):
                    await response.read()
            elif ending.endswith("manager closed"):
                reading = asyncio.create_task(response.read())
                await asyncio.sleep(0)
                await mgr.aclose()
                if finished:
                    assert await reading == body
                else:
                    with pytest.raises(ManagerClosedError):
                        await asyncio.wait_for(reading, 5)  # now, not at the request's timeout
            # "response released": leaving the block releases it with its body unread
        assert await asyncio.wait_for(outcome, 5) == seen
        await mgr.aclose()
        await settled(mgr, server.url())


@pytest.mark.parametrize(
    ("proxy_answer", "error"),
    [
        (None, TimeoutError),  # never answers CONNECT
        (b"HTTP/1.1 200 Connection established\r\n\r\nunexpected", ProxyError),
    ],
    ids=["silent", "bytes before the handshake"],
)
async def test_a_tunnel_cut_off_during_its_setup_is_reset(
    trusted: Trusted, proxy_answer: bytes | None, error: type[Exception]
) -> None:
    """A CONNECT tunnel given up before TLS ends in RST: a FIN would read as a finished
    exchange to the proxy, which then holds its socket until its FIN timeout."""
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def proxy_script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        await proxy.read_head(reader)
        if proxy_answer is not None:
            writer.write(proxy_answer)
            await writer.drain()
        try:
            await reader.read()
        except ConnectionResetError:
            outcome.set_result("reset")
        else:
            outcome.set_result("end of stream")

    proxy = RawServer(proxy_script)
    async with proxy, ConnectionManager(policy=trusted(), proxy=proxy.url()) as mgr:
        with pytest.raises(error):
            await mgr.get(f"https://{LOCAL}:9/", timeout=0.3)
        assert await asyncio.wait_for(outcome, 5) == "reset"
        assert proxy.heads[0].startswith(f"CONNECT {LOCAL}:9 ".encode())


@pytest.mark.parametrize("close", [False, True], ids=["idle", "connection-close"])
async def test_closing_the_manager_ends_tls_closes_the_peer_never_answers(
    server_cert: trustme.LeafCert, trusted: Trusted, close: bool
) -> None:
    """A TLS peer that neither answers our close_notify nor closes its end would keep the
    socket open for asyncio's 30 s shutdown timeout: the manager's close ends it at once,
    both for a pooled connection and for one aiohttp closed after ``Connection: close``."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n%s\r\n" % (
        b"Connection: close\r\n" if close else b""
    )
    done = threading.Event()

    def handler(conn: socket.socket, record: ServerRecord) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        conn.sendall(head + b"ok")
        done.wait(10)  # reads nothing more: our close_notify is never answered

    with ThreadedServer(server_context(server_cert), handler) as server:
        url = f"https://{LOCAL}:{server.port}/"
        mgr = ConnectionManager(policy=trusted())
        sp = mgr.find_service_point(url)
        try:
            assert await (await mgr.get(url)).text() == "ok"
            loop = asyncio.get_running_loop()
            started = loop.time()
            await mgr.aclose()
            took = loop.time() - started
            assert sp.current_connections == 0  # the socket is closed, not only counted so
            assert connected(server.record.live_fds) == 0
            assert took < 1.0, f"the manager's close took {took:.2f} s"
        finally:
            done.set()


async def test_closing_the_manager_ends_a_stalled_tls_upload(
    server_cert: trustme.LeafCert, trusted: Trusted
) -> None:
    """An upload the peer stopped reading (our send buffer full, so not even a close_notify
    could be written) ends with the manager's close: the request fails, no socket is left."""
    loop = asyncio.get_running_loop()
    head_read = asyncio.Event()
    done = threading.Event()

    def handler(conn: socket.socket, record: ServerRecord) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        loop.call_soon_threadsafe(head_read.set)
        done.wait(10)  # reads no more of the body

    with ThreadedServer(server_context(server_cert), handler) as server:
        url = f"https://{LOCAL}:{server.port}/"
        mgr = ConnectionManager(policy=trusted())
        sp = mgr.find_service_point(url)
        body = io.BytesIO(b"x" * (32 << 20))  # more than loopback's buffers hold
        upload = asyncio.create_task(mgr.post(url, data=body))
        try:
            await asyncio.wait_for(head_read.wait(), 5)
            started = loop.time()
            await mgr.aclose()
            took = loop.time() - started
            with pytest.raises(ManagerClosedError):
                await upload
            assert body.tell() < 32 << 20  # it was stalled, not finished
            assert sp.current_connections == 0
            assert connected(server.record.live_fds) == 0
            assert took < 1.0, f"the manager's close took {took:.2f} s"
        finally:
            done.set()
