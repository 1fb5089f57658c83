"""The SMTP protocol core, sans I/O: bytes in, replies out; commands in, bytes out.

Nothing here touches a socket or the event loop. `SmtpSession` holds the reply parser (which
owns its buffer, so a byte the server sent too early stays visible), the queue of commands
awaiting their replies (RFC 2920 pipelining pairs replies with commands in order), the
capabilities of the last EHLO, and a state machine: one table says what may be sent in each
state, another where each reply leads. The I/O loop around it is ``_smtp_connection.py``.

Errors raised here are asyncsp's: `SmtpProtocolError` for what the server got wrong,
`SmtpArgumentError` for what the caller asked that cannot go on the wire safely.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import re
from typing import NewType

from ._errors import SmtpArgumentError, SmtpProtocolError, SmtpReplyError

__all__ = [
    "AUTH_CANCEL_LINE",
    "MAX_REPLY_LINE",
    "MAX_REPLY_LINES",
    "Command",
    "EncodedContent",
    "Outcome",
    "ReplyParser",
    "SendResult",
    "SmtpReply",
    "SmtpSession",
    "State",
    "check_address",
    "check_argument",
    "encode_command",
    "encode_data",
    "normalise_line_ends",
    "parse_ehlo",
]

MAX_REPLY_LINE = 8192
"""Longest reply line accepted, CRLF excluded. RFC 5321 §4.5.3.1.5 promises 512 octets;
real servers send longer EHLO and error lines, so we allow sixteen times that and no more."""
MAX_REPLY_LINES = 1000
"""Most lines in one (multi-line) reply; bounds memory against an endless continuation."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""C0 and C1 controls, DEL and the Unicode line separators: CR, LF and NUL would end or split
a command line (command injection); the others are line ends to some software."""
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_ENHANCED_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?= |$)")
_EHLO_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_COMPACT_AFTER = 64 * 1024
"""Consumed bytes the parser keeps before moving the rest to the front of its buffer."""


@dataclasses.dataclass(frozen=True, slots=True)
class SmtpReply:
    """One SMTP reply: its three-digit ``code`` and its text (lines joined with ``"\\n"``)."""

    code: int
    message: str

    @property
    def enhanced_status(self) -> str | None:
        """The RFC 3463 enhanced status code (``"5.1.1"``) the text starts with, if any."""
        match = _ENHANCED_STATUS.match(self.message)
        return match.group() if match else None

    @property
    def lines(self) -> list[str]:
        """The text of each line of the reply."""
        return self.message.split("\n")

    def __str__(self) -> str:
        return f"{self.code} {self.message}"


@dataclasses.dataclass(frozen=True, slots=True)
class SendResult:
    """The outcome of one message: who took it, who refused it, and the final reply."""

    accepted: list[str]
    """Recipients the server accepted."""
    refused: dict[str, SmtpReply]
    """Recipients the server refused, each with its reply."""
    reply: SmtpReply
    """The server's reply to the end of the message content (``250`` when queued)."""


