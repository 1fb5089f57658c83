"""Which suites and groups a server accepts at each version, in the server's own order.

Enumeration is sslscan's: offer every candidate, note the server's pick, offer the rest, until
it refuses. Under server preference the picks come out in the server's order; one more hello
with the accepted suites reversed tells server preference from client preference. Each hello
is one round trip on a fresh connection (`Wire.exchange`); a version costs one hello per
accepted suite plus two, and its hellos go one after another, so the server never sees more
than one connection per version at once (and `Wire` bounds the total).

Candidates are the suites this OpenSSL can offer at security level 0, plus a few legacy suites
it can no longer offer (3DES, RC4): a bare ClientHello needs no cipher implementation, so a
server that still picks them is found out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ssl
from collections.abc import Sequence

from ._probe_hello import (
    GROUP_NAMES,
    GROUPS,
    TLS13_SUITES,
    WIRE_VERSIONS,
    ServerFlight,
    client_hello,
    key_exchange_facts,
)
from ._probe_wire import ALL_SUITES, Wire

__all__ = ["Suite", "SuiteResult", "VersionSuites", "enumerate_groups", "enumerate_suites"]

MIN_DH_BITS = 2048
"""Smallest finite-field DH group accepted as strong (Logjam, 2015; NIST SP 800-57)."""
_UNREACHABLE_BY_OPENSSL = {
    0x000A: ("DES-CBC3-SHA", "kx-rsa", "auth-rsa", "des-ede3-cbc", "sha1"),
    0x0016: ("DHE-RSA-DES-CBC3-SHA", "kx-dhe", "auth-rsa", "des-ede3-cbc", "sha1"),
    0xC012: ("ECDHE-RSA-DES-CBC3-SHA", "kx-ecdhe", "auth-rsa", "des-ede3-cbc", "sha1"),
    0x0004: ("RC4-MD5", "kx-rsa", "auth-rsa", "rc4", "md5"),
    0x0005: ("RC4-SHA", "kx-rsa", "auth-rsa", "rc4", "sha1"),
    0xC011: ("ECDHE-RSA-RC4-SHA", "kx-ecdhe", "auth-rsa", "rc4", "sha1"),
}
"""Legacy suites (RFC 7465 bans RC4; 3DES: Sweet32) that OpenSSL 3 no longer offers."""
TLS12_GROUPS = ("x25519", "secp256r1", "x448", "secp521r1", "secp384r1")
"""Curves an ECDHE suite can use under TLS 1.2 (RFC 8422)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Suite:
    """One cipher suite, described by OpenSSL's fields."""

    code: int
    name: str
    kea: str
    """OpenSSL's key exchange: ``kx-ecdhe``, ``kx-dhe``, ``kx-rsa``, ``kx-any`` (TLS 1.3)..."""
    auth: str
    symmetric: str | None
    digest: str | None
    tls12_only: bool

    @property
    def iana(self) -> str:
        return f"0x{self.code:04X}"


@dataclasses.dataclass(frozen=True, slots=True)
class SuiteResult:
    """A suite the server accepted, with what its key exchange showed."""

    suite: Suite
    group: str | None = None
    dh_bits: int | None = None

    @property
    def weaknesses(self) -> tuple[str, ...]:
        return weaknesses(self.suite, self.dh_bits)

    @property
    def key_exchange(self) -> str | None:
        if self.dh_bits is not None:
            return f"DH {self.dh_bits} bits"
        return self.group

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.suite.name,
            "iana": self.suite.iana,
            "key_exchange": self.key_exchange,
            "weak": list(self.weaknesses),
        }


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class VersionSuites:
    """What one version's enumeration found."""

    version: str
    suites: tuple[SuiteResult, ...] = ()
    """In the server's order when `preference` is ``"server"``."""
    preference: str | None = None
    """``"server"``, ``"client"`` or ``None`` (fewer than two suites: nothing to order)."""
    complete: bool = True
    """False when the time budget ended the enumeration early."""
    first: ServerFlight | None = None
    """The first accepted flight (its chain, for TLS 1.2 and older)."""
    error: str | None = None
    """Why no hello got an answer (plain text, silence, no connection)."""


def weaknesses(suite: Suite, dh_bits: int | None = None) -> tuple[str, ...]:
    """Why a suite is weak, in a few words each; empty when it is not."""
    found = []
    if suite.auth == "auth-null":
        found.append("anonymous (no authentication)")
    if suite.symmetric is None:
        found.append("no encryption (NULL)")
    elif suite.symmetric == "rc4":
        found.append("RC4")
    elif suite.symmetric.startswith("des"):
        found.append("3DES" if "ede3" in suite.symmetric else "DES")
    if suite.kea in ("kx-rsa", "kx-rsa-psk"):
        found.append("no forward secrecy (static RSA)")
    if suite.digest == "md5":
        found.append("MD5")
    elif suite.digest == "sha1" and suite.symmetric and suite.symmetric.endswith("-cbc"):
        found.append("CBC with SHA-1")
    if dh_bits is not None and dh_bits < MIN_DH_BITS:
        found.append(f"DH {dh_bits} bits")
    return tuple(found)


