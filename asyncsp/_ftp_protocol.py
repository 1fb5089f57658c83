"""The FTP protocol core, without I/O: replies in, commands out, listings parsed.

Everything here is a pure function or a small object fed bytes (h11's sans-IO style), so
every rule is tested byte by byte. Whatever the server sends, the parsers raise nothing
but `FtpProtocolError`; whatever the caller passes, the encoder never puts a second command
on the wire.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime
import re
from collections.abc import Iterable

from ._errors import FtpArgumentError, FtpProtocolError, FtpReplyError

__all__ = [
    "DATA_CONNECTION_FAILURES",
    "MAX_REPLY_LINE",
    "MAX_REPLY_LINES",
    "SESSION_ENDING",
    "FtpEntry",
    "FtpReply",
    "ReplyParser",
    "announced_size",
    "check_preliminary",
    "check_transfer_end",
    "encode_command",
    "parse_epsv",
    "parse_feat",
    "parse_list_line",
    "parse_listing",
    "parse_mlsd_line",
    "parse_pasv",
    "parse_pwd",
    "parse_size",
]

MAX_REPLY_LINE = 8192
"""Longest reply line accepted, CRLF included (RFC 959 sets none; 8 KiB as for SMTP)."""
MAX_REPLY_LINES = 1000
"""Most lines one multi-line reply may have (a FEAT or STAT reply needs far fewer)."""

DATA_CONNECTION_FAILURES = frozenset({425, 426, 522})
"""Refusals about the data connection itself (RFC 959 §4.2, RFC 4217 §10.2): fatal to a session."""
SESSION_ENDING = frozenset({221, 421})
"""Replies after which the server closes the control connection (RFC 959 §4.2: ``221`` to
QUIT, ``421`` to any command when the service shuts down): the session is over, never pooled."""
_TRANSFER_DONE = frozenset({226, 250})
_FORBIDDEN = frozenset("\r\n\0")
_VERB = re.compile(r"[A-Za-z]{3,4}")
_REPLY_CODE = re.compile(rb"[1-5][0-9][0-9]")
_EPSV = re.compile(r"\(([\x21-\x7e])\1\1([0-9]{1,5})\1\)")
_PASV = re.compile(r"([0-9]{1,3}),([0-9]{1,3}),([0-9]{1,3}),([0-9]{1,3}),([0-9]{1,3}),([0-9]{1,3})")
_ANNOUNCED = re.compile(r"\(([0-9]{1,20}) bytes\)")
_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
_UNIX_MODE = re.compile(r"[-bcdlps][-rwxsStTl]{9}[.+@]?")
# Eight columns, then one separator, then the name as it is: `ls -l` and the servers that
# imitate it (vsftpd, ProFTPD, pure-ftpd) end the date with a single space, so any further
# spaces belong to the name.
_UNIX_LINE = re.compile(r"\s*" + r"(\S+)\s+" * 7 + r"(\S+)\s(.+)")
_UNIX_TIME = re.compile(r"([0-9]{1,2}):([0-9]{2})")
_DOS_LINE = re.compile(
    r"([0-9]{2})-([0-9]{2})-([0-9]{2,4}) +([0-9]{1,2}):([0-9]{2})(AM|PM)? +(<DIR>|[0-9]+) +(.+)",
    re.IGNORECASE,
)
_DOT_NAMES = frozenset({".", ".."})
"""The directory itself and its parent: never entries of a listing, whatever type is claimed."""
_CLOCK_SKEW = datetime.timedelta(days=1)
"""How far in the future a ``Mon DD HH:MM`` date may lie before it is taken as last year's."""


# -- replies -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class FtpReply:
    """One complete reply: its code and its lines of text (code and separator removed)."""

    code: int
    lines: tuple[str, ...]

    @property
    def message(self) -> str:
        """The reply's text, lines joined with newlines."""
        return "\n".join(self.lines)

    @property
    def kind(self) -> int:
        """The first digit: 1 preliminary, 2 completion, 3 intermediate, 4/5 refusal."""
        return self.code // 100


