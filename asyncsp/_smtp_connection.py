"""One SMTP session on one stream: the I/O loop around the sans-I/O core.

`SmtpConnection` writes what `SmtpSession` encodes and feeds it what the stream reads,
bounding each step (each complete reply included) by its time limit, and a multi-step
exchange (AUTH and its challenges) by one deadline as a whole. It is also what a
service point pools: it has the ``policy``, ``opened_at``, ``is_reusable()``, ``aclose()``
and ``stream`` the pool asks for. Any failure in the middle of an exchange (a timeout, a
framing error, a cancellation) closes it, so a late reply can never meet a later command.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ._credentials import credential_digest
from ._errors import (
    ConnectionClosedError,
    SmtpArgumentError,
    SmtpError,
    SmtpProtocolError,
    SmtpRecipientsRefused,
    SmtpReplyError,
    StartTlsUnavailableError,
    TimeoutError,
    UnexpectedPlaintextError,
)
from ._pool import OnStream
from ._smtp_protocol import (
    AUTH_CANCEL_LINE,
    SERVICE_CLOSING,
    Command,
    EncodedContent,
    SendResult,
    SmtpReply,
    SmtpSession,
    State,
    check_address,
    encode_data,
)

if TYPE_CHECKING:
    from ._servicepoint import ServicePoint
    from ._streams import Stream

__all__ = ["DEFAULT_STEP_TIMEOUT", "SmtpConnection"]

_log = logging.getLogger("asyncsp.smtp")

RFC_TIMEOUTS = {
    Command.GREETING: 300.0,
    Command.MAIL: 300.0,
    Command.RCPT: 300.0,
    Command.DATA: 120.0,
    Command.CONTENT: 600.0,
}
"""RFC 5321 §4.5.3.2: how long a client waits for each reply when no ``timeout`` is given."""
DEFAULT_STEP_TIMEOUT = 300.0
"""Every other step without a ``timeout`` (connect, handshake, EHLO, AUTH, RSET, ...)."""
QUIT_TIMEOUT = 2.0
"""How long closing a session waits for the reply to QUIT before it just closes."""
READ_CHUNK = 64 * 1024
DRAIN_AFTER = 64 * 1024
"""Writes at least this big wait for the transport's buffer to drain (flow control)."""