class ReplyParser:
    """Splits received bytes into replies (RFC 5321 §4.2), within the size limits.

    It owns its buffer: `buffered` tells how many received bytes no reply has consumed yet.
    A reply line is ``code [SP text] CRLF`` for the last line and ``code "-" text CRLF``
    before it; a bare LF ends a line too, since deployed servers send them. Anything else,
    a line over `MAX_REPLY_LINE` or a reply over `MAX_REPLY_LINES` is `SmtpProtocolError`.
    """

    __slots__ = ("_buffer", "_code", "_endpoint", "_line", "_lines", "_reply", "_scan")

    def __init__(self, endpoint: str | None = None) -> None:
        self._endpoint = endpoint
        self._buffer = bytearray()
        self._reply = 0  # where the reply being parsed starts
        self._line = 0  # where the next line to parse starts
        self._scan = 0  # where the search for the next line end resumes
        self._lines: list[str] = []
        self._code = 0

    @property
    def buffered(self) -> int:
        """Received bytes not yet part of a returned reply (a partial reply included)."""
        return len(self._buffer) - self._reply

    def feed(self, data: bytes) -> None:
        """Add received bytes."""
        self._buffer += data

    def next_reply(self) -> SmtpReply | None:
        """The next complete reply, or ``None`` until more bytes arrive."""
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n", self._scan)
            if end < 0:
                if len(buffer) - self._line > MAX_REPLY_LINE + 1:
                    self._fail(f"a reply line longer than {MAX_REPLY_LINE} bytes")
                self._scan = len(buffer)
                return None
            start = self._line
            stop = end - 1 if end > start and buffer[end - 1] == 0x0D else end
            self._line = self._scan = end + 1
            if stop - start > MAX_REPLY_LINE:
                self._fail(f"a reply line longer than {MAX_REPLY_LINE} bytes")
            digits = buffer[start : start + 3]
            # bytes.isdigit() is ASCII digits only, never another script's.
            if stop - start < 3 or not digits.isdigit():
                self._fail(f"a malformed reply line {bytes(buffer[start:stop])[:60]!r}")
            code = int(digits)
            separator = buffer[start + 3] if stop > start + 3 else 0x20
            if not 200 <= code <= 599 or separator not in (0x20, 0x2D):
                self._fail(f"a malformed reply line {bytes(buffer[start:stop])[:60]!r}")
            lines = self._lines
            if separator == 0x20 and not lines:  # a one-line reply: most of them
                reply = SmtpReply(code, buffer[start + 4 : stop].decode("utf-8", "replace"))
            else:
                if lines and code != self._code:
                    self._fail(f"a multi-line reply mixing codes {self._code} and {code}")
                self._code = code
                lines.append(buffer[start + 4 : stop].decode("utf-8", "replace"))
                if separator != 0x20:
                    if len(lines) >= MAX_REPLY_LINES:
                        self._fail(f"a reply of more than {MAX_REPLY_LINES} lines")
                    continue
                reply = SmtpReply(code, "\n".join(lines))
                self._lines = []
            self._reply = self._line
            if self._reply == len(buffer) or self._reply > _COMPACT_AFTER:
                del buffer[: self._reply]
                self._scan -= self._reply
                self._line = self._reply = 0
            return reply

    def _fail(self, what: str) -> None:
        where = self._endpoint or "the SMTP server"
        raise SmtpProtocolError(f"{where} sent {what}", endpoint=self._endpoint)


def check_argument(value: str, what: str, *, utf8: bool = False) -> str:
    """Return *value* if it can be one argument of a command line, else `SmtpArgumentError`.

    Control characters (CR, LF and NUL among them) are refused anywhere: they would end the
    command and start another one the caller never wrote (command injection). Non-ASCII text
    needs SMTPUTF8 (RFC 6531), so it is refused unless *utf8*.
    """
    if not isinstance(value, str):
        raise SmtpArgumentError(f"{what} must be a str, not {type(value).__name__}")
    if _CONTROL.search(value):
        raise SmtpArgumentError(
            f"{what} {value[:80]!r} contains a control character (CR, LF, NUL, ...); refused "
            "before anything was sent"
        )
    if not utf8 and not value.isascii():
        raise SmtpArgumentError(
            f"{what} {value[:80]!r} is not ASCII and the session does not use SMTPUTF8"
        )
    return value


def check_address(address: str, what: str, *, utf8: bool = False) -> str:
    """An envelope address for ``<...>``: no control characters, brackets or spaces."""
    check_argument(address, what, utf8=utf8)
    if any(c in address for c in "<> "):
        raise SmtpArgumentError(
            f"{what} {address[:80]!r} contains '<', '>' or a space; give the bare address"
        )
    return address


def encode_command(verb: str, *args: str, utf8: bool = False) -> bytes:
    """One command line: the verb and its checked arguments, separated by spaces, with CRLF."""
    for arg in args:
        check_argument(arg, f"{verb} argument", utf8=utf8)
    return " ".join((verb, *args)).encode("utf-8") + b"\r\n"


def normalise_line_ends(data: bytes) -> bytes:
    """*data* with every CRLF, lone CR and lone LF made CRLF: the lines a server will see."""
    return _LINE_BREAK.sub(b"\r\n", data)


EncodedContent = NewType("EncodedContent", bytes)
"""Message content ready for the wire: CRLF line ends, dot-stuffed, ending in ``.CRLF``."""


