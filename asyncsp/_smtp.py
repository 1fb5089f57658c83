"""SMTP client on asyncsp streams: STARTTLS done right, AUTH only under TLS, pipelining, pooling.

Every change to what an SMTP user calls (``mgr.smtp``, `SmtpClient`, how a message becomes
bytes) belongs in this file; the protocol's rules belong in ``_smtp_protocol.py`` and its I/O
loop in ``_smtp_connection.py``.

The protocol lives in ``_smtp_protocol.py`` (sans I/O) and the loop around it in
``_smtp_connection.py``; this module is the public face. A session runs on a `Stream` from the
service point ``smtp://host:port`` (``smtps://`` for implicit TLS), so connect, handshake,
verification, limits and statistics are the core's. Sessions go back to the service point's
pool keyed by security, local name and credentials (the password only as a keyed hash), and
the next `ConnectionManager.smtp` to the same endpoint with the same credentials reuses one.
"""

from __future__ import annotations

import copy
import email.errors
import email.generator
import email.message
import email.policy
import email.utils
import io
import re
import types
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from ._credentials import credential_digest
from ._errors import SmtpArgumentError, SmtpError
from ._session_args import SessionKind
from ._smtp_connection import DEFAULT_STEP_TIMEOUT, SmtpConnection
from ._smtp_protocol import (
    Command,
    SendResult,
    SmtpReply,
    check_argument,
    normalise_line_ends,
)
from ._streams import Stream

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager
    from types import TracebackType

    from ._registry import ServicePointRegistry
    from ._servicepoint import ServicePoint
    from ._tls import TlsInfo

__all__ = ["SendResult", "SmtpClient", "SmtpReply", "open_smtp"]

IMPLICIT_TLS_PORT = 465
"""RFC 8314 §3.3: submission over implicit TLS; every other port starts in clear."""
SESSIONS = SessionKind("smtp", "smtps", IMPLICIT_TLS_PORT)


