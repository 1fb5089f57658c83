"""HTTP proxies: which requests go through which proxy, and the ``CONNECT`` exchange on the wire.

Everything here is pure: `ProxySettings` is built once per manager from ``proxy=`` and (with
``trust_env=True``) the environment, and answers "which proxy, if any, for this scheme, host
and port"; `connect_request` and `parse_connect_reply` are the bytes of RFC 9110 §9.3.6.
The I/O that opens a tunnel lives with the HTTP layer (`asyncsp._http_tunnel`).

Credentials in a proxy URL become a ``Proxy-Authorization`` header (RFC 9110 §11.7.2, Basic
per RFC 7617) and never appear in a repr, message or service point: `ProxyRoute.url` is the
proxy without them, and `ProxyRoute.secrets` lists the spellings error messages are checked for.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import os
import urllib.parse
from collections.abc import Mapping

from ._endpoint import normalise_host

__all__ = [
    "ConnectReply",
    "NoProxyRule",
    "ProxyRoute",
    "ProxySettings",
    "connect_request",
    "parse_connect_reply",
    "parse_no_proxy",
]

DEFAULT_PROXY_PORT = 80
"""The port of an ``http://`` proxy URL that names none (the scheme's, as curl and urllib do)."""
MAX_CONNECT_REPLY = 64 * 1024
"""Largest status line plus headers accepted in answer to CONNECT (servers cap requests alike)."""
MAX_REASON_SHOWN = 80
"""Characters of a proxy's reason phrase quoted in an error message."""

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclasses.dataclass(frozen=True, slots=True)
class ProxyRoute:
    """One HTTP proxy: where it is, and the header that carries its credentials."""

    url: str
    """``"http://host:port"``, never with credentials (what ``ServicePoint.proxy`` shows)."""
    host: str
    port: int
    authorization: str | None = dataclasses.field(default=None, repr=False)
    """The ``Proxy-Authorization`` value, ``None`` without credentials."""
    secrets: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    """Every spelling of the credentials that must never appear in a message."""

    @classmethod
    def parse(
        cls, text: str, *, source: str = "proxy", scheme_optional: bool = False
    ) -> ProxyRoute:
        """Parse ``http://[user:password@]host[:port]``; `ValueError` names *source*, not secrets.

        *scheme_optional* accepts ``host:port`` as ``http://host:port`` (what curl and
        requests do with environment variables).
        """
        if not isinstance(text, str):
            raise ValueError(f"{source} must be a URL string such as 'http://proxy.example:3128'")
        text = text.strip()
        if scheme_optional and "://" not in text:
            text = "http://" + text
        parts = urllib.parse.urlsplit(text)
        shown = _redacted(text)
        if parts.scheme.lower() != "http":
            raise ValueError(
                f"{source}={shown!r}: only http:// proxies are supported (HTTPS requests still "
                "reach their origin over TLS, through CONNECT); not "
                f"{parts.scheme or 'a URL without scheme'}"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{source}={shown!r}: a proxy URL has no path, query or fragment")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(
                f"{source}={shown!r}: the port is not a number from 0 to 65535"
            ) from None
        port = DEFAULT_PROXY_PORT if port is None else port
        if not 0 < port < 65536:
            raise ValueError(f"{source}={shown!r}: port {port} is out of range")
        host = normalise_host(parts.hostname or "", f"{source}={shown!r}")
        netloc = f"[{host}]" if ":" in host else host
        url = f"http://{netloc}:{port}"
        if parts.username is None:
            return cls(url, host, port)
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        if ":" in user:
            # RFC 7617 §2: the user-id of Basic credentials cannot contain a colon.
            raise ValueError(f"{source}={url!r}: a proxy user name cannot contain ':'")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        secrets = {token, f"{user}:{password}", parts.netloc.rpartition("@")[0]}
        if password:
            secrets |= {password, urllib.parse.quote(password, safe="")}
        return cls(url, host, port, f"Basic {token}", tuple(sorted(s for s in secrets if s)))

    def scrub(self, text: str) -> str:
        """*text* with every spelling of the credentials replaced by ``***``."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def __repr__(self) -> str:
        credentials = ", credentials=***" if self.authorization else ""
        return f"ProxyRoute({self.url!r}{credentials})"


@dataclasses.dataclass(frozen=True, slots=True)
class NoProxyRule:
    """One ``NO_PROXY`` entry: a host and its subdomains, an address or network, maybe a port."""

    host: str | None = None
    """A normalised host name; it and every name under it match."""
    network: IPNetwork | None = None
    """An address (a /32 or /128) or network that matching IP literals fall in."""
    port: int | None = None
    """Only this port matches, when set."""

    def matches(self, host: str, port: int) -> bool:
        """Whether a request to *host* (normalised) and *port* bypasses the proxy."""
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            try:
                return ipaddress.ip_address(host) in self.network
            except ValueError:
                return False
        assert self.host is not None
        return host == self.host or host.endswith("." + self.host)


@dataclasses.dataclass(frozen=True, slots=True)
class ProxySettings:
    """Which proxy each HTTP request goes through: a manager's ``proxy=`` and environment."""

    http: ProxyRoute | None = None
    https: ProxyRoute | None = None
    no_proxy: tuple[NoProxyRule, ...] = ()
    bypass_all: bool = False
    """``NO_PROXY=*``: no request goes through a proxy."""

    @classmethod
    def from_config(
        cls, proxy: str | None, *, trust_env: bool, environ: Mapping[str, str] | None = None
    ) -> ProxySettings:
        """The settings of ``ConnectionManager(proxy=..., trust_env=...)``.

        An explicit *proxy* carries both http and https requests; with *trust_env* the
        environment's ``NO_PROXY`` still exempts hosts from it. Without one, *trust_env* reads
        ``HTTP_PROXY``/``HTTPS_PROXY`` (lower case first, as curl and urllib do).
        """
        if not isinstance(trust_env, bool):
            raise ValueError(f"trust_env must be a bool, not {trust_env!r}")
        env = os.environ if environ is None else environ
        explicit = None if proxy is None else ProxyRoute.parse(proxy)
        if not trust_env:
            return cls(http=explicit, https=explicit)
        rules, bypass_all = parse_no_proxy(_getenv(env, "no_proxy") or "")
        if explicit is not None:
            return cls(explicit, explicit, rules, bypass_all)
        routes = {}
        for scheme in ("http", "https"):
            name = f"{scheme}_proxy"
            # httpoxy (CVE-2016-5385): under CGI a client's "Proxy:" header arrives as
            # HTTP_PROXY; urllib ignores the upper-case variable there, and so do we.
            upper_allowed = not (scheme == "http" and "REQUEST_METHOD" in env)
            value = _getenv(env, name, upper=upper_allowed)
            if value:
                spelled = name if env.get(name) else name.upper()
                routes[scheme] = ProxyRoute.parse(value, source=spelled, scheme_optional=True)
        return cls(routes.get("http"), routes.get("https"), rules, bypass_all)

    def route(self, scheme: str, host: str, port: int) -> ProxyRoute | None:
        """The proxy for a request to *scheme*://*host*:*port* (host normalised), or ``None``."""
        chosen = self.https if scheme == "https" else self.http if scheme == "http" else None
        if chosen is None or self.bypass_all:
            return None
        if any(rule.matches(host, port) for rule in self.no_proxy):
            return None
        return chosen

    @property
    def enabled(self) -> bool:
        """Whether any request can go through a proxy."""
        return (self.http is not None or self.https is not None) and not self.bypass_all


