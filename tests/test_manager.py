"""ConnectionManager and ServicePoint: the registry, settings, limits and eviction."""

from __future__ import annotations

import asyncio
import datetime
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

import asyncsp
from asyncsp import (
    ConnectionManager,
    Endpoint,
    InvalidSecurityProtocolError,
    PolicyError,
    SecurityProtocol,
    ServicePointLimitError,
    TlsPolicy,
)

from .servers import LOCAL, RawServer, ThreadedServer, wait_until
from .test_http_support import Trusted
from .test_smtp import PLAIN, responder, scripted

SP = SecurityProtocol


@pytest.fixture(scope="module")
def plain_server() -> Iterator[ThreadedServer]:
    with ThreadedServer() as server:
        yield server


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("https://Example.ORG/path?q=1", "https://example.org:443"),
        ("http://example.org", "http://example.org:80"),
        ("smtp://mail.example.org", "smtp://mail.example.org:25"),
        ("smtps://mail.example.org", "smtps://mail.example.org:465"),
        ("ftp://files.example.org", "ftp://files.example.org:21"),
        ("ftps://files.example.org", "ftps://files.example.org:990"),
        ("tcp://127.0.0.1:7", "tcp://127.0.0.1:7"),
        ("tls://[::1]:8443", "tls://[::1]:8443"),
        ("HTTPS://example.org.:8443", "https://example.org:8443"),
        ("https://bücher.example", "https://xn--bcher-kva.example:443"),
    ],
)
def test_service_point_addresses(url: str, address: str) -> None:
    mgr = ConnectionManager()
    sp = mgr.find_service_point(url)
    assert sp.address == address
    assert mgr.find_service_point(address) is sp
    assert (sp.scheme, sp.host, sp.port) == (
        Endpoint.parse(address).scheme,
        Endpoint.parse(address).host,
        Endpoint.parse(address).port,
    )


@pytest.mark.parametrize(
    "bad",
    ["example.org", "gopher://x", "tcp://host", "https://:443", "https://h:99999", "https://h:x"],
)
def test_bad_addresses_are_value_errors(bad: str) -> None:
    with pytest.raises(ValueError):
        ConnectionManager().find_service_point(bad)


@given(
    st.sampled_from(["http", "https", "smtp", "smtps", "ftp", "ftps", "tcp", "tls"]),
    st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,10}(\.[A-Za-z][A-Za-z0-9-]{0,10}){0,2}", fullmatch=True),
    st.integers(min_value=1, max_value=65535),
)
def test_endpoint_normalisation_is_idempotent(scheme: str, host: str, port: int) -> None:
    first = Endpoint.parse(f"{scheme}://{host}:{port}/x")
    again = Endpoint.parse(first.address)
    assert again == first
    assert again.address == first.address


@given(st.text(max_size=40))
def test_endpoint_parse_raises_only_value_error(text: str) -> None:
    try:
        endpoint = Endpoint.parse(text)
    except ValueError:
        return
    assert Endpoint.parse(endpoint.address) == endpoint


def test_manager_settings_follow_defaults_until_set() -> None:
    mgr = ConnectionManager()
    asyncsp.defaults.default_connection_limit = 7
    asyncsp.defaults.max_idle_time = 3.0
    assert mgr.default_connection_limit == 7
    assert mgr.max_idle_time == 3.0
    sp = mgr.find_service_point("https://a.test")
    assert sp.connection_limit == 7 and sp.max_idle_time == 3.0
    mgr.default_connection_limit = 3
    assert mgr.find_service_point("https://b.test").connection_limit == 3
    assert sp.connection_limit == 7  # a service point keeps what it started with


@pytest.mark.parametrize(
    "kwargs",
    [
        {"default_connection_limit": 0},
        {"max_idle_time": -1},
        {"connection_lease_timeout": -5},
        {"max_service_points": -1},
        {"dns_refresh_timeout": "x"},
        {"max_body_size": -1},
        {"tcp_keepalive": (0, 1)},
        {"tcp_keepalive": (10,)},
        {"local_address": "not-an-ip"},
        {"tcp_nodelay": "yes"},
        {"proxy": "socks5://x"},
    ],
)
def test_invalid_manager_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ConnectionManager(**kwargs)  # type: ignore[arg-type]


def test_security_protocol_setter_keeps_old_value_on_error(ca_pem: str) -> None:
    mgr = ConnectionManager(policy=TlsPolicy(cadata=ca_pem), security_protocol="Tls13")
    assert mgr.security_protocol == SP.TLS13
    assert mgr.policy.cadata == ca_pem
    with pytest.raises(InvalidSecurityProtocolError):
        mgr.security_protocol = 1024
    with pytest.raises(InvalidSecurityProtocolError):
        mgr.security_protocol = "Tls14"
    with pytest.raises(PolicyError, match="strong_crypto"):
        mgr.security_protocol = SP.TLS11
    assert mgr.security_protocol == SP.TLS13


def test_connection_limit_validation() -> None:
    sp = ConnectionManager().find_service_point("https://a.test")
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError):
            sp.connection_limit = bad  # type: ignore[assignment]
    sp.connection_limit = 5
    assert sp.connection_limit == 5
    with pytest.raises(ValueError):
        sp.max_idle_time = -1
    sp.connection_lease_timeout = None
    assert sp.connection_lease_timeout is None