class SmtpConnection(OnStream):
    """One SMTP session on one stream: what the service point pools and hands out again."""

    def __init__(
        self,
        stream: Stream,
        service_point: ServicePoint,
        *,
        reuse_key: tuple[object, ...],
        timeout: float | None,
    ) -> None:
        self.stream = stream
        self.service_point = service_point
        self.session = SmtpSession(service_point.address)
        self.reuse_key = reuse_key
        self.timeout = timeout
        self.username: str | None = None
        self.busy = False
        self._broken = False
        self._loop = asyncio.get_running_loop()  # the stream's: a session never changes loops

    # -- what the pool asks ------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return self.service_point.address

    def is_reusable(self) -> bool:
        """Healthy, between transactions, nothing awaited and nothing unread."""
        session = self.session
        return (
            not self._broken
            and session.state is State.READY
            and not session.pending
            and not session.buffered
            and self.stream.is_reusable()
        )

    async def aclose(self) -> None:
        """Say QUIT (briefly, when the session is healthy) and close the stream."""
        try:
            if self.is_reusable():
                with contextlib.suppress(Exception):
                    # QUIT is a few bytes (written at once, never drained): the reply's
                    # deadline is the whole goodbye's.
                    limit = min(QUIT_TIMEOUT, self.timeout or QUIT_TIMEOUT)
                    until = (self._loop.time() + limit, "the reply to QUIT")
                    await self._write(self.session.command(Command.QUIT), Command.QUIT)
                    await self._replies(1, until=until)
        except BaseException:
            self.abort()
            raise
        self.session.close()
        await self.stream.aclose()

    def abort(self) -> None:
        """Close at once, without a goodbye: the session's state is unknown or bad."""
        self._broken = True
        self.session.close()
        self.stream.abort()

    # -- I/O around the protocol core --------------------------------------------------

    def _limit(self, command: Command) -> float:
        if self.timeout is not None:
            return self.timeout
        return RFC_TIMEOUTS.get(command, DEFAULT_STEP_TIMEOUT)

    async def _write(self, data: bytes, command: Command, *, shown: str | None = None) -> None:
        """Send *data* (for *command*); the log says *shown*, or the verb and the size.

        Never the bytes: message content is the sender's (headers and body) and AUTH lines
        carry credentials, so neither may reach a log record.
        """
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("%s C: %s", self.endpoint, shown or f"{command.value}, {len(data)} bytes")
        if self.stream.buffered:
            # We only write once every awaited reply is in, so these bytes answer nothing.
            self.abort()
            raise SmtpProtocolError(
                f"{self.endpoint} sent {self.stream.buffered} byte(s) nobody asked for",
                endpoint=self.endpoint,
            )
        try:
            self.stream.write(data)
            # A command batch goes straight to the socket and its reply is awaited next;
            # only message content can be big enough to need the peer to make room.
            if len(data) >= DRAIN_AFTER:
                async with asyncio.timeout(self._limit(command)):
                    await self.stream.drain()
        except builtins.TimeoutError as exc:
            raise self._timed_out(command, f"sending {command.value}") from exc
        except BaseException:
            self._broken = True
            raise

    async def _replies(
        self, count: int, *, until: tuple[float, str] | None = None
    ) -> list[tuple[Command, SmtpReply]]:
        """The next *count* replies; each must be complete within the step's time limit.

        *until* is ``(deadline, what)`` for a multi-step exchange: no reply may end after
        the exchange's own deadline (loop time), and a timeout then names *what*.
        """
        session = self.session
        parser = session.parser
        results: list[tuple[Command, SmtpReply]] = []
        deadline: float | None = None
        try:
            while True:
                # With nothing buffered (the usual case after a command) there is no reply
                # to parse yet: read first.
                item = session.next_reply() if parser.buffered else None
                if item is None:
                    command = session.pending[0] if session.pending else Command.NOOP
                    if deadline is None:
                        deadline = self._loop.time() + self._limit(command)
                        if until is not None:
                            deadline = min(deadline, until[0])
                    try:
                        data = await self.stream.read_before(READ_CHUNK, deadline)
                    except builtins.TimeoutError as exc:
                        what = until[1] if until and deadline >= until[0] else _awaited(command)
                        raise self._timed_out(command, what) from exc
                    if not data:
                        raise ConnectionClosedError(
                            f"{self.endpoint} closed the connection; "
                            f"{_awaited(command)} never came",
                            endpoint=self.endpoint,
                        )
                    session.receive(data)
                    continue
                deadline = None
                if _log.isEnabledFor(logging.DEBUG):
                    _log.debug("%s S: %s", self.endpoint, str(item[1])[:200])
                if item[1].code == SERVICE_CLOSING:
                    raise SmtpReplyError(item[1].code, item[1].message, endpoint=self.endpoint)
                results.append(item)
                if len(results) == count:
                    return results
        except BaseException:
            self.abort()
            raise

    async def exchange(self, command: Command, *args: str) -> SmtpReply:
        """Send one command and return its reply."""
        await self._write(self.session.command(command, *args), command)
        return (await self._replies(1))[0][1]

    def _timed_out(self, command: Command, what: str) -> TimeoutError:
        self.abort()
        return TimeoutError(
            f"{self.endpoint}: {what} did not complete within {self._limit(command)} s; "
            "the connection was closed",
            endpoint=self.endpoint,
        )

    def _error(self, reply: SmtpReply) -> SmtpReplyError:
        return SmtpReplyError(reply.code, reply.message, endpoint=self.endpoint)

    # -- opening a session -------------------------------------------------------------

    async def establish(
        self, *, security: str, local_hostname: str | None, username: str | None, password: str
    ) -> None:
        """Greeting, EHLO, STARTTLS (required when asked), EHLO again, AUTH."""
        (_, greeting), *_ = await self._replies(1)
        if greeting.code != 220:
            raise self._error(greeting)
        name = local_hostname or self._address_literal()
        await self.hello(name)
        if security == "starttls":
            await self.starttls()
            await self.hello(name)
        if username is not None:
            await self.login(username, password)

    def _address_literal(self) -> str:
        # RFC 5321 §4.1.4: without a meaningful domain name, the client's address literal;
        # it costs no DNS lookup (socket.getfqdn can take seconds).
        sockname = self.stream.get_extra_info("sockname") or ("127.0.0.1",)
        host = str(sockname[0])
        return f"[IPv6:{host}]" if ":" in host else f"[{host}]"

    async def hello(self, name: str) -> None:
        """EHLO, falling back to HELO for a server that does not know it (RFC 5321 §3.2)."""
        reply = await self.exchange(Command.EHLO, name)
        if reply.code >= 500:
            reply = await self.exchange(Command.HELO, name)
        if reply.code != 250:
            raise self._error(reply)

    async def starttls(self) -> None:
        """Upgrade to TLS (RFC 3207); refuse anything but a clean 220 with nothing after it."""
        endpoint = self.endpoint
        if "STARTTLS" not in self.session.extensions:
            self.abort()  # nothing else is sent in clear: not even QUIT
            raise StartTlsUnavailableError(
                f"{endpoint} does not offer STARTTLS; refusing to continue in clear (use "
                "security='tls' for implicit TLS, or security='none' to allow plain text)",
                endpoint=endpoint,
            )
        reply = await self.exchange(Command.STARTTLS)
        if reply.code != 220:
            self.abort()
            raise StartTlsUnavailableError(
                f"{endpoint} refused STARTTLS ({reply}); nothing was sent in clear",
                endpoint=endpoint,
            ) from self._error(reply)
        injected = self.session.buffered + self.stream.buffered
        if injected:
            self.abort()
            # RFC 3207 §4.2: anything before the handshake is an attacker's or a broken
            # server's; acting on it is the STARTTLS response-injection attack.
            raise SmtpProtocolError(
                f"{endpoint} sent {injected} byte(s) after its 220 to STARTTLS and before the TLS "
                "handshake (possible injection); the connection was closed",
                endpoint=endpoint,
            )
        try:
            async with asyncio.timeout(self._limit(Command.STARTTLS)):
                await self.stream.start_tls()
        except builtins.TimeoutError as exc:
            raise self._timed_out(Command.STARTTLS, "the TLS handshake") from exc
        except UnexpectedPlaintextError as exc:
            self.abort()
            # The same injection, arrived a moment later: after our check, or once the
            # handshake had begun (it then reads the bytes as a broken TLS record).
            raise SmtpProtocolError(
                f"{endpoint} sent plain text after its 220 to STARTTLS instead of a TLS "
                "handshake (possible injection); the connection was closed",
                endpoint=endpoint,
            ) from exc
        except BaseException:
            self.abort()
            raise
        self.session.tls_started()

    async def login(
        self, username: str, password: str | None = None, *, oauth2_token: str | None = None
    ) -> None:
        """AUTH (RFC 4954) with XOAUTH2 when given a token, else PLAIN or LOGIN; TLS only."""
        endpoint = self.endpoint
        if self.stream.tls is None:
            raise SmtpError(
                f"{endpoint}: credentials are never sent over an unencrypted connection; "
                "use security='starttls' or 'tls'",
                endpoint=endpoint,
            )
        for value, what in ((username, "username"), (password or "", "password")):
            if not isinstance(value, str) or "\0" in value:
                raise SmtpArgumentError(f"the {what} must be a str without NUL characters")
        offered = self.session.extensions.get("AUTH", "").upper().split()
        if oauth2_token is not None:
            mechanism = "XOAUTH2"
            initial = f"user={username}\x01auth=Bearer {oauth2_token}\x01\x01"
            responses: list[str] = [""]  # acknowledge the error challenge (it is JSON)
        elif "PLAIN" in offered:
            mechanism, initial, responses = "PLAIN", f"\0{username}\0{password or ''}", []
        else:
            mechanism, initial = "LOGIN", ""
            responses = [_b64(username), _b64(password or "")]
        if mechanism not in offered:
            raise SmtpError(
                f"{endpoint} offers no AUTH mechanism asyncsp can use (offered: "
                f"{' '.join(offered) or 'none'}; usable: "
                f"{mechanism if oauth2_token is not None else 'PLAIN or LOGIN'})",
                endpoint=endpoint,
            )
        args = (mechanism, _b64(initial)) if initial else (mechanism,)
        _log.debug("%s AUTH %s as %r", endpoint, mechanism, username)
        # One deadline for the whole exchange, not one per challenge: each reply coming
        # just in time must not stretch it.
        until = (self._loop.time() + self._limit(Command.AUTH), "the AUTH exchange")
        hidden = f"AUTH {mechanism} (credentials hidden)"
        await self._write(self.session.command(Command.AUTH, *args), Command.AUTH, shown=hidden)
        reply = (await self._replies(1, until=until))[0][1]
        while reply.code == 334:  # at most len(responses) + 1 rounds
            if responses:
                line, shown = responses.pop(0), "AUTH response (hidden)"
            else:
                # An extra challenge is cancelled (RFC 4954 §4); the session core accepts
                # only 501 after it, so the loop ends here.
                line, shown = AUTH_CANCEL_LINE, "* (AUTH exchange cancelled)"
            await self._write(self.session.auth_response(line), Command.AUTH, shown=shown)
            reply = (await self._replies(1, until=until))[0][1]
        if reply.code != 235:
            raise self._error(reply)
        self.username = username
        self.reuse_key = (
            *self.reuse_key[:2],
            username,
            credential_digest(oauth2_token or password),
        )

    # -- sending -----------------------------------------------------------------------

    async def sendmail(
        self, sender: str, recipients: Iterable[str], data: bytes, *, utf8: bool = False
    ) -> SendResult:
        """One transaction: MAIL, RCPT for each recipient, DATA (pipelined when offered)."""
        recipients = [recipients] if isinstance(recipients, str) else list(recipients)
        if not recipients:
            raise SmtpArgumentError("a message needs at least one recipient")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise SmtpArgumentError(f"data must be bytes, not {type(data).__name__}")
        utf8 = utf8 or not (sender.isascii() and all(r.isascii() for r in recipients))
        # Every address is checked before the first byte goes out (no half-sent batch).
        check_address(sender, "sender", utf8=utf8)
        for recipient in recipients:
            if not recipient:
                raise SmtpArgumentError("an empty recipient address")
            check_address(recipient, "recipient", utf8=utf8)
        content = encode_data(bytes(data))
        params = self._mail_params(content, utf8=utf8)
        session = self.session
        if session.state is not State.READY:
            await self._reset()
        self.service_point.stats.requests += 1
        if session.pipelining:
            # RFC 2920: MAIL, every RCPT and DATA in one write; replies come back in order.
            batch = session.mail(sender, *params, utf8=utf8)
            batch += b"".join(session.rcpt(r) for r in recipients)
            batch += session.command(Command.DATA)
            shown = f"MAIL, RCPT x{len(recipients)}, DATA, {len(batch)} bytes"
            await self._write(batch, Command.MAIL, shown=shown)
            replies = [reply for _, reply in await self._replies(len(recipients) + 2)]
        else:
            replies = [await self._exchange_bytes(session.mail(sender, *params, utf8=utf8))]
            if replies[0].code < 300:
                for recipient in recipients:
                    replies.append(await self._exchange_bytes(session.rcpt(recipient)))
                if any(r.code < 300 for r in replies[1:]):
                    replies.append(await self.exchange(Command.DATA))
        return await self._finish(recipients, replies, content)

    async def _exchange_bytes(self, line: bytes) -> SmtpReply:
        await self._write(line, self.session.pending[-1])
        return (await self._replies(1))[0][1]

    def _mail_params(self, content: EncodedContent, *, utf8: bool) -> list[str]:
        extensions = self.session.extensions
        endpoint = self.endpoint
        params = []
        if "SIZE" in extensions:
            limit = extensions["SIZE"]
            if limit.isdigit() and 0 < int(limit) < len(content):
                raise SmtpError(
                    f"the message is {len(content)} bytes; {endpoint} takes at most {limit}",
                    endpoint=endpoint,
                )
            params.append(f"SIZE={len(content)}")  # RFC 1870
        if not content.isascii():
            if "8BITMIME" not in extensions:
                raise SmtpError(
                    f"the message has 8-bit data and {endpoint} does not offer 8BITMIME; "
                    "encode it as quoted-printable or base64",
                    endpoint=endpoint,
                )
            params.append("BODY=8BITMIME")  # RFC 6152
        if utf8:
            if "SMTPUTF8" not in extensions:
                raise SmtpError(
                    f"the message needs SMTPUTF8 (non-ASCII addresses or headers) and "
                    f"{endpoint} does not offer it",
                    endpoint=endpoint,
                )
            params.append("SMTPUTF8")  # RFC 6531
        return params

    async def _finish(
        self, recipients: list[str], replies: list[SmtpReply], content: EncodedContent
    ) -> SendResult:
        mail = replies[0]
        if mail.code >= 300:
            if self.session.state is not State.READY:
                await self._reset()
            raise self._error(mail)
        accepted: list[str] = []
        refused: dict[str, SmtpReply] = {}
        for recipient, reply in zip(recipients, replies[1:], strict=False):
            if reply.code < 300:
                accepted.append(recipient)
            else:
                refused[recipient] = reply
        data = replies[len(recipients) + 1] if len(replies) > len(recipients) + 1 else None
        if data is not None and data.code == 354:
            # With nobody accepted, RFC 2920 §3.1 ends the content at once: a lone dot.
            body = content if accepted else encode_data(b"")
            await self._write(self.session.content(body), Command.CONTENT)
            final = (await self._replies(1))[0][1]
            if not accepted:
                raise SmtpRecipientsRefused(refused, endpoint=self.endpoint)
            if final.code >= 300:
                raise self._error(final)
            return SendResult(accepted, refused, final)
        await self._reset()
        if not accepted:
            raise SmtpRecipientsRefused(refused, endpoint=self.endpoint)
        assert data is not None
        raise self._error(data)

    async def _reset(self) -> None:
        reply = await self.exchange(Command.RSET)
        if reply.code != 250:
            self.abort()
            raise self._error(reply)

    async def release(self, *, failed: bool) -> None:
        """Leaving ``async with``: back to the pool when healthy (after RSET), else closed."""
        if failed or self._broken or self.stream.closed:
            self.abort()
            return
        try:
            # Pooled sessions start clean: RSET also clears anything a server kept across
            # transactions (RFC 5321 §4.1.1.5), and proves the session alive before it waits.
            # A clean session the pool will close anyway goes straight to QUIT: an RSET
            # there would cost a round trip for nothing.
            state = self.session.state
            if state in (State.MAIL, State.RCPT) or (
                state is State.READY and not self._closing_at_checkin()
            ):
                await self._reset()
            await self.service_point.checkin(self, self.reuse_key)
        except BaseException:
            self.abort()
            raise

    def _closing_at_checkin(self) -> bool:
        """Whether the service point's checkin will close this session rather than pool it
        (its manager closing, its lease over, or its policy no longer the endpoint's): the
        same tests, read first. (A test that turns true in between only costs the RSET.)"""
        sp = self.service_point
        lease = sp.connection_lease_timeout
        return (
            sp.manager.closed
            or (lease is not None and time.monotonic() - self.opened_at >= lease)
            or self.policy != sp.policy
        )


def _awaited(command: Command) -> str:
    return "the greeting" if command is Command.GREETING else f"the reply to {command.value}"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")