def parse_no_proxy(text: str, source: str = "NO_PROXY") -> tuple[tuple[NoProxyRule, ...], bool]:
    """The rules of a ``NO_PROXY`` value and whether it is ``*`` (everything bypasses).

    Entries are separated by commas or spaces: ``example.com`` (it and its subdomains; a
    leading ``.`` or ``*.`` means the same), ``host:port``, IP addresses (``[::1]:8080``) and
    networks (``10.0.0.0/8``), as curl reads them. A malformed entry is a `ValueError`: quietly
    dropping it would send traffic meant to bypass the proxy through it.
    """
    rules = []
    for entry in text.replace(",", " ").split():
        if entry == "*":
            return (), True
        rules.append(_no_proxy_rule(entry, source))
    return tuple(rules), False


def _no_proxy_rule(entry: str, source: str) -> NoProxyRule:
    def bad(why: str) -> ValueError:
        return ValueError(f"{source}: cannot read the entry {entry!r}: {why}")

    try:
        return NoProxyRule(network=ipaddress.ip_network(entry, strict=False))
    except ValueError:
        pass
    host, port = entry, None
    if entry.startswith("["):  # [IPv6]:port
        inside, _, rest = entry[1:].partition("]")
        host = inside
        if rest:
            if not rest.startswith(":"):
                raise bad("expected [address]:port")
            port = _port(rest[1:])
            if port is None:
                raise bad("the port is not a number from 1 to 65535")
    elif entry.count(":") == 1:
        host, _, text = entry.partition(":")
        port = _port(text)
        if port is None:
            raise bad("the port is not a number from 1 to 65535")
    try:
        return NoProxyRule(network=ipaddress.ip_network(host, strict=False), port=port)
    except ValueError:
        pass
    host = host.removeprefix("*.").lstrip(".")
    try:
        return NoProxyRule(host=normalise_host(host, source), port=port)
    except ValueError:
        raise bad("not a host name, address, network or host:port") from None