def encode_data(body: bytes) -> EncodedContent:
    """The DATA content for *body*: line breaks made CRLF, dot-stuffed, ending in ``.CRLF``.

    First every lone CR and lone LF becomes CRLF, *then* lines starting with a dot get a
    second one (RFC 5321 §4.5.2). The order matters: stuffing first would leave a lone
    ``\\r.\\r`` that a server reading bare CR as a line end takes for the end of the message
    (the 2023 SMTP smuggling attacks). After both steps ``CRLF.CRLF`` can only be our end.
    """
    if not body:
        return EncodedContent(b".\r\n")
    text = normalise_line_ends(body)
    if not text.endswith(b"\r\n"):
        text += b"\r\n"
    if text.startswith(b"."):
        text = b"." + text
    return EncodedContent(text.replace(b"\r\n.", b"\r\n..") + b".\r\n")


_EHLO_MEMO: dict[str, tuple[tuple[str, str], ...]] = {}
"""Extension lines of EHLO replies -> what they offer: a server answers every session's EHLO
alike, and parsing its lines is a session's largest piece of reply handling."""
_EHLO_MEMO_SIZE = 32
_EHLO_MEMO_TEXT = 4096
"""Longer extension lists are parsed each time, so the memo stays small."""


def parse_ehlo(reply: SmtpReply) -> dict[str, str]:
    """The extensions an EHLO reply offers: upper-case keyword -> parameters (RFC 5321 §4.1.1.1).

    The first line is the server's greeting, not an extension. Lines that are not a valid
    ``ehlo-keyword [SP params]`` are skipped. The old ``AUTH=LOGIN PLAIN`` form some servers
    still send is merged into ``AUTH``.
    """
    _, _, lines = reply.message.partition("\n")
    known = _EHLO_MEMO.get(lines)
    if known is None:
        known = tuple(_parse_extensions(lines.split("\n") if lines else []).items())
        if len(lines) <= _EHLO_MEMO_TEXT:
            if len(_EHLO_MEMO) >= _EHLO_MEMO_SIZE:
                _EHLO_MEMO.clear()  # atomic: sessions may run in several threads' loops
            _EHLO_MEMO[lines] = known
    return dict(known)


def _parse_extensions(lines: list[str]) -> dict[str, str]:
    extensions: dict[str, str] = {}
    for line in lines:
        keyword, _, params = line.strip().partition(" ")
        if keyword.upper().startswith("AUTH="):
            keyword, params = "AUTH", f"{keyword[5:]} {params}".strip()
            if "AUTH" in extensions:
                params = " ".join(dict.fromkeys((extensions["AUTH"] + " " + params).split()))
        elif not _EHLO_KEYWORD.fullmatch(keyword):
            continue
        extensions[keyword.upper()] = params.strip()
    return extensions


class State(enum.Enum):
    """Where a session is, as confirmed by the server's replies."""

    # Members are singletons compared by identity; the identity hash is C-speed, and the
    # state tables are looked up several times per message.
    __hash__ = object.__hash__

    GREETING = "waiting for the greeting"
    CONNECTED = "greeted, before EHLO"
    READY = "ready for a transaction"
    AUTH = "in an AUTH exchange"
    STARTTLS = "waiting for the TLS handshake"
    MAIL = "sender accepted"
    RCPT = "recipients accepted"
    DATA = "sending the message content"
    CLOSED = "closed"


class Command(enum.Enum):
    """What a reply answers: a command, the greeting, or the end of the message content."""

    # Members are singletons compared by identity; the identity hash is C-speed, and the
    # state tables are looked up several times per message.
    __hash__ = object.__hash__

    GREETING = "greeting"
    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    AUTH_RESPONSE = "AUTH response"
    AUTH_CANCEL = "AUTH cancel"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    CONTENT = "message content"
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"


_VERBS = {command: command.value for command in Command}
"""Each command's verb, read once (an enum's ``value`` is a descriptor call on every read)."""


class Outcome(enum.Enum):
    """The class of a reply code (RFC 5321 §4.2.1)."""

    POSITIVE = 2
    INTERMEDIATE = 3
    NEGATIVE = 4  # 4yz and 5yz alike: the command did not take effect