@functools.lru_cache(maxsize=1)
def catalogue() -> dict[int, Suite]:
    """Every suite the probe can offer, by IANA code."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers(ALL_SUITES)
    suites = {
        code: Suite(code, name, kea, auth, sym, digest, tls12_only=True)
        for code, (name, kea, auth, sym, digest) in _UNREACHABLE_BY_OPENSSL.items()
    }
    for info in context.get_ciphers():
        code = info["id"] & 0xFFFF
        suites[code] = Suite(
            code,
            info["name"],
            info["kea"],
            info["auth"],
            info["symmetric"],
            info["digest"],
            tls12_only=info["protocol"] == "TLSv1.2",
        )
    for code in _UNREACHABLE_BY_OPENSSL:  # legal before TLS 1.2 as well
        suites[code] = dataclasses.replace(suites[code], tls12_only=False)
    for code, name in TLS13_SUITES.items():
        suites.setdefault(code, Suite(code, name, "kx-any", "auth-any", None, None, False))
    return suites


def candidates(version: str) -> list[Suite]:
    """The suites to offer at *version*."""
    suites = catalogue().values()
    if version == "TLSv1.3":
        return [s for s in suites if s.code in TLS13_SUITES]
    return [
        s
        for s in suites
        if s.code not in TLS13_SUITES and (version == "TLSv1.2" or not s.tls12_only)
    ]


async def enumerate_suites(wire: Wire, version: str, *, max_hellos: int = 200) -> VersionSuites:
    """The suites *version* accepts, in the server's order; bounded by *max_hellos*.

    Connection failures propagate (the caller decides what the version's result is).
    """
    remaining = candidates(version)
    accepted: list[SuiteResult] = []
    first: ServerFlight | None = None
    hellos = 0
    while remaining and hellos < max_hellos:
        hellos += 1
        flight = await _offer(wire, version, [s.code for s in remaining])
        picked = _picked(flight, version, remaining)
        if picked is None:
            break
        first = first or flight
        accepted.append(_result(picked, flight))
        remaining.remove(picked)
    complete = not remaining or hellos < max_hellos
    preference = None
    if len(accepted) > 1 and hellos < max_hellos:
        reverse = [r.suite.code for r in reversed(accepted)]
        flight = await _offer(wire, version, reverse)
        preference = "client" if flight.cipher == reverse[0] else "server"
    return VersionSuites(
        version=version,
        suites=tuple(accepted),
        preference=preference,
        complete=complete,
        first=first,
    )


async def enumerate_groups(
    wire: Wire, version: str, suites: Sequence[Suite]
) -> tuple[tuple[str, ...], str | None]:
    """The groups the server accepts at *version* (TLS 1.3: all; TLS 1.2: ECDHE curves), and
    the one it picks from this OpenSSL's default offer (X25519 key share first)."""
    codes = [s.code for s in suites]
    if version == "TLSv1.3":
        names = list(GROUPS)
    else:
        codes = [s.code for s in suites if s.kea == "kx-ecdhe"]
        names = list(TLS12_GROUPS)
    if not codes:
        return (), None

    async def accepts(name: str) -> bool:
        hello = client_hello(
            version, codes, server_name=wire.server_name, groups=[GROUPS[name]], key_shares=()
        )
        return _group_of(await wire.exchange(hello), suites) == GROUPS[name]

    found = await asyncio.gather(*(accepts(name) for name in names))
    accepted = tuple(name for name, ok in zip(names, found, strict=True) if ok)
    preferred = await wire.exchange(
        client_hello(version, codes, server_name=wire.server_name, groups=default_groups())
    )
    code = _group_of(preferred, suites)
    return accepted, GROUP_NAMES.get(code, f"0x{code:04X}") if code is not None else None


def default_groups() -> list[int]:
    """The groups this OpenSSL offers by default, in its order (3.5 puts ML-KEM first)."""
    names = list(GROUPS)[:10]
    if ssl.OPENSSL_VERSION_INFO >= (3, 5):
        names = ["X25519MLKEM768", *names]
    return [GROUPS[name] for name in names]


async def _offer(wire: Wire, version: str, codes: list[int]) -> ServerFlight:
    return await wire.exchange(client_hello(version, codes, server_name=wire.server_name))


def _picked(flight: ServerFlight, version: str, offered: list[Suite]) -> Suite | None:
    """The suite the server chose from *offered* at exactly *version*, if it did."""
    if not flight.chosen or flight.version != WIRE_VERSIONS[version]:
        return None
    return next((s for s in offered if s.code == flight.cipher), None)


def _result(suite: Suite, flight: ServerFlight) -> SuiteResult:
    if flight.group is not None:  # TLS 1.3: the key share's group
        return SuiteResult(suite, group=GROUP_NAMES.get(flight.group, f"0x{flight.group:04X}"))
    if flight.key_exchange is None:
        return SuiteResult(suite)
    group, bits = key_exchange_facts(flight.key_exchange, suite.kea)
    name = None if group is None else GROUP_NAMES.get(group, f"0x{group:04X}")
    return SuiteResult(suite, group=name, dh_bits=bits)


def _group_of(flight: ServerFlight, suites: Sequence[Suite]) -> int | None:
    if not flight.chosen:
        return None
    if flight.group is not None:
        return flight.group
    suite = next((s for s in suites if s.code == flight.cipher), None)
    if suite is None or flight.key_exchange is None:
        return None
    return key_exchange_facts(flight.key_exchange, suite.kea)[0]
