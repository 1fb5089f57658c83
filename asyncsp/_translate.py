"""The error boundary: `ssl`, `OSError` and asyncio exceptions become asyncsp's, chained."""

from __future__ import annotations

import asyncio
import ssl
from typing import NoReturn

from ._errors import (
    AsyncspError,
    CertificateVerificationError,
    ConnectError,
    PolicyError,
    ProtocolNotAllowedError,
    TimeoutError,
    TlsError,
    UnexpectedPlaintextError,
)
from ._policy import TlsPolicy
from ._protocols import SecurityProtocol
from ._system import system_tls_config, version_name
from ._tls import HandshakeRefused

__all__ = ["raise_connect_error", "translate_connect_error"]

# OpenSSL reasons that mean "no TLS version both sides allow".
_VERSION_REASONS = frozenset(
    {
        "UNSUPPORTED_PROTOCOL",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "WRONG_SSL_VERSION",
        "NO_PROTOCOLS_AVAILABLE",
        "VERSION_TOO_LOW",
        "VERSION_TOO_HIGH",
    }
)


# OpenSSL reasons that mean "the peer's bytes are not TLS records".
_NOT_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST"})


def translate_connect_error(
    exc: BaseException,
    endpoint: str,
    *,
    during_tls: bool,
    timeout: float | None = None,
    policy: TlsPolicy | None = None,
) -> AsyncspError:
    """The asyncsp error for *exc*, raised while connecting to or handshaking with *endpoint*
    under *policy* (when known: a refusal then says whether the system's bounds are why).

    The caller raises the result ``from exc``.
    """
    if isinstance(exc, AsyncspError):
        return exc
    if isinstance(exc, HandshakeRefused):
        return exc.error
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or str(exc)
        hint = (
            "; the certificate was revoked"
            if "revoked" in str(detail).lower()
            else "; trust its CA with TlsPolicy(cafile=...) if it is yours"
        )
        return CertificateVerificationError(
            f"{endpoint}: certificate verification failed: {detail}{hint}", endpoint=endpoint
        )
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in _NOT_TLS_REASONS:
            return UnexpectedPlaintextError(
                f"{endpoint} answered the TLS handshake with something that is not TLS "
                f"({reason}): a plain-text server, or bytes injected before the handshake",
                endpoint=endpoint,
            )
        if reason in _VERSION_REASONS:
            return ProtocolNotAllowedError(
                f"{endpoint}: no TLS version that both the server and the policy allow "
                f"({reason}){_system_bounds_note(policy)}",
                endpoint=endpoint,
            )
        return TlsError(f"{endpoint}: TLS handshake failed: {reason or exc}", endpoint=endpoint)
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        step = "the TLS handshake" if during_tls else "connecting"
        limit = f" within {timeout} s" if timeout is not None else ""
        return TimeoutError(f"{endpoint}: {step} did not finish{limit}", endpoint=endpoint)
    if isinstance(exc, OSError):
        detail = exc.strerror or str(exc) or type(exc).__name__
        if during_tls:
            return TlsError(
                f"{endpoint}: the server closed the connection during the TLS handshake "
                f"({detail}); it may allow no TLS version or suite the policy allows",
                endpoint=endpoint,
            )
        return ConnectError(f"cannot connect to {endpoint}: {detail}", endpoint=endpoint)
    return AsyncspError(f"{endpoint}: {type(exc).__name__}: {exc}", endpoint=endpoint)


def _system_bounds_note(policy: TlsPolicy | None) -> str:
    """Why a version was refused when the system's bounds narrowed *policy*, else the hint."""
    system = system_tls_config()
    own = TlsPolicy() if policy is None else policy
    wanted = own.protocols if own.is_explicit else SecurityProtocol.TLS12 | SecurityProtocol.TLS13
    try:
        narrowed = own.offered_versions() != wanted
    except PolicyError:
        narrowed = True
    bounds = [
        f"{version_name(version)} at the {side}, {system.describe(setting)}"
        for version, side, setting in (
            (system.min_version, "oldest", "MinProtocol"),
            (system.max_version, "newest", "MaxProtocol"),
        )
        if version is not None
    ]
    if not narrowed or not bounds:
        return "; a legacy server may need an explicit opt-out"
    return "; the system's OpenSSL configuration allows " + " and ".join(bounds)


def raise_connect_error(
    exc: BaseException,
    endpoint: str,
    *,
    during_tls: bool,
    timeout: float | None = None,
    policy: TlsPolicy | None = None,
) -> NoReturn:
    """Raise `translate_connect_error`'s result, chained to *exc*.

    An error that already has a cause (a validator's exception) keeps it.
    """
    error = translate_connect_error(
        exc, endpoint, during_tls=during_tls, timeout=timeout, policy=policy
    )
    if error is exc:
        raise error
    raise error from (error.__cause__ or exc)
