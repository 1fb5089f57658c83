"""The plain-text dialogues before TLS, for ``asyncsp probe`` and ``asyncsp smtp-check``.

SMTP (RFC 3207) and FTP (RFC 4217) start TLS after a few lines in clear. These loops drive
the SMTP and FTP layers' sans-I/O protocol cores over a `Stream` up to the server's go-ahead,
refuse any byte that arrives between the go-ahead and the handshake, and then call
`Stream.start_tls`, so the handshake is asyncsp's own.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import ipaddress
from collections.abc import AsyncIterator

from ._errors import (
    AsyncspError,
    FtpProtocolError,
    FtpReplyError,
    SmtpProtocolError,
    SmtpReplyError,
    StartTlsUnavailableError,
    TimeoutError,
)
from ._ftp_protocol import FtpReply
from ._ftp_protocol import ReplyParser as FtpReplyParser
from ._ftp_protocol import encode_command as encode_ftp_command
from ._smtp_protocol import Command, SmtpReply, SmtpSession
from ._streams import Stream
from ._tls import TlsInfo

__all__ = [
    "SmtpTranscript",
    "ehlo_name",
    "ftp_auth_tls",
    "name_as",
    "protocol_address",
    "smtp_starttls",
    "until_tls",
    "upgrade",
]

READ_SIZE = 4096
"""Bytes read at a time from the control connection."""
MAX_PRELIMINARY_REPLIES = 8
"""``120 service ready in N minutes`` lines accepted before the FTP greeting (RFC 959)."""
FTP_AUTH_OK = 234
"""RFC 4217 §4: the server accepts AUTH TLS; the handshake follows at once."""
FTP_SERVICE_CLOSING = 421
"""RFC 959 §4.2: service not available, the server is closing the control connection."""


@dataclasses.dataclass(slots=True, kw_only=True)
class SmtpTranscript:
    """What an SMTP server said before and after STARTTLS."""

    greeting: SmtpReply | None = None
    before: dict[str, str] | None = None
    """EHLO keywords in clear (``None`` under implicit TLS, where nothing is said in clear)."""
    starttls: SmtpReply | None = None
    tls: TlsInfo | None = None
    after: dict[str, str] = dataclasses.field(default_factory=dict)


async def upgrade(stream: Stream, protocol: str, host: str) -> TlsInfo:
    """Run *protocol*'s (``"smtp"`` or ``"ftp"``) dialogue up to TLS, start it, say goodbye."""
    if protocol == "smtp":
        transcript = SmtpTranscript()
        await smtp_starttls(stream, host, transcript, ehlo_again=False)
        assert transcript.tls is not None
        return transcript.tls
    if protocol == "ftp":
        return await ftp_auth_tls(stream, host)
    raise ValueError(f"no STARTTLS dialogue for {protocol!r}")


async def until_tls(stream: Stream, protocol: str, host: str) -> None:
    """Run *protocol*'s (``"smtp"`` or ``"ftp"``) dialogue up to the go-ahead, and stop there:
    the caller speaks TLS (or a bare ClientHello) next."""
    if protocol == "smtp":
        session = SmtpSession(protocol_address(stream, "smtp"))
        await _smtp_expect(stream, session)
        await _smtp_go_ahead(stream, session, SmtpTranscript(), ehlo_name(stream))
    elif protocol == "ftp":
        await _ftp_go_ahead(stream, protocol_address(stream, "ftp"))
    else:
        raise ValueError(f"no STARTTLS dialogue for {protocol!r}")


async def smtp_starttls(
    stream: Stream,
    host: str,
    transcript: SmtpTranscript,
    *,
    name: str | None = None,
    implicit: bool = False,
    ehlo_again: bool = True,
) -> None:
    """Greeting, EHLO, STARTTLS and the handshake (only EHLO under *implicit* TLS).

    Fills *transcript* as it goes, so a caller still has what was said when it fails:
    `StartTlsUnavailableError` when the server does not offer STARTTLS or refuses it,
    `SmtpProtocolError` when it sends anything between its ``220`` and the handshake.
    """
    endpoint = protocol_address(stream, "smtps" if implicit else "smtp")
    session = SmtpSession(endpoint)
    name = name or ehlo_name(stream)
    transcript.greeting = await _smtp_expect(stream, session)
    if implicit:
        transcript.tls = stream.tls
        await _smtp_ehlo(stream, session, name)
        transcript.after = dict(session.extensions)
        await _smtp_quit(stream, session)
        return
    await _smtp_go_ahead(stream, session, transcript, name)
    transcript.tls = await stream.start_tls(server_hostname=host)
    session.tls_started()
    if ehlo_again:
        await _smtp_ehlo(stream, session, name)
        transcript.after = dict(session.extensions)
    await _smtp_quit(stream, session)