_OUTCOMES = (
    # A reply code's class by its first digit; the parser passes on codes from 200 to 599.
    Outcome.NEGATIVE,
    Outcome.NEGATIVE,
    Outcome.POSITIVE,
    Outcome.INTERMEDIATE,
    Outcome.NEGATIVE,
    Outcome.NEGATIVE,
)


S, C, R = State, Command, Outcome
_ANYWHERE = (S.CONNECTED, S.READY, S.MAIL, S.RCPT)
_TRANSITIONS: dict[tuple[State, Command, Outcome], State] = {
    (S.GREETING, C.GREETING, R.POSITIVE): S.CONNECTED,
    (S.GREETING, C.GREETING, R.NEGATIVE): S.CLOSED,  # 554: no service here (RFC 5321 §3.1)
    **{(s, c, R.POSITIVE): S.READY for s in _ANYWHERE for c in (C.EHLO, C.HELO)},
    **{(s, c, R.NEGATIVE): s for s in _ANYWHERE for c in (C.EHLO, C.HELO)},
    (S.READY, C.STARTTLS, R.POSITIVE): S.STARTTLS,  # then only the handshake (RFC 3207 §4.2)
    (S.READY, C.STARTTLS, R.NEGATIVE): S.READY,
    (S.READY, C.AUTH, R.POSITIVE): S.READY,
    (S.READY, C.AUTH, R.INTERMEDIATE): S.AUTH,  # 334: a challenge (RFC 4954 §4)
    (S.READY, C.AUTH, R.NEGATIVE): S.READY,
    (S.AUTH, C.AUTH_RESPONSE, R.POSITIVE): S.READY,
    (S.AUTH, C.AUTH_RESPONSE, R.INTERMEDIATE): S.AUTH,
    (S.AUTH, C.AUTH_RESPONSE, R.NEGATIVE): S.READY,
    (S.AUTH, C.AUTH_CANCEL, R.NEGATIVE): S.READY,  # and only as 501 (`_REQUIRED_CODE`)
    (S.READY, C.MAIL, R.POSITIVE): S.MAIL,
    (S.READY, C.MAIL, R.NEGATIVE): S.READY,
    (S.MAIL, C.RCPT, R.POSITIVE): S.RCPT,
    (S.MAIL, C.RCPT, R.NEGATIVE): S.MAIL,
    (S.RCPT, C.RCPT, R.POSITIVE): S.RCPT,
    (S.RCPT, C.RCPT, R.NEGATIVE): S.RCPT,
    (S.READY, C.RCPT, R.NEGATIVE): S.READY,  # pipelined after a refused MAIL
    (S.READY, C.DATA, R.NEGATIVE): S.READY,
    (S.MAIL, C.DATA, R.NEGATIVE): S.MAIL,  # no valid recipient
    # RFC 2920 §3.1: some servers accept DATA though every RCPT failed; the client then ends
    # the empty content with a lone dot.
    (S.MAIL, C.DATA, R.INTERMEDIATE): S.DATA,
    (S.RCPT, C.DATA, R.INTERMEDIATE): S.DATA,
    (S.RCPT, C.DATA, R.NEGATIVE): S.RCPT,
    (S.DATA, C.CONTENT, R.POSITIVE): S.READY,  # the transaction is over either way
    (S.DATA, C.CONTENT, R.NEGATIVE): S.READY,
    **{(s, C.RSET, R.POSITIVE): S.READY for s in _ANYWHERE},
    **{(s, C.NOOP, o): s for s in _ANYWHERE for o in (R.POSITIVE, R.NEGATIVE)},
    **{(s, C.QUIT, o): S.CLOSED for s in (*_ANYWHERE, S.AUTH) for o in (R.POSITIVE, R.NEGATIVE)},
}
"""(confirmed state, command, reply class) -> next state. A reply missing here is a server
breaking the protocol (a 354 to MAIL, a 334 to RCPT): `SmtpProtocolError`."""
del S, C, R

