"""Proxy settings, NO_PROXY and the CONNECT wire format: pure, table-driven (no sockets)."""

from __future__ import annotations

import base64

import pytest

from asyncsp import ConnectionManager
from asyncsp._proxy import (
    ProxyRoute,
    ProxySettings,
    connect_request,
    parse_connect_reply,
    parse_no_proxy,
)

PASSWORD = "pa:ss@w/rd"  # every character that needs quoting in a URL
QUOTED = "pa%3Ass%40w%2Frd"


# -- proxy URLs ----------------------------------------------------------------------------


def test_credentials_become_a_header_and_leave_the_url() -> None:
    route = ProxyRoute.parse(f"http://alice:{QUOTED}@Proxy.Example:3128/")
    assert route.url == "http://proxy.example:3128"
    assert (route.host, route.port) == ("proxy.example", 3128)
    token = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert route.authorization == f"Basic {token}"
    for shown in (repr(route), str(route)):
        assert PASSWORD not in shown and QUOTED not in shown and token not in shown
        assert "credentials=***" in shown
    assert route.scrub(f"x {QUOTED} y {token} z alice:{PASSWORD}") == "x *** y *** z ***"


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("http://proxy", "http://proxy:80"),
        ("http://10.0.0.1:8080", "http://10.0.0.1:8080"),
        ("http://[::1]:3128", "http://[::1]:3128"),
        ("http://user@proxy:1", "http://proxy:1"),
    ],
)
def test_proxy_urls_are_normalised(text: str, url: str) -> None:
    assert ProxyRoute.parse(text).url == url


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (f"https://alice:{QUOTED}@proxy:3128", "only http://"),
        (f"socks5://alice:{QUOTED}@proxy:1080", "only http://"),
        (f"alice:{QUOTED}@proxy:3128", "only http://"),
        (f"http://alice:{QUOTED}@proxy:3128/path", "no path"),
        (f"http://alice:{QUOTED}@proxy:99999", "port"),
        (f"http://alice:{QUOTED}@:3128", "no host"),
        ("http://alice:pa/ss@w@proxy:3128", "no path"),  # unquoted: still nothing shown
    ],
)
def test_bad_proxy_urls_are_value_errors_without_the_password(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint) as caught:
        ConnectionManager(proxy=text)
    shown = str(caught.value)
    assert PASSWORD not in shown and QUOTED not in shown and "pa/ss" not in shown


def test_colon_in_user_name_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot contain ':'"):
        ProxyRoute.parse("http://a%3Ab:pw@proxy:3128")


# -- NO_PROXY ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "bypass"),
    [
        ("example.com", "example.com", 443, True),
        ("example.com", "api.example.com", 443, True),
        ("example.com", "badexample.com", 443, False),
        (".example.com", "example.com", 443, True),
        ("*.example.com", "a.b.example.com", 80, True),
        ("EXAMPLE.com.", "example.com", 80, True),
        ("example.com:8443", "example.com", 8443, True),
        ("example.com:8443", "example.com", 443, False),
        ("127.0.0.1", "127.0.0.1", 80, True),
        ("127.0.0.1", "127.0.0.2", 80, False),
        ("10.0.0.0/8", "10.1.2.3", 80, True),
        ("10.0.0.0/8", "11.1.2.3", 80, False),
        ("10.0.0.0/8", "ten.example", 80, False),
        ("::1", "::1", 443, True),
        ("[::1]:8080", "::1", 8080, True),
        ("[::1]:8080", "::1", 443, False),
        ("localhost, other.test  intranet", "intranet", 80, True),
        ("localhost,,", "other", 80, False),
        ("", "anything", 80, False),
    ],
)
def test_no_proxy_rules(no_proxy: str, host: str, port: int, bypass: bool) -> None:
    settings = ProxySettings.from_config(
        "http://proxy:3128", trust_env=True, environ={"NO_PROXY": no_proxy}
    )
    assert (settings.route("https", host, port) is None) is bypass


def test_no_proxy_star_bypasses_everything() -> None:
    rules, everything = parse_no_proxy("localhost, *")
    assert everything and rules == ()
    settings = ProxySettings.from_config(
        None, trust_env=True, environ={"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "*"}
    )
    assert settings.route("https", "example.com", 443) is None and not settings.enabled


@pytest.mark.parametrize("entry", ["host:port", "host:0", "[::1]x", "bad@host", "a/b/c"])
def test_malformed_no_proxy_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match=r"no_proxy|NO_PROXY"):
        ProxySettings.from_config(None, trust_env=True, environ={"no_proxy": f"ok.test,{entry}"})


# -- the environment -----------------------------------------------------------------------


