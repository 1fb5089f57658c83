"""HTTP through service points against a real aiohttp web server over TLS on loopback."""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import socket
import ssl

import aiohttp
import pytest
import trustme
from yarl import URL

import asyncsp
from asyncsp import (
    CertificateVerificationError,
    ConnectError,
    ConnectionManager,
    HttpArgumentError,
    HttpError,
    ManagerClosedError,
    PinMismatchError,
    ProtocolNotAllowedError,
    SecurityProtocol,
    TlsError,
    TlsPolicy,
)

from .servers import RawServer, server_context
from .test_http_support import Trusted, WebServer, endpoint_of

TLS12, TLS13 = SecurityProtocol.TLS12, SecurityProtocol.TLS13


# -- versions and policy snapshots ---------------------------------------------------------


async def test_version_per_response_and_switch_after_policy_change(
    https: WebServer, trusted: Trusted
) -> None:
    async with ConnectionManager(policy=trusted(protocols=TLS12)) as mgr:
        first = await mgr.get(https.url())
        second = await mgr.get(https.url())
        assert first.status == 200 and await first.text() == "hello"
        assert first.tls is not None and first.tls.version == "TLSv1.2"
        assert second.tls is not None and second.tls.version == "TLSv1.2"
        mgr.security_protocol = TLS13
        third = await mgr.get(https.url())
        assert third.tls is not None and third.tls.version == "TLSv1.3"
        assert third.tls.protocol is TLS13
        sp = third.service_point
        assert sp is mgr.find_service_point(https.url())
        assert sp.stats.versions == {"TLSv1.2": 1, "TLSv1.3": 1}
        assert sp.stats.connections_opened == 2
        assert sp.stats.tls_handshakes == 2
        assert sp.stats.requests == 3
        assert https.seen.connections == 2
        assert https.seen.peers[0] == https.seen.peers[1] != https.seen.peers[2]
        for _ in range(5):  # flips with nothing in flight leave no connector behind
            mgr.security_protocol = TLS12 if mgr.security_protocol is TLS13 else TLS13
            await mgr.get(https.url())
        assert endpoint_of(mgr, https.url()).retired == []


async def test_streamed_body_survives_a_policy_change(https: WebServer, trusted: Trusted) -> None:
    async with ConnectionManager(policy=trusted(protocols=TLS12)) as mgr:
        async with mgr.request("GET", https.url("/stream")) as streamed:
            assert await streamed.content.readexactly(5) == b"first"
            mgr.security_protocol = TLS13
            during = await mgr.get(https.url())  # a new connection under the new policy
            assert during.tls is not None and during.tls.version == "TLSv1.3"
            https.release_stream.set()
            assert await streamed.read() == b"-last"
            assert streamed.tls is not None and streamed.tls.version == "TLSv1.2"
        # The old connection was not pooled: the next request reuses the TLS 1.3 one.
        after = await mgr.get(https.url())
        assert after.tls is not None and after.tls.version == "TLSv1.3"
        assert https.seen.peers[-1] == https.seen.peers[-2] != https.seen.peers[0]
        assert https.seen.connections == 2
        endpoint = endpoint_of(mgr, https.url())
        assert endpoint.retired == [] and endpoint.held == 0


async def test_per_endpoint_override(server_cert: trustme.LeafCert, trusted: Trusted) -> None:
    context = server_context(server_cert, "TLSv1.2", "TLSv1.3")
    async with (
        WebServer(context) as one,
        WebServer(context) as two,
        ConnectionManager(policy=trusted(protocols=TLS13)) as mgr,
    ):
        mgr.find_service_point(two.url()).policy = trusted(protocols=TLS12)
        a = await mgr.get(one.url())
        b = await mgr.get(two.url())
        assert a.tls is not None and a.tls.version == "TLSv1.3"
        assert b.tls is not None and b.tls.version == "TLSv1.2"
        mgr.find_service_point(two.url()).policy = None  # follow the manager again
        c = await mgr.get(two.url())
        assert c.tls is not None and c.tls.version == "TLSv1.3"


# -- the aiohttp we run on ------------------------------------------------------------------


def test_the_aiohttp_internals_we_rely_on_are_there() -> None:
    """asyncsp uses three private aiohttp names (pyproject pins aiohttp to 3.12-3.14)."""
    assert callable(aiohttp.ClientSession._request)  # the request without its wrapper

    async def shapes() -> tuple[object, object]:
        async with aiohttp.ClientSession() as session:
            connector = session.connector
            assert connector is not None
            # Our own retry replaces aiohttp's; idle connections close at a policy change.
            return session._retry_connection, connector._conns  # type: ignore[attr-defined]

    retry, pool = asyncio.run(shapes())
    assert retry is True and isinstance(pool, dict)