_SENDABLE: dict[State, frozenset[Command]] = {
    State.GREETING: frozenset(),
    State.CONNECTED: frozenset({Command.EHLO, Command.HELO, Command.NOOP, Command.QUIT}),
    State.READY: frozenset(
        {
            Command.EHLO,
            Command.HELO,
            Command.STARTTLS,
            Command.AUTH,
            Command.MAIL,
            Command.RSET,
            Command.NOOP,
            Command.QUIT,
        }
    ),
    State.AUTH: frozenset({Command.AUTH_RESPONSE, Command.AUTH_CANCEL}),
    State.STARTTLS: frozenset(),  # the TLS handshake, nothing else (RFC 3207 §4.2)
    State.MAIL: frozenset({Command.RCPT, Command.RSET, Command.NOOP, Command.QUIT}),
    State.RCPT: frozenset({Command.RCPT, Command.DATA, Command.RSET, Command.NOOP, Command.QUIT}),
    State.DATA: frozenset({Command.CONTENT}),
    State.CLOSED: frozenset(),
}
"""What the client may send in each state (RFC 5321 §4.1.4 command order)."""
_PIPELINABLE = frozenset({Command.MAIL, Command.RCPT, Command.RSET})
"""Commands that may be followed by more in one batch; the others end a batch (RFC 2920 §3.1)."""
_EXPECTED = {Command.DATA: Outcome.INTERMEDIATE, Command.AUTH_CANCEL: Outcome.NEGATIVE}
"""The reply class a command is sent hoping for, when it is not POSITIVE."""
_REQUIRED_CODE = {Command.AUTH_CANCEL: 501}
"""The one reply code a command may get. RFC 4954 §4: a server receiving ``*`` MUST reject
the AUTH command with 501; another challenge would have the client cancel forever, and
success would be a login the client called off."""
AUTH_CANCEL_LINE = "*"
"""The line that cancels an AUTH exchange (RFC 4954 §4)."""
SERVICE_CLOSING = 421
"""RFC 5321 §3.8: the server is shutting the channel down, whatever the command was."""


