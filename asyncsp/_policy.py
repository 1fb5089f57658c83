"""`TlsPolicy`, the immutable TLS snapshot; `asyncsp._contexts` turns it into an SSLContext."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import ssl
import string
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._errors import InvalidSecurityProtocolError, PolicyError
from ._protocols import SecurityProtocol
from ._system import SystemTlsConfig, system_tls_config, version_name

if TYPE_CHECKING:
    from ._tls import TlsInfo

__all__ = ["TlsPolicy"]

# Suites no policy with strong_crypto=True may ever offer, even with a custom cipher string.
_WEAK_SUITES = "!aNULL:!eNULL:!EXPORT:!DES:!3DES:!RC4:!MD5:!PSK:!SRP"
STRONG_CIPHERS = "ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM"
"""The TLS 1.2 suites of strong crypto: CPython's own default list (3.10 and later), set
explicitly because some builds (Debian's, ``--with-ssl-default-suites=openssl``) leave
OpenSSL's much longer DEFAULT list, CBC with SHA-1 included, in its place."""
STRONG_SECURITY_LEVEL = 2
"""OpenSSL security level of strong crypto: 112-bit keys at the least, no SHA-1 signatures."""
LEGACY_CIPHERS = "DEFAULT"
"""The opt-out's suites; OpenSSL 3 refuses TLS 1.0/1.1 (SHA-1 signatures) above security
level 0, so the opt-out runs at level 0 unless the system sets one."""
_LEGACY_VERSIONS = SecurityProtocol.TLS | SecurityProtocol.TLS11
_HEX = frozenset(string.hexdigits.lower())

PathLike = str | os.PathLike[str]
Validator = Callable[["TlsInfo", bytes], bool]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TlsPolicy:
    """What a new TLS connection may do, as an immutable, hashable snapshot.

    A connection is made under exactly one policy and keeps it for its life; changing a
    manager's policy reaches new connections only. Vary a policy with `dataclasses.replace`.
    Invalid settings raise `PolicyError` here, when the policy is made, never at the first
    connection.
    """

    protocols: SecurityProtocol = SecurityProtocol.SYSTEM_DEFAULT
    """The versions allowed; ``SYSTEM_DEFAULT`` lets OpenSSL choose (TLS 1.2 and 1.3 today)."""
    strong_crypto: bool = True
    """Secure suites and TLS 1.2 at the least; ``False`` is the warned legacy opt-out."""
    verify: bool = True
    """Verify the certificate chain and host name; ``False`` warns with InsecurePolicyWarning."""
    cafile: PathLike | None = None
    """PEM file of trusted CAs, used instead of the system store."""
    cadata: str | bytes | None = None
    """PEM text or DER bytes of trusted CAs, used instead of the system store."""
    client_cert: tuple[str, str | None] | None = None
    """(certificate file, key file or None) presented to servers that ask."""
    pins: frozenset[str] = frozenset()
    """Lower-case hex SHA-256 digests of accepted leaf certificates (DER); empty = no pinning."""
    ciphers: str | None = None
    """An OpenSSL cipher string for TLS 1.2 and below; weak suites stay excluded."""
    alpn: tuple[str, ...] = ()
    """ALPN protocol names offered, in preference order."""
    resume_sessions: bool = True
    """Resume TLS sessions per service point (never across endpoints or policies)."""
    crlfile: PathLike | None = None
    """PEM CRL file; a leaf listed as revoked there is refused."""
    validator: Validator | None = None
    """Called after every built-in check with (TlsInfo, leaf DER); can only refuse."""
    trust: str | tuple[str, ...] | None = None
    """Where trust comes from: ``"system"`` (OpenSSL's default paths, ``SSL_CERT_FILE`` and
    ``SSL_CERT_DIR`` honoured), ``"certifi"`` (the certifi package's bundle) or both, as a
    tuple; `cafile`/`cadata` add to it. ``None`` (the default): the system store, or only
    `cafile`/`cadata` when either is given."""

    def __post_init__(self) -> None:
        try:
            protocols = SecurityProtocol.validate(self.protocols)
        except InvalidSecurityProtocolError as exc:
            raise PolicyError(f"TlsPolicy.protocols: {exc}") from exc
        object.__setattr__(self, "protocols", protocols)
        if protocols & SecurityProtocol.SSL3:
            raise PolicyError(
                "TlsPolicy.protocols: SSL 3.0 is not available with this OpenSSL and is broken "
                "(POODLE); use TLS12 or TLS13"
            )
        if self.strong_crypto and protocols & _LEGACY_VERSIONS:
            raise PolicyError(
                f"TlsPolicy.protocols={protocols!r} asks for TLS 1.0/1.1, which strong_crypto "
                "forbids; to reach a legacy peer opt out explicitly with strong_crypto=False "
                "(or ASYNCSP_STRONG_CRYPTO=0)"
            )
        for name in ("strong_crypto", "verify", "resume_sessions"):
            if not isinstance(getattr(self, name), bool):
                raise PolicyError(f"TlsPolicy.{name} must be a bool")
        _check_file("cafile", self.cafile)
        _check_file("crlfile", self.crlfile)
        object.__setattr__(self, "trust", _normalise_trust(self.trust))
        if self.cadata is not None and not isinstance(self.cadata, str | bytes):
            raise PolicyError("TlsPolicy.cadata must be PEM text (str) or DER bytes")
        if self.client_cert is not None:
            if not (isinstance(self.client_cert, tuple) and len(self.client_cert) == 2):
                raise PolicyError("TlsPolicy.client_cert must be (certfile, keyfile or None)")
            _check_file("client_cert certificate", self.client_cert[0])
            _check_file("client_cert key", self.client_cert[1])
        object.__setattr__(self, "pins", _normalise_pins(self.pins))
        if isinstance(self.alpn, str) or not all(
            isinstance(p, str) and 0 < len(p.encode()) < 256 for p in self.alpn
        ):
            raise PolicyError("TlsPolicy.alpn must be a tuple of names such as ('h2', 'http/1.1')")
        object.__setattr__(self, "alpn", tuple(self.alpn))
        if self.ciphers is not None:
            if not isinstance(self.ciphers, str):
                raise PolicyError("TlsPolicy.ciphers must be an OpenSSL cipher string")
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ciphers(cipher_string(self))
            except ssl.SSLError as exc:
                raise PolicyError(
                    f"TlsPolicy.ciphers={self.ciphers!r} selects no usable cipher"
                    + (" once weak suites are excluded" if self.strong_crypto else "")
                    + "; see `openssl ciphers -v` for valid names"
                ) from exc
        if self.validator is not None and not callable(self.validator):
            raise PolicyError("TlsPolicy.validator must be callable (TlsInfo, bytes) -> bool")

    def ssl_context(self) -> ssl.SSLContext:
        """The `ssl.SSLContext` for this policy: built once, shared by every equal policy.

        The returned context must not be modified. Building one reads CA files and may take
        tens of milliseconds; async code can call this through ``anyio.to_thread.run_sync``.
        """
        from ._contexts import context_for  # the factory imports this module

        return context_for(self)

    def offered_versions(self) -> SecurityProtocol:
        """The versions a new connection under this policy offers on this machine.

        The policy's set (TLS 1.2 and 1.3 for ``SYSTEM_DEFAULT``) less what the system's
        OpenSSL configuration forbids; `PolicyError` when it forbids them all.
        """
        low, high = version_bounds(self, system_tls_config())
        wanted = (
            self.protocols if self.is_explicit else SecurityProtocol.TLS12 | SecurityProtocol.TLS13
        )
        offered = SecurityProtocol.SYSTEM_DEFAULT
        for member in wanted.members:
            if low <= member.tls_version and (high is None or member.tls_version <= high):
                offered |= member
        return offered

    @property
    def is_explicit(self) -> bool:
        """Whether `protocols` is an explicit set checked after every handshake."""
        return self.protocols != SecurityProtocol.SYSTEM_DEFAULT

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{f.name}={_shown(f.name, getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        )
        return f"TlsPolicy({fields})"


def _shown(name: str, value: object) -> str:
    """A field as `TlsPolicy`'s repr shows it: trust given inline is summed up, not dumped
    (the repr is in every handshake's DEBUG record)."""
    if name == "cadata" and isinstance(value, str):
        return f"<PEM, {value.count('-----BEGIN CERTIFICATE-----')} certificate(s)>"
    if name == "cadata" and isinstance(value, bytes):
        return f"<DER, {len(value)} bytes>"
    return repr(value)


def cipher_string(policy: TlsPolicy, system: SystemTlsConfig | None = None) -> str:
    """The cipher string (TLS 1.2 and older) of *policy*'s context, with its security level.

    The system's security level is a floor for strong crypto; the opt-out runs at level 0
    unless the administrator's configuration names a level (then that one holds).
    """
    system_level = system.security_level if system is not None else None
    if policy.strong_crypto:
        base = f"{policy.ciphers}:{_WEAK_SUITES}" if policy.ciphers else STRONG_CIPHERS
        level = max(STRONG_SECURITY_LEVEL, system_level or 0)
    else:
        base = policy.ciphers or LEGACY_CIPHERS
        chosen = system is not None and system.sets_security_level
        level = (system_level or 0) if chosen else 0
    # The last @SECLEVEL wins: a custom string cannot change the level.
    return f"{base}:@SECLEVEL={level}"


def version_bounds(
    policy: TlsPolicy, system: SystemTlsConfig
) -> tuple[ssl.TLSVersion, ssl.TLSVersion | None]:
    """The oldest and newest version a context of *policy* offers on this system.

    asyncsp's own range (the explicit set's span; TLS 1.2 and up for ``SYSTEM_DEFAULT``)
    narrowed by the system's ``MinProtocol``/``MaxProtocol``; ``None`` as the newest means the
    newest the library supports. A range the system forbids entirely is a `PolicyError`.
    """
    if policy.is_explicit:
        members = policy.protocols.members
        low, high = members[0].tls_version, members[-1].tls_version
    else:
        low, high = ssl.TLSVersion.TLSv1_2, None
    if system.min_version is not None and system.min_version > low:
        low = system.min_version
    if system.max_version is not None and (high is None or system.max_version < high):
        high = system.max_version
    if high is not None and low > high:
        raise PolicyError(
            f"TlsPolicy.protocols={policy.protocols!r}: the system's OpenSSL configuration "
            f"allows none of these versions ({_system_bounds(system)}); ask for a version "
            "it allows, or have the administrator change the configuration"
        )
    return low, high


def _system_bounds(system: SystemTlsConfig) -> str:
    said = []
    if system.min_version is not None:
        said.append(
            f"{version_name(system.min_version)} at the oldest, {system.describe('MinProtocol')}"
        )
    if system.max_version is not None:
        said.append(
            f"{version_name(system.max_version)} at the newest, {system.describe('MaxProtocol')}"
        )
    return "; ".join(said)


def _check_file(field: str, path: object) -> None:
    if path is None:
        return
    if not isinstance(path, str | os.PathLike):
        raise PolicyError(f"TlsPolicy.{field} must be a path, not {type(path).__name__}")
    if not os.path.isfile(path):
        raise PolicyError(f"TlsPolicy.{field}: no such file {os.fspath(path)!r}")


TRUST_SOURCES = ("system", "certifi")


def _normalise_trust(trust: object) -> tuple[str, ...] | None:
    if trust is None:
        return None
    sources = (trust,) if isinstance(trust, str) else trust
    if not isinstance(sources, tuple | list) or not sources:
        raise PolicyError(
            "TlsPolicy.trust must be 'system', 'certifi' or a tuple of them, such as "
            "('system', 'certifi')"
        )
    for source in sources:
        if source not in TRUST_SOURCES:
            raise PolicyError(
                f"TlsPolicy.trust: unknown source {source!r}; use 'system', 'certifi' or both"
            )
    if "certifi" in sources and importlib.util.find_spec("certifi") is None:
        raise PolicyError(
            "TlsPolicy.trust='certifi' needs the certifi package: pip install certifi "
            "(or pip install 'asyncsp[certifi]')"
        )
    return tuple(dict.fromkeys(sources))  # in order, once each


def trust_locations(policy: TlsPolicy) -> tuple[bool, str | None]:
    """Whether the system store is trusted, and the certifi bundle's path if it is."""
    if policy.trust is None:
        return policy.cafile is None and policy.cadata is None, None
    bundle = None
    if "certifi" in policy.trust:
        import certifi  # checked when the policy was made

        bundle = certifi.where()
    return "system" in policy.trust, bundle


def _normalise_pins(pins: object) -> frozenset[str]:
    if isinstance(pins, str) or not isinstance(pins, frozenset | set | tuple | list):
        raise PolicyError("TlsPolicy.pins must be a frozenset of hex SHA-256 digests")
    result = set()
    for pin in pins:
        digest = pin.replace(":", "").lower() if isinstance(pin, str) else ""
        if len(digest) != 64 or not set(digest) <= _HEX:
            raise PolicyError(
                f"TlsPolicy.pins: {pin!r} is not a SHA-256 digest (64 hex digits of the leaf "
                "certificate's DER, e.g. from `openssl x509 -outform der | sha256sum`)"
            )
        result.add(digest)
    return frozenset(result)