class SmtpClient:
    """An SMTP session from ``async with mgr.smtp(...) as client``; valid inside that block.

    `send_message` and `sendmail` send; `tls` and `extensions` tell what the session runs on.
    One task at a time: concurrent sends on one session are refused (open more sessions).
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: SmtpConnection) -> None:
        self._conn: SmtpConnection | None = conn

    def _live(self) -> SmtpConnection:
        conn = self._conn
        if conn is None:
            raise SmtpError("this SMTP session was used outside its 'async with' block")
        return conn

    def _claim(self) -> SmtpConnection:
        conn = self._live()
        if conn.busy:
            raise SmtpError(f"{conn.endpoint}: another task is using this SMTP session")
        conn.busy = True
        return conn

    @property
    def tls(self) -> TlsInfo | None:
        """What the TLS handshake negotiated (implicit or after STARTTLS), ``None`` in clear."""
        return self._live().stream.tls

    @property
    def extensions(self) -> Mapping[str, str]:
        """Upper-case EHLO keyword -> its parameter string, as offered (after TLS, if any)."""
        return types.MappingProxyType(dict(self._live().session.extensions))

    @property
    def service_point(self) -> ServicePoint:
        """The service point (``smtp://`` or ``smtps://``) the session belongs to."""
        return self._live().service_point

    async def send_message(
        self,
        msg: email.message.Message,
        sender: str | None = None,
        recipients: Iterable[str] | None = None,
    ) -> SendResult:
        """Send *msg*; sender and recipients come from its headers unless given.

        As `smtplib` does, a message with one ``Resent-`` block (RFC 5322 §3.6.6) goes to
        its ``Resent-To``/``Cc``/``Bcc`` from its ``Resent-Sender`` or ``Resent-From``.
        ``Bcc`` is never sent. A header whose serialised form would not be the header the
        message holds (a line break from an encoded word, CVE-2024-6923) is refused with
        `SmtpArgumentError` before anything is sent. SMTPUTF8 is used when an address is
        not ASCII; other non-ASCII headers go out as RFC 2047 encoded words.
        """
        resent = msg.get_all("Resent-Date", [])
        if len(resent) > 1:
            raise SmtpArgumentError("the message has more than one Resent- header block")
        prefix = "Resent-" if resent else ""
        if sender is None:
            sender = _first_address(msg, prefix + "Sender") or _first_address(msg, prefix + "From")
            if sender is None:
                raise SmtpArgumentError(f"the message has no {prefix}Sender or {prefix}From")
        if recipients is None:
            recipients = [a for h in ("To", "Cc", "Bcc") for a in _addresses(msg, prefix + h)]
        recipients = list(recipients)
        utf8 = not (sender.isascii() and all(r.isascii() for r in recipients))
        conn = self._claim()
        try:
            data = serialise_message(msg, utf8=utf8)
            return await conn.sendmail(sender, recipients, data, utf8=utf8)
        finally:
            conn.busy = False

    async def sendmail(
        self, sender: str, recipients: Iterable[str] | str, data: bytes
    ) -> SendResult:
        """Send *data* (a whole RFC 5322 message) from *sender* to *recipients* as it is.

        Line ends become CRLF and dots are stuffed; nothing else is changed. Recipients
        the server refuses are in `SendResult.refused`; when it refuses them all,
        `SmtpRecipientsRefused` (the transaction is reset and the session stays usable).
        """
        conn = self._claim()
        try:
            return await conn.sendmail(sender, recipients, data)
        finally:
            conn.busy = False

    async def login(
        self, username: str, password: str | None = None, *, oauth2_token: str | None = None
    ) -> None:
        """Authenticate (PLAIN or LOGIN, or XOAUTH2 with *oauth2_token*); only under TLS."""
        conn = self._claim()
        try:
            await conn.login(username, password, oauth2_token=oauth2_token)
        finally:
            conn.busy = False

    async def noop(self) -> SmtpReply:
        """NOOP: a round trip that proves the session alive."""
        conn = self._claim()
        try:
            return await conn.exchange(Command.NOOP)
        finally:
            conn.busy = False

    def __repr__(self) -> str:
        conn = self._conn
        if conn is None:
            return "<SmtpClient closed>"
        tls = conn.stream.tls
        user = f" user={conn.username!r}" if conn.username else ""
        return f"<SmtpClient {conn.endpoint} {tls.version if tls else 'plain'}{user}>"


class _SmtpContext:
    """What `open_smtp` returns: obtains (or opens) a session, gives it back on exit."""

    def __init__(
        self,
        manager: ServicePointRegistry,
        host: str,
        port: int,
        *,
        security: str | None,
        username: str | None,
        password: str | None,
        local_hostname: str | None,
        timeout: float | None,
    ) -> None:
        target = SESSIONS.target(host, port, security=security, timeout=timeout)
        security = target.security
        if username is not None and security == "none":
            raise SmtpError(
                "credentials are never sent over an unencrypted connection; use "
                "security='starttls' or 'tls' to log in"
            )
        if local_hostname is not None:
            check_argument(local_hostname, "local_hostname")
            if not local_hostname or " " in local_hostname:
                raise SmtpArgumentError(f"local_hostname {local_hostname!r} is not a domain")
        self._manager = manager
        self._address = target.address
        self._security = security
        self._username = username
        self._password = password or ""
        self._local_hostname = local_hostname
        self._timeout = target.timeout
        self._key = (security, local_hostname, username, credential_digest(password))
        self._conn: SmtpConnection | None = None
        self._client: SmtpClient | None = None

    def __repr__(self) -> str:
        user = f" user={self._username!r}" if self._username else ""
        return f"<smtp session context {self._address} {self._security}{user}>"

    async def __aenter__(self) -> SmtpClient:
        sp = self._manager.find_service_point(self._address)
        conn = await sp.obtain(
            reuse_key=self._key,
            tls=self._security == "tls",
            timeout=self._timeout or DEFAULT_STEP_TIMEOUT,
        )
        if isinstance(conn, Stream):
            conn.timeout = None  # every step below runs under its own limit
            smtp = SmtpConnection(conn, sp, reuse_key=self._key, timeout=self._timeout)
            try:
                await smtp.establish(
                    security=self._security,
                    local_hostname=self._local_hostname,
                    username=self._username,
                    password=self._password,
                )
            except BaseException:
                smtp.abort()
                raise
        else:
            smtp = conn
            smtp.timeout = self._timeout
        self._conn = smtp
        self._client = SmtpClient(smtp)
        return self._client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, client = self._conn, self._client
        self._conn = self._client = None
        if conn is None or client is None:
            return
        client._conn = None
        # A cancellation (or any BaseException) may have cut an exchange in half: close.
        failed = exc is not None and not isinstance(exc, Exception)
        await conn.release(failed=failed)


def open_smtp(
    manager: ServicePointRegistry,
    host: str,
    port: int = 587,
    *,
    security: str | None = None,
    username: str | None = None,
    password: str | None = None,
    local_hostname: str | None = None,
    timeout: float | None = None,
) -> AbstractAsyncContextManager[SmtpClient]:
    """``async with mgr.smtp(host) as client:`` a pooled SMTP session (see `SmtpClient`).

    *security* is ``"starttls"`` (required; the default on every port but 465), ``"tls"``
    (implicit; the default for 465) or ``"none"``. Credentials never cross in clear.
    *timeout* bounds every step, each complete reply included; ``None`` uses RFC 5321
    §4.5.3.2's limits (5 minutes for most replies, 10 for the one after the message content).
    The session comes from the ``smtp://host:port`` (``smtps://``) service point's pool and
    goes back to it, reset, when the block ends.
    """
    return _SmtpContext(
        manager,
        host,
        port,
        security=security,
        username=username,
        password=password,
        local_hostname=local_hostname,
        timeout=timeout,
    )


# -- helpers -------------------------------------------------------------------------------


def _addresses(msg: email.message.Message, header: str) -> list[str]:
    values = [str(v) for v in msg.get_all(header, [])]
    return [addr for _, addr in email.utils.getaddresses(values) if addr]


def _first_address(msg: email.message.Message, header: str) -> str | None:
    found = _addresses(msg, header)
    return found[0] if found else None


def serialise_message(msg: email.message.Message, *, utf8: bool) -> bytes:
    """*msg* as bytes with CRLF line ends and without ``Bcc``, checked header by header.

    The check guards against CVE-2024-6923: the standard library's generator can turn an
    encoded word holding a line break into a raw one, which would put a header line (or
    the end of a header block) on the wire that the message never had. Every header of
    every part (MIME sub-parts and attached messages included) must serialise as exactly one
    field of its own name, or nothing is sent.
    """
    msg = copy.copy(msg)
    for name in ("Bcc", "Resent-Bcc"):
        del msg[name]
    policy = msg.policy.clone(linesep="\r\n")
    if utf8 and isinstance(policy, email.policy.EmailPolicy):
        policy = policy.clone(utf8=True)
    buffer = io.BytesIO()
    try:
        email.generator.BytesGenerator(buffer, policy=policy).flatten(msg, unixfrom=False)
    except email.errors.MessageError as exc:  # compat32 refusing an embedded header, and such
        raise SmtpArgumentError(
            f"the message cannot be serialised safely ({exc}); refused before anything was sent"
        ) from exc
    # After flattening: the generator may have added headers (a boundary) on its way.
    for part in msg.walk():
        for name, value in part.raw_items():
            _check_field(name, policy.fold_binary(name, value))
    return buffer.getvalue()


_FIELD_NAME = re.compile(rb"[!-9;-~]+")
"""RFC 5322 §3.6.8: a field name is printable ASCII without the colon."""


def _check_field(name: str, folded: bytes) -> None:
    """Refuse a header whose wire form is not one field named *name* (CVE-2024-6923)."""
    raw_name = name.encode("utf-8", "surrogateescape")
    # Judge the lines as the server will see them: with every lone CR and LF a line end.
    first, *continued, last = normalise_line_ends(folded).split(b"\r\n")
    if (
        _FIELD_NAME.fullmatch(raw_name)
        and first[: len(raw_name) + 1].lower() == raw_name.lower() + b":"
        and all(line[:1] in (b" ", b"\t") for line in continued)
        and last == b""
    ):
        return
    raise SmtpArgumentError(
        f"the message's header {name!r} would be sent as a different header or break its "
        "header block (a line break in an encoded word? CVE-2024-6923); refused before "
        "anything was sent"
    )