def test_idle_since_is_utc() -> None:
    sp = ConnectionManager().find_service_point("https://a.test")
    assert sp.idle_since is not None
    assert sp.idle_since.tzinfo == datetime.UTC
    assert sp.current_connections == 0


async def test_max_service_points_evicts_least_recently_used_idle(
    plain_server: ThreadedServer,
) -> None:
    async with ConnectionManager(max_service_points=2) as mgr:
        a = mgr.find_service_point("https://a.test")
        b = mgr.find_service_point("https://b.test")
        mgr.find_service_point("https://a.test")  # a is now the most recently used
        c = mgr.find_service_point("https://c.test")
        assert {sp.address for sp in mgr.service_points} == {a.address, c.address}
        assert b not in mgr.service_points


async def test_max_service_points_with_none_idle_is_a_clear_error(
    plain_server: ThreadedServer,
) -> None:
    async with ConnectionManager(max_service_points=1) as mgr:
        async with mgr.open_stream("127.0.0.1", plain_server.port, timeout=5):
            with pytest.raises(ServicePointLimitError, match="max_service_points=1"):
                mgr.find_service_point("https://other.test")
        # Once idle, the old one makes room.
        assert mgr.find_service_point("https://other.test").host == "other.test"


async def test_aclose_is_idempotent() -> None:
    mgr = ConnectionManager()
    await mgr.aclose()
    await mgr.aclose()
    assert mgr.closed
    with pytest.raises(asyncsp.ManagerClosedError):
        mgr.find_service_point("https://new.test")


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    await reader.read()  # never a byte back; ends when the client goes


def pending(tasks: set[asyncio.Task[object]]) -> list[asyncio.Task[object]]:
    return [task for task in tasks if not task.done()]


async def test_aclose_returns_with_the_sockets_of_aborted_streams_closed() -> None:
    async with RawServer(silent) as server:
        mgr = ConnectionManager()
        opened = asyncio.Event()
        sockets: list[socket.socket] = []

        async def read_forever() -> None:
            async with mgr.open_stream(LOCAL, server.port, timeout=30) as s:
                sockets.append(s.get_extra_info("socket"))
                opened.set()
                await s.read(1)

        user = asyncio.create_task(read_forever())
        await opened.wait()
        await mgr.aclose()
        # Checked before anything else runs: the close is done when aclose returns.
        assert [sock.fileno() for sock in sockets] == [-1]
        assert server.sockets.connected() == 0
        with pytest.raises(asyncsp.ManagerClosedError):
            await user


async def test_aclose_returns_with_the_sockets_of_interrupted_handshakes_closed(
    trusted: Trusted,
) -> None:
    async with RawServer(silent) as server:  # accepts, and never answers the ClientHello
        mgr = ConnectionManager(policy=trusted())
        user = asyncio.create_task(_open_tls(mgr, server.port))
        await wait_until(lambda: server.sockets.connected() == 1)
        await mgr.aclose()
        # Checked before anything else runs: the interrupted handshake has closed its socket.
        assert server.sockets.connected() == 0
        with pytest.raises(asyncsp.ManagerClosedError):
            await user


async def _open_tls(mgr: ConnectionManager, port: int) -> None:
    async with mgr.open_stream(LOCAL, port, tls=True, timeout=30):
        pass


async def idle_session_that_never_answers_quit(mgr: ConnectionManager, port: int) -> socket.socket:
    """Leave an SMTP session idle in *mgr*'s pool; its server never answers QUIT."""
    async with mgr.smtp(LOCAL, port, **PLAIN) as client:
        await client.noop()
        sock: socket.socket = client._live().stream.get_extra_info("socket")
    sp = mgr.find_service_point(f"smtp://{LOCAL}:{port}")
    assert sp._pool.idle_count == 1
    return sock


@pytest.mark.parametrize("service_points", [1, 2])
async def test_aclose_cuts_off_a_goodbye_that_outlasts_the_grace(
    monkeypatch: pytest.MonkeyPatch, service_points: int
) -> None:
    monkeypatch.setattr("asyncsp._registry._CLOSE_GRACE", 0.2)  # QUIT waits 2 s for its reply
    async with scripted(responder(answers={b"QUIT": b""})) as (server, port):
        mgr = ConnectionManager()
        sock = await idle_session_that_never_answers_quit(mgr, port)
        if service_points == 2:
            # A later (more recently used) service point: aborting the first one's stream
            # must not reorder the registry while the close walks it.
            mgr.find_service_point(f"tcp://{LOCAL}:9")
        before = asyncio.all_tasks()
        await mgr.aclose()
        assert sock.fileno() == -1
        assert pending(asyncio.all_tasks() - before) == []
        assert server.sockets.connected() == 0
        assert b"QUIT\r\n" in server.received


async def test_an_idle_point_leaves_after_its_idle_time_unless_it_has_settings_of_its_own() -> None:
    async with ConnectionManager(max_idle_time=0.05) as mgr:
        unused = mgr.find_service_point("https://a.test")
        kept = mgr.find_service_point("https://b.test")
        kept.policy = TlsPolicy(resume_sessions=False)
        await wait_until(lambda: unused not in mgr.service_points)
        assert mgr.service_points == [kept]
        fresh = mgr.find_service_point("https://a.test")
        assert fresh is not unused and fresh.address == unused.address
        assert mgr.find_service_point("https://b.test").policy == kept.policy