class ReplyParser:
    """Turns the control connection's bytes into `FtpReply` objects (RFC 959 §4.2).

    A multi-line reply starts ``123-text`` and ends at a line ``123 text`` with the same
    code; lines in between are text, whatever they start with. Lines longer than
    `MAX_REPLY_LINE` and replies longer than `MAX_REPLY_LINES` are refused, so a hostile
    server cannot make us buffer without bound. The parser owns its buffer: `buffered` shows
    bytes received past the last complete reply (refused after ``234``, RFC 4217 §6).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._code: bytes | None = None
        self._lines: list[str] = []
        self._pending = 0  # bytes of the lines of an unfinished multi-line reply
        self._replies: list[FtpReply] = []

    @property
    def buffered(self) -> int:
        """Bytes received that are not part of a complete reply (returned or waiting)."""
        return len(self._buffer) + self._pending

    @property
    def waiting(self) -> int:
        """Complete replies received and not yet returned by `next_reply`."""
        return len(self._replies)

    def feed(self, data: bytes) -> None:
        """Add bytes; raises `FtpProtocolError` as soon as they break a limit or the grammar."""
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_REPLY_LINE:
                    raise FtpProtocolError(
                        f"reply line longer than {MAX_REPLY_LINE} bytes (possible flooding)"
                    )
                return
            if end + 1 > MAX_REPLY_LINE:
                raise FtpProtocolError(f"reply line longer than {MAX_REPLY_LINE} bytes")
            line = bytes(self._buffer[:end]).removesuffix(b"\r")
            del self._buffer[: end + 1]
            self._line(line)
            self._pending = 0 if self._code is None else self._pending + end + 1

    def next_reply(self) -> FtpReply | None:
        """The oldest complete reply not yet returned, or ``None``."""
        return self._replies.pop(0) if self._replies else None

    def _line(self, line: bytes) -> None:
        text = line[4:].decode("utf-8", "replace")
        if self._code is None:
            code = line[:3]
            if not _REPLY_CODE.fullmatch(code) or line[3:4] not in (b"", b" ", b"-"):
                shown = line[:40].decode("ascii", "replace")
                raise FtpProtocolError(f"malformed reply line {shown!r}")
            if line[3:4] == b"-":
                self._code = code
                self._lines = [text]
                return
            self._replies.append(FtpReply(int(code), (text,)))
            return
        if len(self._lines) >= MAX_REPLY_LINES:
            raise FtpProtocolError(f"multi-line reply longer than {MAX_REPLY_LINES} lines")
        if line[:3] == self._code and line[3:4] in (b" ", b""):
            self._lines.append(text)
            self._replies.append(FtpReply(int(self._code), tuple(self._lines)))
            self._code, self._lines = None, []
            return
        self._lines.append(line.decode("utf-8", "replace"))


# -- commands ------------------------------------------------------------------------------


def encode_command(verb: str, *args: str) -> bytes:
    """One command line, CRLF-terminated; arguments UTF-8 (RFC 2640).

    CR, LF or NUL in any argument would end the command early and let the rest run as a
    command of its own (command injection through a path), so they are refused
    (`FtpArgumentError`) before anything is sent.
    """
    if not _VERB.fullmatch(verb):
        raise FtpArgumentError(f"{verb!r} is not an FTP command verb")
    for arg in args:
        if not isinstance(arg, str):
            raise FtpArgumentError(f"FTP arguments are str, not {type(arg).__name__}")
        if not _FORBIDDEN.isdisjoint(arg):
            raise FtpArgumentError(
                f"{arg!r} contains CR, LF or NUL, which FTP cannot carry in an argument "
                "(it would inject a command); nothing was sent"
            )
    line = " ".join((verb.upper(), *args)) if args else verb.upper()
    return line.encode("utf-8", "surrogateescape") + b"\r\n"


# -- reply payloads ------------------------------------------------------------------------


def parse_epsv(reply: FtpReply, endpoint: str | None = None) -> int:
    """The port of a ``229`` reply, ``(|||port|)`` with any delimiter (RFC 2428 §3)."""
    match = _EPSV.search(reply.message)
    if match is None:
        raise _passive_error(endpoint, f"its EPSV reply {reply.message[:80]!r} has no (|||port|)")
    return _check_port(int(match.group(2)), reply, endpoint)


def parse_pasv(reply: FtpReply, endpoint: str | None = None) -> int:
    """The port of a ``227`` reply (RFC 959 §4.1.2).

    The host it names is ignored on purpose: data goes to the control connection's peer, so
    a server (or an attacker in its reply) cannot point us at a third host (FTP bounce).
    """
    match = _PASV.search(reply.message)
    if match is None:
        raise _passive_error(endpoint, f"its PASV reply {reply.message[:80]!r} has no h1,...,p2")
    numbers = [int(n) for n in match.groups()]
    if any(n > 255 for n in numbers):
        raise _passive_error(
            endpoint, f"its PASV reply {reply.message[:80]!r} has a number above 255"
        )
    return _check_port(numbers[4] * 256 + numbers[5], reply, endpoint)


def _check_port(port: int, reply: FtpReply, endpoint: str | None) -> int:
    if not 0 < port < 65536:
        raise _passive_error(
            endpoint, f"its passive port {port} in {reply.message[:80]!r} is out of range"
        )
    return port


def _passive_error(endpoint: str | None, what: str) -> FtpProtocolError:
    return FtpProtocolError(
        f"{endpoint or 'the server'}: {what}, so no data connection can be made; its "
        "passive mode needs fixing: tell the server's operator",
        endpoint=endpoint,
    )


def parse_feat(reply: FtpReply) -> dict[str, str]:
    """Features of a ``211`` FEAT reply: upper-case keyword -> parameters (RFC 2389 §3.2).

    Feature lines are those between the first and the last; each is a keyword and optional
    parameters after a space.
    """
    features: dict[str, str] = {}
    for line in reply.lines[1:-1]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            features[keyword.upper()] = params.strip()
    return features


def parse_pwd(reply: FtpReply) -> str:
    """The directory of a ``257`` reply: the quoted name, ``""`` inside it meaning ``"``."""
    text = reply.message
    start = text.find('"')
    if start < 0:
        raise FtpProtocolError(f"257 reply without a quoted path: {text[:80]!r}")
    path: list[str] = []
    i = start + 1
    while i < len(text):
        if text[i] == '"':
            if text[i + 1 : i + 2] == '"':
                path.append('"')
                i += 2
                continue
            return "".join(path)
        path.append(text[i])
        i += 1
    raise FtpProtocolError(f"257 reply with an unterminated path: {text[:80]!r}")