def test_environment_variables_per_scheme_lower_case_first() -> None:
    env = {
        "http_proxy": "http://lower:1",
        "HTTP_PROXY": "http://upper:2",
        "HTTPS_PROXY": "secure-proxy:3",  # no scheme: read as http://, as curl does
    }
    settings = ProxySettings.from_config(None, trust_env=True, environ=env)
    assert settings.http is not None and settings.http.url == "http://lower:1"
    assert settings.https is not None and settings.https.url == "http://secure-proxy:3"
    assert settings.route("ftp", "host", 21) is None
    assert ProxySettings.from_config(None, trust_env=False, environ=env).http is None


def test_upper_case_http_proxy_is_ignored_under_cgi() -> None:
    # httpoxy: a request's "Proxy:" header becomes HTTP_PROXY in a CGI environment.
    env = {"REQUEST_METHOD": "GET", "HTTP_PROXY": "http://attacker:1", "HTTPS_PROXY": "http://p:2"}
    settings = ProxySettings.from_config(None, trust_env=True, environ=env)
    assert settings.http is None
    assert settings.https is not None and settings.https.url == "http://p:2"


def test_explicit_proxy_wins_and_no_proxy_still_exempts() -> None:
    env = {"HTTPS_PROXY": "http://env:1", "NO_PROXY": "internal.test"}
    settings = ProxySettings.from_config("http://explicit:2", trust_env=True, environ=env)
    route = settings.route("https", "example.com", 443)
    assert route is not None and route.url == "http://explicit:2"
    assert settings.route("https", "internal.test", 443) is None
    alone = ProxySettings.from_config("http://explicit:2", trust_env=False, environ=env)
    assert alone.route("https", "internal.test", 443) is not None


def test_bad_environment_value_names_the_variable() -> None:
    env = {"https_proxy": "http://alice:secret-pw@proxy:notaport"}
    with pytest.raises(ValueError, match="https_proxy") as caught:
        ProxySettings.from_config(None, trust_env=True, environ=env)
    assert "secret-pw" not in str(caught.value)


def test_trust_env_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="trust_env"):
        ConnectionManager(trust_env="yes")  # type: ignore[arg-type]


# -- CONNECT on the wire -------------------------------------------------------------------


def test_connect_request_bytes() -> None:
    assert connect_request("example.com", 443, None) == (
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    )
    assert connect_request("::1", 8443, "Basic eA==") == (
        b"CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n"
        b"Proxy-Authorization: Basic eA==\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("head", "status", "reason", "established"),
    [
        (b"HTTP/1.1 200 Connection established\r\n\r\n", 200, "Connection established", True),
        (b"HTTP/1.0 200 OK\r\nProxy-agent: x\r\n\r\n", 200, "OK", True),
        (b"HTTP/1.1 204\r\n\r\n", 204, "", True),
        (
            b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
            407,
            "Proxy Authentication Required",
            False,
        ),
        (b"HTTP/1.1 502 Bad\x1b[31m \xffGateway\r\n\r\n", 502, "Bad?[31m ?Gateway", False),
        (b"HTTP/1.1 301 " + b"x" * 500 + b"\r\n\r\n", 301, "x" * 80, False),
    ],
)
def test_connect_replies(head: bytes, status: int, reason: str, established: bool) -> None:
    reply = parse_connect_reply(head)
    assert (reply.status, reply.reason, reply.established) == (status, reason, established)


@pytest.mark.parametrize(
    "head", [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 20 OK\r\n\r\n", b"HTTP/2 200\r\n\r\n", b"\r\n"]
)
def test_malformed_connect_replies(head: bytes) -> None:
    with pytest.raises(ValueError):
        parse_connect_reply(head)


# -- the manager: which service point a URL's requests use ----------------------------------


async def test_find_service_point_follows_the_route_of_each_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NO_PROXY", "internal.test")
    proxy = f"http://alice:{QUOTED}@proxy.test:3128"
    async with ConnectionManager(proxy=proxy, trust_env=True) as mgr:
        assert mgr.proxy == "http://proxy.test:3128" and QUOTED not in repr(mgr)
        via = mgr.find_service_point("https://example.com/a")
        assert via.proxy == "http://proxy.test:3128" and "via http://proxy.test:3128" in repr(via)
        assert via is mgr.find_service_point("https://example.com:443/b")
        direct = mgr.find_service_point("https://example.com", proxy=None)
        assert direct is not via and direct.proxy is None
        assert mgr.find_service_point("https://internal.test").proxy is None  # NO_PROXY
        assert mgr.find_service_point("smtp://example.com").proxy is None  # HTTP only
        other = mgr.find_service_point("http://example.com", proxy=f"http://bob:{QUOTED}@p:1")
        assert other.proxy == "http://p:1"
