"""The error boundary: `ssl`, `OSError` and asyncio exceptions become asyncsp's, chained."""

from __future__ import annotations

import asyncio
import ssl
from typing import NoReturn

from ._errors import (
    AsyncspError,
    CertificateVerificationError,
    ConnectError,
    ProtocolNotAllowedError,
    TimeoutError,
    TlsError,
)
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


def translate_connect_error(
    exc: BaseException, endpoint: str, *, during_tls: bool, timeout: float | None = None
) -> AsyncspError:
    """The asyncsp error for *exc*, raised while connecting to or handshaking with *endpoint*.

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
        if reason in _VERSION_REASONS:
            return ProtocolNotAllowedError(
                f"{endpoint}: no TLS version that both the server and the policy allow "
                f"({reason}); a legacy server may need an explicit opt-out",
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


def raise_connect_error(
    exc: BaseException, endpoint: str, *, during_tls: bool, timeout: float | None = None
) -> NoReturn:
    """Raise `translate_connect_error`'s result, chained to *exc*.

    An error that already has a cause (a validator's exception) keeps it.
    """
    error = translate_connect_error(exc, endpoint, during_tls=during_tls, timeout=timeout)
    if error is exc:
        raise error
    raise error from (error.__cause__ or exc)