def parse_size(reply: FtpReply) -> int:
    """The size of a ``213`` SIZE reply (RFC 3659 §4)."""
    text = reply.message.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        raise FtpProtocolError(f"malformed SIZE reply {text[:80]!r}")
    return int(text)


def announced_size(reply: FtpReply) -> int | None:
    """The ``(N bytes)`` a ``150`` reply announces, if it does.

    The last one counts: servers write ``... for <name> (<size> bytes).`` (vsftpd, ProFTPD),
    and a name such as ``photo (2 bytes).jpg`` holds a size-like text of its own.
    """
    sizes = _ANNOUNCED.findall(reply.message)
    return int(sizes[-1]) if sizes else None


def check_preliminary(reply: FtpReply, endpoint: str | None = None) -> None:
    """A transfer command's first reply must be ``1xx`` (RFC 959 §5.4); else raise."""
    if reply.kind == 1:
        return
    if reply.kind < 4:
        raise FtpProtocolError(
            f"{endpoint}: a transfer command was answered with {reply.code} instead of 1xx",
            endpoint=endpoint,
        )
    raise FtpReplyError(reply.code, reply.message, endpoint=endpoint)


def check_transfer_end(
    reply: FtpReply,
    *,
    clean: bool,
    announced: int | None,
    count: int | None,
    offset: int = 0,
    endpoint: str | None = None,
) -> None:
    """Accept a finished transfer only if it ended honestly; else raise.

    *clean*: the data connection ended with TLS close_notify (or a plain EOF without TLS).
    *announced*: the ``(N bytes)`` of the ``150`` reply; after ``REST`` servers announce the
    whole file or the rest of it, so either matches. *count*: the bytes received (``None``
    for uploads, which the server counts).
    """
    if reply.code not in _TRANSFER_DONE:
        raise FtpReplyError(reply.code, reply.message, endpoint=endpoint)
    if not clean:
        raise FtpProtocolError(
            f"{endpoint}: the data connection ended without TLS close_notify; the transfer "
            "may be truncated",
            endpoint=endpoint,
        )
    if announced is not None and count is not None and count not in (announced, announced - offset):
        raise FtpProtocolError(
            f"{endpoint}: the server announced {announced} bytes and sent {count}",
            endpoint=endpoint,
        )


