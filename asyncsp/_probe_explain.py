"""Why a probe's handshake failed, in a few words, with a remedy only where it is the right one.

OpenSSL's verification message says what failed; the remedy depends on why. A leaf key below
the security level is not fixed by trusting another CA, and a server that does not send its
intermediate is the server's to fix, not the client's: only an unknown root gets ``--cafile``.
"""

from __future__ import annotations

import ssl

from ._certinfo import ChainReport
from ._errors import AsyncspError, CertificateVerificationError, TlsError
from ._probe_wire import NotTls, Silent

__all__ = ["explain", "explain_untrusted", "explain_wire", "verify_message"]

_UNKNOWN_ISSUER = ("unable to get local issuer certificate", "unable to get issuer certificate")
_HINTS = {
    "self-signed certificate in certificate chain": (
        "the chain ends at a root this machine does not trust; --cafile trusts a CA"
    ),
    "self-signed certificate": "the server's certificate is its own issuer; --cafile trusts it",
    "self signed certificate": "the server's certificate is its own issuer; --cafile trusts it",
    "key too weak": "the key is below strong crypto's security level, whoever issued it",
    "digest algorithm too weak": "signed with a digest strong crypto refuses",
    "md too weak": "signed with a digest strong crypto refuses",
}
"""Remedies by a fragment of OpenSSL's verification message (X509_verify_cert_error_string)."""


def verify_message(exc: CertificateVerificationError) -> str | None:
    """OpenSSL's verification message, if the refusal came from the chain's verification."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_message:
        return str(cause.verify_message)
    return None


def explain_untrusted(
    exc: CertificateVerificationError,
    address: str | None = None,
    *,
    chain: ChainReport | None = None,
    own_cas: bool = False,
) -> str:
    """Why the certificate was refused, in OpenSSL's words, with the remedy that fits.

    *chain* is what the server sent, when the probe saw it; *own_cas* says the user named the
    CAs to trust (``--cafile``), so an unknown issuer is then the server's missing link.
    """
    message = verify_message(exc)
    if message is None:
        return explain(exc, address)
    lowered = message.lower()
    if lowered in _UNKNOWN_ISSUER:
        return f"{message} ({_unknown_issuer(chain, own_cas)})"
    for fragment, hint in _HINTS.items():
        if fragment in lowered:
            return f"{message} ({hint})"
    return message


def _unknown_issuer(chain: ChainReport | None, own_cas: bool) -> str:
    top = chain.top if chain else None
    if top is None:
        return "an issuer this machine does not know; --cafile trusts a CA"
    ends = f"its chain ends at {top.subject}, issued by {top.issuer}"
    if own_cas:
        return f"the server does not send its intermediate: {ends}, which it does not send"
    return (
        f"{ends}, which the server does not send and this machine does not trust: the server "
        "does not send its intermediate, or the CA is private (--cafile trusts a CA)"
    )


def explain(exc: AsyncspError, address: str | None = None) -> str:
    """A short reason: OpenSSL's reason code for a refused handshake, else the message.

    The server is named by *address* (``smtp://h:25``, what the user asked for) where the
    message names the raw service point the command's stream used (``tcp://h:25``).
    """
    cause = exc.__cause__
    if not isinstance(exc, CertificateVerificationError) and isinstance(exc, TlsError):
        if isinstance(cause, ssl.SSLError) and cause.reason:
            return f"handshake refused ({cause.reason})"
        if isinstance(cause, OSError) and not isinstance(cause, ssl.SSLError):
            return f"the server closed the connection in the handshake ({type(cause).__name__})"
    text = str(exc)
    if exc.endpoint:
        shown = address or exc.endpoint
        text = text.replace(exc.endpoint, shown)
        if text.startswith(f"{shown}: "):
            text = text[len(shown) + 2 :]
    return text


def explain_wire(exc: Exception, address: str, timeout: float) -> str:
    """What a bare ClientHello's failure says about the port."""
    if isinstance(exc, NotTls):
        return exc.describe()
    if isinstance(exc, Silent):
        return f"no answer: the port took the connection and said nothing within {timeout:g} s"
    if isinstance(exc, AsyncspError):
        return explain(exc, address)
    return f"{type(exc).__name__}: {exc}"