# -- redirects -----------------------------------------------------------------------------


def redirect(server: WebServer, to: str, status: int = 302) -> str:
    return str(URL(server.url("/redirect")).with_query(to=to, status=status))


async def test_https_to_http_redirect_is_refused(
    https: WebServer, plain: WebServer, mgr: ConnectionManager
) -> None:
    with pytest.raises(HttpError, match="allow_insecure_redirects") as caught:
        await mgr.get(redirect(https, plain.url()))
    assert caught.value.endpoint == mgr.find_service_point(https.url()).address
    assert plain.seen.requests == 0
    response = await mgr.get(redirect(https, plain.url()), allow_insecure_redirects=True)
    assert await response.text() == "hello"
    assert response.tls is None and response.url == URL(plain.url())
    assert [r.status for r in response.history] == [302]


async def test_cross_origin_redirect_drops_credentials(
    server_cert: trustme.LeafCert, trusted: Trusted
) -> None:
    context = server_context(server_cert)
    secret = {"Authorization": "Bearer s3cret", "Cookie": "session=abc", "X-Trace": "1"}
    async with (
        WebServer(context) as origin,
        WebServer(context, host="localhost") as other,
        ConnectionManager(policy=trusted()) as mgr,
    ):
        same = await mgr.get(redirect(origin, origin.url("/headers"), 307), headers=secret)
        seen = await same.json()
        assert seen["Authorization"] == "Bearer s3cret" and seen["Cookie"] == "session=abc"
        crossed = await mgr.get(redirect(origin, other.url("/headers"), 307), headers=secret)
        seen = await crossed.json()
        assert "Authorization" not in seen and "Cookie" not in seen
        assert seen["X-Trace"] == "1"
        # Each hop went through the service point of its own endpoint.
        assert mgr.find_service_point(other.url()).stats.requests == 1
        assert mgr.find_service_point(origin.url()).stats.requests == 3


async def test_a_redirect_to_another_port_drops_every_credential(plain: WebServer) -> None:
    """Another port is another origin (RFC 6454 §4): Authorization, Cookie and a
    Proxy-Authorization the caller set stay behind, as on a change of host."""
    secret = {
        "Authorization": "Bearer s3cret",
        "Cookie": "session=abc",
        "Proxy-Authorization": "Basic YWxpY2U6cHc=",
        "X-Trace": "1",
    }
    async with WebServer() as other, ConnectionManager() as mgr:
        assert other.port != plain.port
        same = await mgr.get(redirect(plain, plain.url("/headers"), 307), headers=secret)
        kept = await same.json()
        assert {name: kept.get(name) for name in secret} == secret
        crossed = await mgr.get(redirect(plain, other.url("/headers"), 307), headers=secret)
        seen = await crossed.json()
        assert not {"Authorization", "Cookie", "Proxy-Authorization"} & seen.keys()
        assert seen["X-Trace"] == "1"
        assert other.seen.requests == 1


async def test_redirect_limits_and_allow_redirects_false(
    https: WebServer, mgr: ConnectionManager
) -> None:
    chain = redirect(https, "/redirect?to=/redirect%3Fto%3D/hello")  # 3 redirects to /hello
    response = await mgr.get(chain)
    assert await response.text() == "hello" and len(response.history) == 3
    with pytest.raises(HttpError, match="more than 2 redirects"):
        await mgr.get(chain, max_redirects=2)
    not_followed = await mgr.get(chain, allow_redirects=False)
    assert not_followed.status == 302
    assert not_followed.headers["Location"].startswith("/redirect")
    assert mgr.find_service_point(https.url()).current_connections == 1  # redirects reused it


async def test_303_turns_post_into_get_and_307_keeps_the_body(
    https: WebServer, mgr: ConnectionManager
) -> None:
    see_other = await mgr.post(redirect(https, "/echo", 303), data=b"payload")
    assert await see_other.json() == {"method": "GET", "body": ""}
    temporary = await mgr.post(redirect(https, "/echo", 307), data=b"payload")
    assert await temporary.json() == {"method": "POST", "body": "payload"}


# -- TLS refusals and other errors -----------------------------------------------------------


async def test_untrusted_certificate_is_refused(https: WebServer) -> None:
    other_ca = trustme.CA()
    async with ConnectionManager(policy=TlsPolicy(cadata=other_ca.cert_pem.bytes().decode())) as m:
        with pytest.raises(CertificateVerificationError) as caught:
            await m.get(https.url())
        sp = m.find_service_point(https.url())
        assert caught.value.endpoint == sp.address and sp.address in str(caught.value)
        assert not isinstance(caught.value, aiohttp.ClientError)
        assert sp.current_connections == 0
    assert https.seen.requests == 0