def _port(text: str) -> int | None:
    return int(text) if text.isdigit() and 0 < int(text) < 65536 else None


def _getenv(env: Mapping[str, str], name: str, *, upper: bool = True) -> str | None:
    value = env.get(name)
    if value is None and upper:
        value = env.get(name.upper())
    return value.strip() if value else None


def _redacted(text: str) -> str:
    """*text* fit for a message: everything up to its last ``@`` masked.

    Cruder than removing the URL's user info, on purpose: a URL that does not parse as
    intended (an unquoted ``/`` or ``@`` in the password) must not show any of it either.
    """
    if "@" not in text:
        return text
    scheme, separator, _ = text.partition("://")
    return (scheme + separator if separator else "") + "***@" + text.rpartition("@")[2]


# -- CONNECT on the wire (RFC 9110 §9.3.6) --------------------------------------------------


def connect_request(host: str, port: int, authorization: str | None) -> bytes:
    """The ``CONNECT`` request for a tunnel to *host* (normalised, IDNA) and *port*."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if authorization is not None:
        lines.append(f"Proxy-Authorization: {authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectReply:
    """A proxy's answer to CONNECT: its status and a printable, bounded reason."""

    status: int
    reason: str

    @property
    def established(self) -> bool:
        """Any 2xx opens the tunnel (RFC 9110 §9.3.6)."""
        return 200 <= self.status < 300


def parse_connect_reply(head: bytes) -> ConnectReply:
    """Parse a reply head (status line and headers, ending with an empty line).

    `ValueError` says what is wrong. The headers are not needed: a 2xx reply has no body
    (RFC 9110 §9.3.6: a client ignores its Content-Length and Transfer-Encoding), and any
    other reply ends the connection.
    """
    status_line, _, _ = head.partition(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise ValueError(f"not an HTTP/1.x status line: {_printable(status_line)!r}")
    code = parts[1]
    if len(code) != 3 or not code.isdigit():
        raise ValueError(f"not a three-digit status: {_printable(code)!r}")
    reason = _printable(parts[2]) if len(parts) == 3 else ""
    return ConnectReply(int(code), reason)


def _printable(raw: bytes) -> str:
    """Proxy-chosen text made safe to quote in a message: printable ASCII, bounded."""
    text = raw[:MAX_REASON_SHOWN].decode("ascii", "replace")
    return "".join(c if c.isprintable() and c.isascii() else "?" for c in text)