# -- listings ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class FtpEntry:
    """One directory entry of `FtpClient.list`."""

    name: str
    """The entry's name exactly as the server sent it (for a link, without its `` -> target``).

    Never ``.`` or ``..``; leading and trailing spaces are part of the name (in the DOS/IIS
    format, whose columns are padded, leading spaces cannot be told from the padding). The
    server chooses it, so check it before building a local path from it: it may hold a path
    separator (``a/b``, ``../../x``, ``/etc/x``; some servers answer ``LIST`` of a file with
    its path), control characters, or a right-to-left override. A name is not refused for
    that: one entry would then deny the whole listing, and only the caller knows which names
    it can use. Escape control characters before printing one to a terminal.
    """
    type: str
    """``"file"``, ``"dir"``, ``"link"`` or ``"other"``."""
    size: int | None = None
    """Size in bytes, when the listing says."""
    modified: datetime.datetime | None = None
    """Last modification (UTC for MLSD; as the server shows it for LIST), when known."""


def parse_mlsd_line(line: str) -> FtpEntry | None:
    """One MLSD line, ``fact=value;...; name`` (RFC 3659 §7.2); ``None`` for the directory
    itself and its parent (``type=cdir``/``pdir``, or the names ``.`` and ``..``)."""
    facts_text, sep, name = line.partition(" ")
    if not sep or not name:
        raise FtpProtocolError(f"malformed MLSD line {line[:80]!r}")
    facts: dict[str, str] = {}
    for fact in facts_text.split(";"):
        key, eq, value = fact.partition("=")
        if eq:
            facts[key.strip().lower()] = value
    kind = facts.get("type", "").lower()
    if kind in ("cdir", "pdir") or name in _DOT_NAMES:
        return None
    if kind == "file":
        entry_type = "file"
    elif kind == "dir":
        entry_type = "dir"
    elif kind.startswith("os.unix=slink") or kind.startswith("os.unix=symlink"):
        entry_type = "link"
    else:
        entry_type = "other"
    return FtpEntry(
        name=name,
        type=entry_type,
        size=_digits(facts.get("size", facts.get("sizd"))),
        modified=_mlsd_time(facts.get("modify")),
    )


def _digits(text: str | None) -> int | None:
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 20:
        return None
    return int(text)


def _mlsd_time(text: str | None) -> datetime.datetime | None:
    """``YYYYMMDDHHMMSS[.sss]`` in UTC (RFC 3659 §2.3); ``None`` when malformed."""
    if text is None:
        return None
    main = text.partition(".")[0]
    if len(main) != 14 or not main.isascii() or not main.isdigit():
        return None
    try:
        return datetime.datetime.strptime(main, "%Y%m%d%H%M%S").replace(tzinfo=datetime.UTC)
    except ValueError:
        return None