async def test_pin_mismatch_and_version_refusals(
    server_cert: trustme.LeafCert, trusted: Trusted
) -> None:
    async with WebServer(server_context(server_cert, "TLSv1.2", "TLSv1.2")) as only12:
        async with ConnectionManager(policy=trusted(pins=frozenset({"ab" * 32}))) as mgr:
            with pytest.raises(PinMismatchError):
                await mgr.get(only12.url())
        async with ConnectionManager(policy=trusted(protocols=TLS13)) as mgr:
            # The server's protocol_version alert, or its reset when that alert is lost.
            with pytest.raises(TlsError, match="TLS") as caught:
                await mgr.get(only12.url())
            assert f"127.0.0.1:{only12.port}" in str(caught.value)
        # A set with a gap offers its whole span; the check inside the handshake refuses 1.2.
        gap = trusted(protocols=SecurityProtocol.TLS | TLS13, strong_crypto=False)
        async with ConnectionManager(policy=gap) as mgr:
            with (
                pytest.warns(asyncsp.InsecurePolicyWarning),
                pytest.raises(ProtocolNotAllowedError, match=r"TLSv1\.2"),
            ):
                await mgr.get(only12.url())
        leaf = ssl.PEM_cert_to_DER_cert(server_cert.cert_chain_pems[0].bytes().decode())
        pinned = trusted(pins=frozenset({hashlib.sha256(leaf).hexdigest()}))
        async with ConnectionManager(policy=pinned) as mgr:
            response = await mgr.get(only12.url())
            assert response.tls is not None
            assert response.tls.peer_cert_sha256 == hashlib.sha256(leaf).hexdigest()
        assert only12.seen.requests == 1


async def test_timeouts(https: WebServer, mgr: ConnectionManager) -> None:
    with pytest.raises(asyncsp.TimeoutError, match=r"within 0\.2 s") as caught:
        await mgr.get(https.url("/stall"), timeout=0.2)
    assert isinstance(caught.value, builtins.TimeoutError)
    with pytest.raises(asyncsp.TimeoutError):
        await mgr.get(https.url("/stall"), timeout=aiohttp.ClientTimeout(sock_read=0.2))
    response = await mgr.get(https.url())  # the pool still serves
    assert response.status == 200


async def test_connect_refused_is_connect_error(mgr: ConnectionManager) -> None:
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        with pytest.raises(ConnectError) as caught:
            await mgr.get(f"http://127.0.0.1:{port}/")
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert mgr.find_service_point(f"http://127.0.0.1:{port}").current_connections == 0


async def test_manager_close_fails_running_and_waiting_requests(
    https: WebServer, trusted: Trusted
) -> None:
    mgr = ConnectionManager(policy=trusted())
    mgr.find_service_point(https.url()).connection_limit = 1
    running = asyncio.create_task(mgr.get(https.url("/stall")))
    await https.in_flight_reached(1).wait()
    waiting = [asyncio.create_task(mgr.get(https.url())) for _ in range(3)]
    await asyncio.sleep(0)  # let them reach the gate
    await asyncio.wait_for(mgr.aclose(), 5)
    for task in [running, *waiting]:
        with pytest.raises(ManagerClosedError):
            await task
    with pytest.raises(ManagerClosedError):
        await mgr.get(https.url())


# -- the response ----------------------------------------------------------------------------


async def test_empty_bodies_still_report_tls(https: WebServer, mgr: ConnectionManager) -> None:
    empty = await mgr.get(https.url("/empty"))
    assert empty.status == 204 and await empty.read() == b""
    assert empty.tls is not None
    head = await mgr.head(https.url())
    assert head.status == 200 and head.tls is not None and await head.read() == b""
    assert mgr.find_service_point(https.url()).stats.connections_opened == 1


async def test_post_json_text_and_streaming(https: WebServer, mgr: ConnectionManager) -> None:
    posted = await mgr.post(https.url("/echo"), json={"a": 1})
    assert (await posted.json())["body"] == '{"a": 1}'
    assert posted.ok and posted.reason == "OK"
    assert "Response 200 OK" in repr(posted)
    with pytest.raises(HttpError, match="expected application/json"):
        await (await mgr.get(https.url())).json()
    async with mgr.request("GET", https.url("/gzip?size=100000")) as response:
        total = 0
        async for chunk in response.content.iter_any():
            total += len(chunk)
        assert total == 100000
        assert response.content.at_eof()