async def _smtp_go_ahead(
    stream: Stream, session: SmtpSession, transcript: SmtpTranscript, name: str
) -> None:
    """EHLO and STARTTLS up to the server's ``220``: the next byte is the ClientHello."""
    endpoint = session.endpoint
    await _smtp_ehlo(stream, session, name)
    transcript.before = dict(session.extensions)
    if "STARTTLS" not in session.extensions:
        raise StartTlsUnavailableError(
            f"{endpoint} does not offer STARTTLS: mail to it would cross in clear",
            endpoint=endpoint,
        )
    await _send(stream, session.command(Command.STARTTLS))
    transcript.starttls = reply = await _smtp_reply(stream, session)
    if reply.code != 220:
        raise StartTlsUnavailableError(f"{endpoint} refused STARTTLS: {reply}", endpoint=endpoint)
    if session.buffered:
        # RFC 3207 §4.2: anything sent after the 220 and before the handshake would be read
        # as if it came over TLS (response injection, CVE-2011-0411).
        stream.mark_broken()
        raise SmtpProtocolError(
            f"{endpoint} sent {session.buffered} byte(s) after its 220 to STARTTLS and "
            "before the TLS handshake (possible injection)",
            endpoint=endpoint,
        )


async def ftp_auth_tls(stream: Stream, host: str) -> TlsInfo:
    """Greeting, ``AUTH TLS`` and the handshake, then ``QUIT`` over TLS."""
    endpoint = protocol_address(stream, "ftp")
    parser = await _ftp_go_ahead(stream, endpoint)
    info = await stream.start_tls(server_hostname=host)
    with contextlib.suppress(AsyncspError):
        await _send(stream, encode_ftp_command("QUIT"))
        await _ftp_reply(stream, parser, endpoint)
    return info


async def _ftp_go_ahead(stream: Stream, endpoint: str) -> FtpReplyParser:
    """Greeting and ``AUTH TLS`` up to the server's ``234``: the next byte is the ClientHello."""
    parser = FtpReplyParser()
    greeting = await _ftp_reply(stream, parser, endpoint)
    for _ in range(MAX_PRELIMINARY_REPLIES):
        if greeting.kind != 1:
            break
        greeting = await _ftp_reply(stream, parser, endpoint)
    if greeting.kind != 2:
        raise StartTlsUnavailableError(
            f"{endpoint} greeted with {greeting.code} {greeting.message}", endpoint=endpoint
        )
    await _send(stream, encode_ftp_command("AUTH", "TLS"))
    reply = await _ftp_reply(stream, parser, endpoint)
    if reply.code != FTP_AUTH_OK:
        raise StartTlsUnavailableError(
            f"{endpoint} refused AUTH TLS: {reply.code} {reply.message}", endpoint=endpoint
        )
    if parser.buffered or parser.waiting:
        stream.mark_broken()  # RFC 4217 §6: nothing may come between 234 and the handshake
        raise FtpProtocolError(
            f"{endpoint} sent bytes after its 234 to AUTH TLS and before the TLS "
            "handshake (possible injection)",
            endpoint=endpoint,
        )
    return parser


def protocol_address(stream: Stream, scheme: str) -> str:
    """How errors name the server: by the protocol spoken (``smtp://h:25``), not the raw
    ``tcp://`` service point the dialogue's stream belongs to."""
    return f"{scheme}://{stream.service_point.endpoint.netloc}"


def name_as(exc: AsyncspError, address: str) -> None:
    """Let *exc* name the server as *address* (``smtp://h:25``, what the user asked for) where
    it names the raw ``tcp://`` service point of the command's stream; then re-raise it."""
    raw = exc.endpoint
    if raw and raw != address:
        exc.args = tuple(a.replace(raw, address) if isinstance(a, str) else a for a in exc.args)
        exc.endpoint = address


