"""Endpoints: the normalised (scheme, host, port) that names a service point."""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
import socket
import urllib.parse

import idna

from ._errors import InvalidHostNameError

__all__ = ["DEFAULT_PORTS", "Endpoint"]

DEFAULT_PORTS = {"http": 80, "https": 443, "smtp": 25, "smtps": 465, "ftp": 21, "ftps": 990}
"""Well-known ports; ``tcp://`` and ``tls://`` (raw streams) always name theirs."""
SCHEMES = frozenset(DEFAULT_PORTS) | {"tcp", "tls"}
_SIMPLE = re.compile(r"([a-z]+)://([a-z0-9][a-z0-9.\-]*):([0-9]{1,5})/?")
"""An endpoint given as lower-case scheme, ASCII host name or IPv4 address, and port."""
TLS_SCHEMES = frozenset({"https", "smtps", "ftps", "tls"})
KEPT = 128
"""Endpoints (and IDNA encodings) remembered per spelling: enough for the endpoints a program
names again and again, little to keep after a crawl over thousands it never names again."""


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """A normalised endpoint: lower-case scheme and host (IDNA), explicit port."""

    scheme: str
    host: str
    port: int
    # Said once, when made: the service point and every error message ask for them.
    netloc: str = dataclasses.field(init=False, repr=False, compare=False)
    address: str = dataclasses.field(init=False, repr=False, compare=False)
    """``"scheme://host:port"``, with IPv6 hosts in brackets."""

    def __post_init__(self) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host
        netloc = f"{host}:{self.port}"
        object.__setattr__(self, "netloc", netloc)
        object.__setattr__(self, "address", f"{self.scheme}://{netloc}")

    @classmethod
    def parse(cls, url_or_address: str) -> Endpoint:
        """Parse ``https://Host:443/path``-style text; `ValueError` names what is wrong."""
        if not isinstance(url_or_address, str):
            raise ValueError(f"an endpoint is a URL string, not {type(url_or_address).__name__}")
        if cls is Endpoint and _SIMPLE.fullmatch(url_or_address):
            # The same text names the same endpoint: kept. Only the front-ends' own spelling
            # (scheme://host:port) is, never a user's URL, which may carry credentials.
            return _parse(url_or_address)
        return cls._parse(url_or_address)

    @classmethod
    def _parse(cls, url_or_address: str) -> Endpoint:
        text = url_or_address.strip()
        simple = _SIMPLE.fullmatch(text)
        if simple is not None:
            # "scheme://name-or-ipv4:port", how the front-ends name their endpoints: what
            # urlsplit would make of it, without its general parse.
            scheme, host, digits = simple.groups()
            number = int(digits)
            if scheme in SCHEMES and 0 < number < 65536:
                return cls(scheme, normalise_host(host, url_or_address), number)
        parts = urllib.parse.urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise ValueError(
                f"{url_or_address!r}: unknown or missing scheme; use one of "
                + ", ".join(f"{s}://" for s in sorted(SCHEMES))
            )
        try:
            port = parts.port
        except ValueError:
            raise ValueError(
                f"{url_or_address!r}: the port is not a number from 0 to 65535"
            ) from None
        if port is None:
            if scheme not in DEFAULT_PORTS:
                raise ValueError(f"{url_or_address!r}: {scheme}:// needs an explicit port")
            port = DEFAULT_PORTS[scheme]
        if not 0 < port < 65536:
            raise ValueError(f"{url_or_address!r}: port {port} is out of range")
        return cls(scheme, normalise_host(parts.hostname or "", url_or_address), port)

    @property
    def implicit_tls(self) -> bool:
        """Whether connections to this endpoint start with a TLS handshake."""
        return self.scheme in TLS_SCHEMES

    def __str__(self) -> str:
        return self.address


@functools.lru_cache(maxsize=KEPT)
def _parse(url_or_address: str) -> Endpoint:
    """`Endpoint.parse`, remembered per text (a protocol front-end names its endpoint again
    on every session; errors are not remembered)."""
    return Endpoint._parse(url_or_address)


def normalise_host(host: str, context: str = "") -> str:
    """Lower-case, bracket-free, IDNA-encoded host; `InvalidHostNameError` if it names none.

    One encoding for every protocol (and ``NO_PROXY``), the one yarl gives HTTP URLs: IDNA 2008
    with UTS #46 mapping, non-transitional (so ``faß.example`` stays ``xn--fa-hia.example``).
    Python's ``"idna"`` codec is IDNA 2003, which maps it to ``fass.example``, another
    registrable domain, and silently drops joiners such as U+200D.
    """
    host = host.strip().strip("[]").rstrip(".").lower()
    if not host:
        raise InvalidHostNameError(f"{context or host!r}: no host name")
    if ":" in host:  # only an IPv6 address (or no host at all) has a colon
        try:
            return ipaddress.ip_address(host).compressed
        except ValueError:
            pass
    else:
        # What ipaddress takes for IPv4 (four decimal octets, no leading zeros), at the C
        # speed of inet_pton; a name fails at once instead of through two parsers' errors.
        try:
            return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, host))
        except (OSError, ValueError):
            pass
    encoded = host if host.isascii() else _encode_idna(host, context)
    if any(c in encoded for c in "/\\@?#% \t\r\n\0"):
        raise InvalidHostNameError(f"{context or host!r}: {host!r} is not a valid host name")
    return encoded


@functools.lru_cache(maxsize=KEPT)
def _encode_idna(host: str, context: str) -> str:
    try:
        return idna.encode(host, uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError as exc:
        # Refused before any lookup: a name that cannot be encoded must not reach the
        # resolver (or a certificate check) in some other spelling.
        raise InvalidHostNameError(
            f"{context or host!r}: {host!r} is not a valid internationalised host name ({exc})"
        ) from None
