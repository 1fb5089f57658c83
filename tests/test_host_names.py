"""Host names: one encoding (IDNA 2008, UTS #46, non-transitional, as yarl does for URLs) for
every protocol, ``NO_PROXY`` and the name a TLS handshake verifies; a name that cannot be
encoded is refused before any lookup."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator

import pytest
import trustme
from yarl import URL

import asyncsp
from asyncsp import ConnectionManager, InvalidHostNameError, TlsPolicy
from asyncsp._endpoint import Endpoint, normalise_host

from .servers import ThreadedServer, server_context

ESZETT = "faß.example"
ESZETT_ACE = "xn--fa-hia.example"  # IDNA 2008; IDNA 2003 maps it to fass.example instead
JOINER = "a\u200db.example"  # U+200D: disallowed here; IDNA 2003 silently drops it


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        (ESZETT, ESZETT_ACE),
        ("Bücher.DE.", "xn--bcher-kva.de"),
        ("Example.COM", "example.com"),
        ("under_score.local", "under_score.local"),  # ASCII names pass as they are
        ("[::1]", "::1"),
    ],
)
def test_names_are_encoded_as_yarl_encodes_urls(name: str, encoded: str) -> None:
    assert normalise_host(name) == encoded
    if name.isascii() or "[" in name:
        return
    assert URL.build(scheme="https", host=name.rstrip(".")).raw_host == encoded


async def test_every_protocol_names_the_same_host() -> None:
    async with ConnectionManager() as mgr:
        hosts = {
            mgr.find_service_point(url, proxy=None).host
            for url in (
                f"https://{ESZETT}",
                f"smtp://{ESZETT}",
                f"ftps://{ESZETT}",
                f"tcp://{ESZETT}:7",
            )
        }
    assert hosts == {ESZETT_ACE}


async def test_a_name_that_cannot_be_encoded_is_refused_before_any_lookup() -> None:
    async with ConnectionManager() as mgr:
        with pytest.raises(InvalidHostNameError) as caught:
            mgr.find_service_point(f"tcp://{JOINER}:7")
        assert isinstance(caught.value, ValueError)
        assert isinstance(caught.value, asyncsp.AsyncspError)
        with pytest.raises(InvalidHostNameError, match="U\\+200D"):
            async with mgr.open_stream(JOINER, 7):
                pass
        with pytest.raises(InvalidHostNameError):
            async with mgr.smtp(JOINER, 2525):
                pass
        with pytest.raises(InvalidHostNameError):
            async with mgr.ftp(JOINER, 2121, security="none"):
                pass
        assert mgr.service_points == []  # nothing was made for it


def test_no_proxy_exempts_the_host_its_name_encodes_to(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", ESZETT)
    monkeypatch.delenv("no_proxy", raising=False)
    mgr = ConnectionManager(proxy="http://127.0.0.1:3128", trust_env=True)
    assert mgr.find_service_point(f"https://{ESZETT}").proxy is None
    # IDNA 2003 would have made the rule "fass.example": another domain, which stays proxied.
    assert mgr.find_service_point("https://fass.example").proxy is not None


@pytest.fixture(scope="module")
def fass_server(ca: trustme.CA) -> Iterator[ThreadedServer]:
    """A server whose certificate names fass.example, the IDNA 2003 spelling of faß.example."""
    with ThreadedServer(server_context(ca.issue_cert("fass.example"))) as server:
        yield server


@pytest.fixture(scope="module")
def eszett_server(ca: trustme.CA) -> Iterator[ThreadedServer]:
    with ThreadedServer(server_context(ca.issue_cert(ESZETT_ACE))) as server:
        yield server


async def test_tls_verifies_the_name_in_its_idna_2008_spelling(
    fass_server: ThreadedServer,
    eszett_server: ThreadedServer,
    trusted: Callable[..., TlsPolicy],
) -> None:
    async with ConnectionManager(policy=trusted()) as mgr:
        async with mgr.open_stream("127.0.0.1", eszett_server.port, timeout=5) as stream:
            await stream.start_tls(server_hostname=ESZETT)
            stream.write(b"x")
            assert await stream.readexactly(6) == b"echo:x"
        # The certificate of another registrable domain must not pass for faß.example.
        async with mgr.open_stream("127.0.0.1", fass_server.port, timeout=5) as stream:
            with pytest.raises(asyncsp.CertificateVerificationError):
                await stream.start_tls(server_hostname=ESZETT)
        with pytest.raises(InvalidHostNameError):
            async with mgr.open_stream("127.0.0.1", fass_server.port, timeout=5) as stream:
                await stream.start_tls(server_hostname=JOINER)
    assert fass_server.record.received == []


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "01.2.3.4",
        "1.2.3.04",
        "1.2.3",
        "1.2.3.4.5",
        "256.1.1.1",
        "0x7f.0.0.1",
        "1..2.3",
        "12345678",
        "+1.2.3.4",
        "١٢٧.0.0.1",
        "::ffff:1.2.3.4",
        "fe80::1%eth0",
        "[2001:DB8::1]",
    ],
)
def test_addresses_are_what_ipaddress_makes_of_them(text: str) -> None:
    """The IPv4 fast path (inet_pton) takes exactly what ipaddress takes, spelled alike;
    anything else is a name (and refused or IDNA-encoded as one)."""
    bare = text.strip("[]").lower()
    try:
        expected: str | None = ipaddress.ip_address(bare).compressed
    except ValueError:
        expected = None
    try:
        got: str | None = normalise_host(text)
    except InvalidHostNameError:
        got = None
    if expected is not None:
        assert got == expected
    else:
        assert got is None or got == bare or got.startswith("xn--")


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("tcp://127.0.0.1:0080", "tcp://127.0.0.1:80"),
        ("tcp://Host.Example.:7", "tcp://host.example:7"),
        ("tls://127.0.0.1.:5/", "tls://127.0.0.1:5"),
        ("smtp://mx.example:25", "smtp://mx.example:25"),
        ("https://[::1]:8443/x?y", "https://[::1]:8443"),
        ("http://01.2.3.4:80", "http://01.2.3.4:80"),  # not an address: a (numeric) name
    ],
)
def test_endpoint_texts_parse_alike_on_every_path(text: str, address: str) -> None:
    endpoint = Endpoint.parse(text)
    assert endpoint.address == address
    assert endpoint == Endpoint(endpoint.scheme, endpoint.host, endpoint.port)
    assert str(endpoint) == address and endpoint.netloc == address.split("://", 1)[1]


@pytest.mark.parametrize("text", ["tcp://127.0.0.1:0", "tls://a:65536", "tcp://a:99999", "tcp://a"])
def test_endpoint_ports_out_of_range_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="port"):
        Endpoint.parse(text)


def test_only_the_front_ends_spelling_of_an_endpoint_is_remembered() -> None:
    """`Endpoint.parse` keeps the texts it parsed, but never a user's URL, which may carry a
    password."""
    from asyncsp._endpoint import _parse

    Endpoint.parse("https://cached.example:443")
    before = _parse.cache_info().currsize
    parsed = Endpoint.parse("https://user:s3cret@other.example/path?q=1")
    assert parsed.address == "https://other.example:443"
    assert _parse.cache_info().currsize == before
