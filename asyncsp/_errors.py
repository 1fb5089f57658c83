"""The exception tree: one root, leaves that also inherit the stdlib type a user would catch.

Every error raised to a caller is one of these. Errors that concern a connection carry the
endpoint (``"https://host:port"``) in ``endpoint`` and name it in their message; none of them
ever holds a password.

Every change to what a caller catches (a new error, a new base, what an error carries)
belongs in this file; this module imports nothing of asyncsp, so every layer may raise
from it.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Protocol

__all__ = [
    "AsyncspError",
    "BodyTooLargeError",
    "CertificateVerificationError",
    "ConnectError",
    "ConnectionClosedError",
    "FtpArgumentError",
    "FtpError",
    "FtpProtocolError",
    "FtpReplyError",
    "HttpArgumentError",
    "HttpError",
    "InsecurePolicyWarning",
    "InvalidHostNameError",
    "InvalidSecurityProtocolError",
    "ManagerClosedError",
    "PinMismatchError",
    "PolicyError",
    "ProtocolNotAllowedError",
    "ProxyError",
    "ReadLimitError",
    "SmtpArgumentError",
    "SmtpError",
    "SmtpProtocolError",
    "SmtpRecipientsRefused",
    "SmtpReplyError",
    "StartTlsUnavailableError",
    "TimeoutError",
    "TlsError",
    "UnexpectedPlaintextError",
]


class AsyncspError(Exception):
    """The root of every error asyncsp raises.

    ``endpoint`` is the normalised address of the service point involved, or ``None``.
    """

    def __init__(self, message: str, *, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class InvalidSecurityProtocolError(AsyncspError, ValueError):
    """A `SecurityProtocol` value or spelling that names no valid set of versions."""


class InvalidHostNameError(AsyncspError, ValueError):
    """A host name that cannot be encoded (IDNA 2008, UTS #46) or names no host; refused before
    any lookup."""


class PolicyError(AsyncspError, ValueError):
    """A `TlsPolicy` (or manager setting) that cannot be built as given."""


class ManagerClosedError(AsyncspError):
    """The `ConnectionManager` was closed while this operation was waiting or running."""


class ConnectError(AsyncspError, ConnectionError):
    """The TCP connection could not be made (refused, unreachable, name not resolved)."""


class ProxyError(ConnectError):
    """The HTTP proxy would not carry the connection: it is unreachable, answered ``CONNECT``
    with anything but 2xx (``status``), answered malformed, or sent bytes before the TLS
    handshake. ``proxy`` is its URL without credentials."""

    def __init__(
        self,
        message: str,
        *,
        endpoint: str | None = None,
        proxy: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message, endpoint=endpoint)
        self.proxy = proxy
        self.status = status


class ConnectionClosedError(AsyncspError, ConnectionError):
    """The peer closed or reset an established connection; ``partial`` holds unread bytes."""

    def __init__(
        self, message: str, *, endpoint: str | None = None, partial: bytes | None = None
    ) -> None:
        super().__init__(message, endpoint=endpoint)
        self.partial = partial


class ReadLimitError(AsyncspError, ValueError):
    """The peer sent a line (or reply) longer than the limit the reader accepts."""


class TimeoutError(AsyncspError, builtins.TimeoutError):
    """A step (connect, handshake, reply, read) did not finish within its timeout."""


class TlsError(AsyncspError):
    """The TLS layer failed or refused the connection."""


class CertificateVerificationError(TlsError):
    """The peer's certificate was refused: untrusted, wrong host, revoked, or by the validator."""


class ProtocolNotAllowedError(TlsError):
    """The negotiated TLS version is outside the policy's explicit `protocols` set."""


class PinMismatchError(TlsError):
    """The peer's leaf certificate matches none of the policy's pins."""


class UnexpectedPlaintextError(TlsError):
    """The peer sent something that is not TLS where a TLS handshake was due: a plain-text
    server, or bytes injected after a STARTTLS go-ahead (the SMTP and FTP layers report the
    latter as their protocol error)."""


class StartTlsUnavailableError(TlsError):
    """The server will not start TLS (no STARTTLS, ``AUTH TLS`` refused); nothing went in clear."""


class HttpArgumentError(AsyncspError, ValueError):
    """A method or header field that cannot go on the wire as given; nothing was sent."""


class HttpError(AsyncspError):
    """An HTTP exchange failed after the request was sent."""


class BodyTooLargeError(HttpError):
    """A response body exceeded the manager's ``max_body_size`` (counted after decoding)."""


class SmtpError(AsyncspError):
    """An SMTP session failed."""


class SmtpReplyError(SmtpError):
    """The SMTP server answered a command with an error reply."""

    def __init__(self, code: int, message: str, *, endpoint: str | None = None) -> None:
        where = f" from {endpoint}" if endpoint else ""
        super().__init__(f"SMTP reply {code}{where}: {message}", endpoint=endpoint)
        self.code = code
        self.message = message


class Reply(Protocol):
    """A server's reply as errors carry it (`asyncsp.SmtpReply` is one)."""

    @property
    def code(self) -> int: ...

    @property
    def message(self) -> str: ...


class SmtpRecipientsRefused(SmtpError):
    """Every recipient of a message was refused; ``refused`` maps each to its reply."""

    def __init__(self, refused: Mapping[str, Reply], *, endpoint: str | None = None) -> None:
        super().__init__(
            f"all {len(refused)} recipient(s) refused by {endpoint or 'the server'}",
            endpoint=endpoint,
        )
        self.refused: dict[str, Reply] = dict(refused)


class SmtpProtocolError(SmtpError):
    """The SMTP server sent something that breaks the protocol (malformed, oversized, injected)."""


class SmtpArgumentError(SmtpError, ValueError):
    """An address, argument or header that cannot go on the wire safely; nothing was sent."""


class FtpError(AsyncspError):
    """An FTP session failed."""


class FtpReplyError(FtpError):
    """The FTP server answered a command with an error reply."""

    def __init__(self, code: int, message: str, *, endpoint: str | None = None) -> None:
        where = f" from {endpoint}" if endpoint else ""
        super().__init__(f"FTP reply {code}{where}: {message}", endpoint=endpoint)
        self.code = code
        self.message = message


class FtpProtocolError(FtpError):
    """The FTP server sent something that breaks the protocol, or a transfer ended dishonestly."""


class FtpArgumentError(FtpError, ValueError):
    """A path or argument that cannot go on the wire safely (CR, LF or NUL); nothing was sent."""


class InsecurePolicyWarning(UserWarning):
    """A policy turns a protection off (legacy crypto, no verification). Explicit, never silent."""