def ehlo_name(stream: Stream) -> str:
    """Our address as an EHLO address literal (RFC 5321 §4.1.3), e.g. ``[192.0.2.1]``.

    A client without a fully qualified name greets with its address; looking the name up
    (``socket.getfqdn``) could stall on DNS.
    """
    sockname = stream.get_extra_info("sockname")
    try:
        address = ipaddress.ip_address(sockname[0])
    except (TypeError, IndexError, ValueError):
        return "[127.0.0.1]"
    if address.version == 6:
        return f"[IPv6:{address.compressed}]"
    return f"[{address}]"


# -- SMTP --------------------------------------------------------------------------------------


async def _smtp_ehlo(stream: Stream, session: SmtpSession, name: str) -> None:
    await _send(stream, session.command(Command.EHLO, name))
    reply = await _smtp_reply(stream, session)
    if reply.code >= 400:
        raise StartTlsUnavailableError(
            f"{session.endpoint} refused EHLO ({reply}); without ESMTP there is no STARTTLS",
            endpoint=session.endpoint,
        )


async def _smtp_expect(stream: Stream, session: SmtpSession) -> SmtpReply:
    reply = await _smtp_reply(stream, session)
    if reply.code >= 400:
        raise SmtpReplyError(reply.code, reply.message, endpoint=session.endpoint)
    return reply


async def _smtp_reply(stream: Stream, session: SmtpSession) -> SmtpReply:
    async with _one_reply(stream, session.endpoint):
        while True:
            item = session.next_reply()
            if item is not None:
                return item[1]
            data = await stream.read(READ_SIZE)
            if not data:
                raise SmtpProtocolError(
                    f"{session.endpoint} closed the connection mid-dialogue",
                    endpoint=session.endpoint,
                )
            session.receive(data)


async def _smtp_quit(stream: Stream, session: SmtpSession) -> None:
    with contextlib.suppress(AsyncspError):
        await _send(stream, session.command(Command.QUIT))
        await _smtp_reply(stream, session)


# -- FTP ---------------------------------------------------------------------------------------


async def _ftp_reply(stream: Stream, parser: FtpReplyParser, endpoint: str) -> FtpReply:
    async with _one_reply(stream, endpoint):
        while True:
            reply = parser.next_reply()
            if reply is not None:
                break
            data = await stream.read(READ_SIZE)
            if not data:
                raise FtpProtocolError(
                    f"{endpoint} closed the connection mid-dialogue", endpoint=endpoint
                )
            try:
                parser.feed(data)
            except FtpProtocolError as exc:
                raise FtpProtocolError(f"{endpoint}: {exc}", endpoint=endpoint) from exc
    if reply.code == FTP_SERVICE_CLOSING:
        # It may answer anything, the greeting included (RFC 959 §4.2): the server is going,
        # so the dialogue ends here, as the server's refusal to serve, not to speak TLS.
        stream.mark_broken()
        raise FtpReplyError(
            reply.code,
            f"{reply.message}; the server is closing the connection (try again later)",
            endpoint=endpoint,
        )
    return reply


# -- both --------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _one_reply(stream: Stream, endpoint: str | None) -> AsyncIterator[None]:
    """Bound the reading of one whole reply by the stream's timeout.

    The stream bounds each read; a server sending a byte per read would never hit that, and
    could hold the dialogue for as long as it likes.
    """
    deadline = asyncio.timeout(stream.timeout)
    try:
        async with deadline:
            yield
    except builtins.TimeoutError as exc:
        if isinstance(exc, AsyncspError) or not deadline.expired():
            raise  # the stream's own timeout, already ours (and the stream aborted)
        stream.abort()
        endpoint = endpoint or stream.endpoint
        raise TimeoutError(
            f"{endpoint} did not complete a reply within {stream.timeout} s (it trickled or "
            "never finished); the connection was closed",
            endpoint=endpoint,
        ) from exc


async def _send(stream: Stream, line: bytes) -> None:
    stream.write(line)
    await stream.drain()
