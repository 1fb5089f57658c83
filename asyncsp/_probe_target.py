"""What ``asyncsp probe`` is pointed at: a target's text, checked and named.

A usage error here is one `ValueError` whose message says what to type instead: an IPv6
address without brackets gets the bracketed form, and every port outside 1..65535 gets the
same sentence, whether it is 0, 70000 or not a number.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import urllib.parse

from ._endpoint import Endpoint

__all__ = ["HTTP_ALPN", "Target", "parse_target"]

HTTP_ALPN = ("h2", "http/1.1")
"""ALPN offered to HTTPS and bare host:port targets, to learn what the server selects."""
ALPN_CANDIDATES = ("h2", "http/1.1", "http/1.0")
"""Protocols offered one at a time to learn the set an HTTPS server accepts."""
_TARGET_SCHEMES = ("https", "smtp", "smtps", "ftp", "ftps", "tls")


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """What to probe: an endpoint and how TLS starts on it."""

    endpoint: Endpoint

    @property
    def host(self) -> str:
        return self.endpoint.host

    @property
    def port(self) -> int:
        return self.endpoint.port

    @property
    def address(self) -> str:
        return self.endpoint.address

    @property
    def starttls(self) -> str | None:
        """``"smtp"`` or ``"ftp"`` when TLS starts after a plain-text dialogue."""
        return self.endpoint.scheme if self.endpoint.scheme in ("smtp", "ftp") else None

    @property
    def alpn(self) -> tuple[str, ...]:
        return HTTP_ALPN if self.web else ()

    @property
    def web(self) -> bool:
        """Whether ALPN means something here (HTTPS, or a bare host:port)."""
        return self.endpoint.scheme in ("https", "tls")


def parse_target(text: str) -> Target:
    """``https://host[:port]``, ``host:port``, ``smtp(s)://host[:port]``, ``ftp(s)://...``.

    `ValueError` (a usage error) says what is wrong.
    """
    text = text.strip()
    bare = "://" not in text
    scheme, _, rest = text.rpartition("://") if not bare else ("tls", "", text)
    scheme = scheme.lower()
    if scheme not in _TARGET_SCHEMES:
        raise ValueError(
            f"{text!r}: cannot probe {scheme}://; use https://, smtp://, smtps://, ftp://, "
            "ftps:// or host:port"
        )
    netloc, _, tail = rest.partition("/")
    if tail or "?" in netloc or "#" in netloc or "@" in netloc:
        raise ValueError(f"{text!r}: a probe target is scheme://host[:port], nothing more")
    _check_brackets(text, scheme, netloc, bare)
    try:
        parts = urllib.parse.urlsplit(f"//{netloc}")
    except ValueError as exc:  # "Invalid IPv6 URL": an unclosed bracket
        raise ValueError(f"{text!r}: not a host or host:port ({exc})") from None
    port_text = netloc.rpartition("]")[2] if netloc.startswith("[") else netloc
    if ":" in port_text:
        _check_port(text, port_text.rpartition(":")[2])
    elif bare:
        raise ValueError(f"{text!r}: give host:port, or a URL such as https://{text or 'host'}")
    if not parts.hostname:
        raise ValueError(f"{text!r}: the host is missing")
    return Target(Endpoint.parse(f"{scheme}://{netloc}"))


def _check_brackets(text: str, scheme: str, netloc: str, bare: bool) -> None:
    """An IPv6 address with a port needs brackets (RFC 3986 §3.2.2): say the bracketed form."""
    if netloc.startswith("[") or netloc.count(":") < 2:
        return
    prefix = "" if bare else f"{scheme}://"
    address, _, port = netloc.rpartition(":")
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        address = ""
    try:
        ipaddress.IPv6Address(netloc)
    except ValueError:
        if not address:
            raise ValueError(f"{text!r}: not a host or host:port") from None
    else:
        if not bare:  # "::1:8443" is an address too: both readings, the port one first
            split = f" ({prefix}[{address}]:{port} for port {port})" if address else ""
            raise ValueError(f"{text!r}: an IPv6 address takes brackets: {prefix}[{netloc}]{split}")
    raise ValueError(
        f"{text!r}: an IPv6 address takes brackets before its port: {prefix}[{address}]:{port}"
    )


def _check_port(text: str, port: str) -> None:
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535, not {port!r}")