def parse_list_line(line: str, *, now: datetime.datetime) -> FtpEntry | None:
    """One LIST line in the Unix ``ls -l`` format, else DOS/IIS; ``None`` for noise lines.

    *now* resolves the year of ``Mon DD HH:MM`` dates (within the last six months).
    Unrecognised lines raise `FtpProtocolError`.
    """
    if not line.strip() or line.lower().startswith("total "):
        return None
    unix = _UNIX_LINE.fullmatch(line)
    if unix is not None and _UNIX_MODE.fullmatch(unix[1]):
        return _unix_entry(unix.groups(), now)
    match = _DOS_LINE.fullmatch(line.lstrip())
    if match is not None:
        return _dos_entry(match)
    raise FtpProtocolError(f"unrecognised LIST line {line[:80]!r}")


def _unix_entry(fields: tuple[str, ...], now: datetime.datetime) -> FtpEntry | None:
    mode, size_text, month, day, year_or_time, name = (
        fields[0],
        fields[4],
        fields[5],
        fields[6],
        fields[7],
        fields[8],
    )
    entry_type = {"-": "file", "d": "dir", "l": "link"}.get(mode[0], "other")
    if entry_type == "link":
        name = name.partition(" -> ")[0]
    if name in _DOT_NAMES:
        return None
    return FtpEntry(
        name=name,
        type=entry_type,
        size=_digits(size_text),
        modified=_unix_time(month, day, year_or_time, now),
    )


def _unix_time(
    month_text: str, day_text: str, year_or_time: str, now: datetime.datetime
) -> datetime.datetime | None:
    month = _MONTHS.get(month_text.lower())
    day = _digits(day_text)
    if month is None or day is None:
        return None
    try:
        clock = _UNIX_TIME.fullmatch(year_or_time)
        if clock is None:
            year = _digits(year_or_time)
            if year is None:
                return None
            return datetime.datetime(year, month, day, tzinfo=datetime.UTC)
        hour, minute = int(clock.group(1)), int(clock.group(2))
        when = datetime.datetime(now.year, month, day, hour, minute, tzinfo=datetime.UTC)
        # `ls` shows a time instead of a year for the last six months: a date "in the future"
        # belongs to last year.
        if when > now + _CLOCK_SKEW:
            when = when.replace(year=now.year - 1)
        return when
    except ValueError:
        return None


def _dos_entry(match: re.Match[str]) -> FtpEntry | None:
    month, day, year, hour, minute, half, size, name = match.groups()
    if name in _DOT_NAMES:
        return None
    modified: datetime.datetime | None
    full_year = int(year)
    if len(year) == 2:  # IIS's two-digit years: 70-99 are 19xx, the rest 20xx
        full_year += 1900 if full_year >= 70 else 2000
    hour_24 = int(hour)
    if half:  # 12-hour clock: 12AM is 0h, 12PM is 12h
        hour_24 = hour_24 % 12 + (12 if half.upper() == "PM" else 0)
    try:
        modified = datetime.datetime(
            full_year, int(month), int(day), hour_24, int(minute), tzinfo=datetime.UTC
        )
    except ValueError:
        modified = None
    is_dir = size.upper() == "<DIR>"
    return FtpEntry(
        name=name,
        type="dir" if is_dir else "file",
        size=None if is_dir else _digits(size),
        modified=modified,
    )


def parse_listing(
    lines: Iterable[str], *, mlsd: bool, now: datetime.datetime | None = None
) -> list[FtpEntry]:
    """Every entry of an MLSD or LIST listing, without ``.`` and ``..``."""
    now = now or datetime.datetime.now(datetime.UTC)
    entries = []
    for line in lines:
        if not line.strip():
            continue
        entry = parse_mlsd_line(line) if mlsd else parse_list_line(line, now=now)
        if entry is not None and entry.name:
            entries.append(entry)
    return entries