async def test_tls_settings_cannot_be_passed_per_request(
    https: WebServer, mgr: ConnectionManager
) -> None:
    with pytest.raises(TypeError, match="TlsPolicy"):
        await mgr.get(https.url(), ssl=False)
    with pytest.raises(TypeError, match="pins"):
        await mgr.get(https.url(), fingerprint=b"x")
    with pytest.raises(ValueError, match="http"):
        await mgr.get("ftp://127.0.0.1/")
    with pytest.raises(ValueError, match="timeout"):
        await mgr.get(https.url(), timeout=-1)
    assert https.seen.requests == 0


# -- what the caller gives: refused before anything is sent --------------------------------------

OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def answering_every_request() -> RawServer:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:  # bounded: the client closes, and read_request fails
            await server.read_request(reader)
            writer.write(OK_HEAD)
            await writer.drain()

    server = RawServer(script)
    return server


async def test_any_token_is_a_method() -> None:
    """RFC 9110 §9.1: a method is a token (§5.6.2), hyphens, dots and digits included."""
    methods = ["M-SEARCH", "VERSION-CONTROL", "X.Y_Z~1", "BREW!"]
    async with answering_every_request() as server, ConnectionManager() as mgr:
        for method in methods:
            async with mgr.request(method, server.url("/x")) as response:
                assert response.status == 200 and await response.read() == b"ok"
    assert [head.split(b"\r\n", 1)[0] for head in server.heads] == [
        f"{method} /x HTTP/1.1".encode() for method in methods
    ]


@pytest.mark.parametrize(
    "method",
    ["", "GET /x", "GE\r\nT", "GE\nT", "G\x00T", "G(T", "GET\t", "G\u00c9T", 42],
    ids=["empty", "space", "crlf", "lf", "nul", "separator", "tab", "non-ascii", "not-str"],
)
async def test_a_method_that_is_no_token_is_refused_before_anything_is_sent(
    method: object,
) -> None:
    async with answering_every_request() as server, ConnectionManager() as mgr:
        with pytest.raises(HttpArgumentError, match="method") as caught:
            async with mgr.request(method, server.url()):  # type: ignore[arg-type]
                pass
        assert not isinstance(caught.value, HttpError)
    assert server.connections == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"X-A": "a\r\nX-Injected: 1"},
        {"X-A": "a\nX-Injected: 1"},
        {"X-A": "a\rb"},
        {"X-A": "a\x00b"},
        {"X-A\r\nX-Injected": "1"},
        {"X-A\x00": "1"},
        {"X A": "1"},
        {"X-A:": "1"},
        [("X-B", "fine"), ("X-A", "a\r\n\r\nGET /smuggled HTTP/1.1")],
    ],
    ids=[
        "crlf-in-value",
        "lf-in-value",
        "cr-in-value",
        "nul-in-value",
        "crlf-in-name",
        "nul-in-name",
        "space-in-name",
        "colon-in-name",
        "split-in-a-list",
    ],
)
async def test_a_header_that_could_split_the_request_is_refused_before_anything_is_sent(
    headers: object,
) -> None:
    """RFC 9110 §5.5: CR, LF and NUL in a field must be refused; a field name is a token."""
    async with answering_every_request() as server, ConnectionManager() as mgr:
        with pytest.raises(HttpArgumentError, match="header") as caught:
            await mgr.get(server.url(), headers=headers)
        assert isinstance(caught.value, ValueError)
        assert not isinstance(caught.value, HttpError)
        message = str(caught.value)  # names the field, never quotes a value (it may be secret)
        assert not {"\r", "\n", "\x00"} & set(message)
        assert "X-Injected: 1" not in message and "smuggled" not in message
        with pytest.raises(ValueError, match="header"):
            async with mgr.request("POST", server.url(), headers=headers, data=b"x"):
                pass
    assert server.connections == 0 and server.heads == []


async def test_a_tab_and_non_ascii_text_are_field_content() -> None:
    async with answering_every_request() as server, ConnectionManager() as mgr:
        headers = {"X-Tab": "a\tb", "X-Text": "caf\u00e9"}
        assert (await mgr.get(server.url(), headers=headers)).status == 200
    assert b"X-Tab: a\tb\r\n" in server.heads[0]
    assert "X-Text: caf\u00e9\r\n".encode() in server.heads[0]


async def test_a_header_that_is_not_text_is_refused_before_anything_is_sent() -> None:
    async with answering_every_request() as server, ConnectionManager() as mgr:
        for headers in ({"X-A": 1}, {"X-A": b"bytes"}, [(b"X-A", "1")]):
            with pytest.raises(TypeError, match="must be str"):
                await mgr.get(server.url(), headers=headers)
    assert server.connections == 0