class SmtpSession:
    """One SMTP conversation, sans I/O: checks and encodes commands, pairs replies with them.

    Commands go out through `command` (which refuses one the state does not allow) and
    replies come back from `next_reply` as ``(command, reply)`` pairs, in order, updating
    `state`. With ``pipelining`` set (the server offered PIPELINING) commands may be queued
    before earlier replies arrive, as RFC 2920 allows.
    """

    def __init__(self, endpoint: str | None = None) -> None:
        self.endpoint = endpoint
        self.parser = ReplyParser(endpoint)
        self.state = State.GREETING
        self.pending: collections.deque[Command] = collections.deque([Command.GREETING])
        self.extensions: dict[str, str] = {}
        self.esmtp = False
        self.utf8 = False
        """Whether non-ASCII arguments may be sent (the transaction asked for SMTPUTF8)."""

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.extensions

    @property
    def buffered(self) -> int:
        """Received bytes that no reply has consumed."""
        return self.parser.buffered

    def command(self, command: Command, *args: str) -> bytes:
        """The bytes of *command* with *args*; its reply is then awaited after the queue's."""
        self._check_can_send(command)
        line = encode_command(_VERBS[command], *args, utf8=self.utf8)
        self.pending.append(command)
        return line

    def mail(self, sender: str, *params: str, utf8: bool = False) -> bytes:
        """``MAIL FROM:<sender> params`` (an empty *sender* is the null reverse-path).

        With *utf8* (the caller puts ``SMTPUTF8`` in *params*) the transaction's addresses
        may be non-ASCII (RFC 6531 §3.4).
        """
        check_address(sender, "sender", utf8=utf8)
        previous, self.utf8 = self.utf8, utf8
        try:
            return self.command(Command.MAIL, f"FROM:<{sender}>", *params)
        except BaseException:
            self.utf8 = previous
            raise

    def rcpt(self, recipient: str, *params: str) -> bytes:
        """``RCPT TO:<recipient> params``."""
        if not recipient:
            raise SmtpArgumentError("an empty recipient address")
        check_address(recipient, "recipient", utf8=self.utf8)
        return self.command(Command.RCPT, f"TO:<{recipient}>", *params)

    def auth_response(self, line: str) -> bytes:
        """A line answering an AUTH challenge (base64, or ``*`` to cancel; RFC 4954 §4).

        After a cancel the only valid reply is 501; anything else is `SmtpProtocolError`.
        """
        command = Command.AUTH_CANCEL if line == AUTH_CANCEL_LINE else Command.AUTH_RESPONSE
        self._check_can_send(command)
        check_argument(line, "AUTH response")
        self.pending.append(command)
        return line.encode("ascii") + b"\r\n"

    def content(self, data: EncodedContent) -> bytes:
        """The message content from `encode_data` (valid once DATA was answered with 354)."""
        self._check_can_send(Command.CONTENT)
        self.pending.append(Command.CONTENT)
        return data

    def _check_can_send(self, command: Command) -> None:
        state = self.state
        if not self.pending and self.parser.buffered:
            # Bytes that arrived before we asked anything would be taken for the answer.
            self.state = State.CLOSED
            raise SmtpProtocolError(
                f"{self.endpoint} sent {self.parser.buffered} byte(s) nobody asked for",
                endpoint=self.endpoint,
            )
        if self.pending:
            if not self.pipelining or self.pending[-1] not in _PIPELINABLE:
                raise self._local_error(f"{command.value} while a reply is still awaited")
            for queued in self.pending:  # where the queue leads if every command succeeds
                state = _TRANSITIONS.get(
                    (state, queued, _EXPECTED.get(queued, Outcome.POSITIVE)), State.CLOSED
                )
        if command not in _SENDABLE[state]:
            raise self._local_error(f"{command.value} is not allowed {state.value}")

    def _local_error(self, what: str) -> SmtpProtocolError:
        # A bug in the caller, not the server; still an SMTP error naming the endpoint.
        return SmtpProtocolError(f"{self.endpoint}: {what}", endpoint=self.endpoint)

    def receive(self, data: bytes) -> None:
        """Feed bytes received from the server."""
        self.parser.feed(data)

    def next_reply(self) -> tuple[Command, SmtpReply] | None:
        """The next reply and the command it answers, or ``None`` until more bytes arrive.

        A 421 closes the session whatever it answers. A reply that no command awaits, or
        that the state machine has no transition for, is `SmtpProtocolError`.
        """
        reply = self.parser.next_reply()
        if reply is None:
            return None
        if not self.pending:
            self.state = State.CLOSED
            if reply.code == SERVICE_CLOSING:
                raise SmtpReplyError(reply.code, reply.message, endpoint=self.endpoint)
            raise SmtpProtocolError(
                f"{self.endpoint} sent a reply nobody asked for: {str(reply)[:80]!r}",
                endpoint=self.endpoint,
            )
        command = self.pending.popleft()
        if reply.code == SERVICE_CLOSING:
            self.state = State.CLOSED
            return command, reply
        after = _TRANSITIONS.get((self.state, command, _OUTCOMES[reply.code // 100]))
        required = _REQUIRED_CODE.get(command)
        if required is not None and reply.code != required:
            self.state = State.CLOSED
            raise SmtpProtocolError(
                f"{self.endpoint} answered {command.value} with {str(reply)[:80]!r}; only "
                f"{required} may answer it",
                endpoint=self.endpoint,
            )
        if after is None:
            where = self.state.value
            self.state = State.CLOSED
            raise SmtpProtocolError(
                f"{self.endpoint} answered {command.value} with {str(reply)[:80]!r}, which "
                f"makes no sense {where}",
                endpoint=self.endpoint,
            )
        if after is State.READY:
            self.utf8 = False  # SMTPUTF8 is asked per transaction
        if command in (Command.EHLO, Command.HELO) and after is State.READY:
            self.esmtp = command is Command.EHLO
            self.extensions = parse_ehlo(reply) if self.esmtp else {}
        self.state = after
        return command, reply

    def tls_started(self) -> None:
        """The STARTTLS handshake is done: forget everything learnt in clear (RFC 3207 §4.2)."""
        if self.state is not State.STARTTLS:
            raise self._local_error("a TLS handshake without an accepted STARTTLS")
        self.state = State.CONNECTED
        self.extensions = {}
        self.esmtp = False

    def close(self) -> None:
        """The connection is gone; nothing more can be sent."""
        self.state = State.CLOSED
        self.pending.clear()
