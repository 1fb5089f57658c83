"""The pure FTP core, byte by byte: replies, commands, passive replies, FEAT, listings."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncsp import FtpProtocolError
from asyncsp._errors import FtpArgumentError
from asyncsp._ftp_protocol import (
    MAX_REPLY_LINE,
    MAX_REPLY_LINES,
    FtpEntry,
    FtpReply,
    ReplyParser,
    announced_size,
    encode_command,
    parse_epsv,
    parse_feat,
    parse_list_line,
    parse_listing,
    parse_mlsd_line,
    parse_pasv,
    parse_pwd,
    parse_size,
)

UTC = datetime.UTC
NOW = datetime.datetime(2024, 3, 10, 12, 0, tzinfo=UTC)


def replies(data: bytes, *, chunk: int | None = None) -> list[FtpReply]:
    parser = ReplyParser()
    step = chunk or len(data) or 1
    for i in range(0, len(data), step):
        parser.feed(data[i : i + step])
    out = []
    while (reply := parser.next_reply()) is not None:
        out.append(reply)
    return out


def reply(text: str) -> FtpReply:
    (only,) = replies(text.encode())
    return only


# -- replies ---------------------------------------------------------------------------------

REPLY_CASES = [
    (b"220 ready\r\n", [(220, ("ready",))]),
    (b"220 ready\n", [(220, ("ready",))]),  # bare LF tolerated
    (b"200\r\n", [(200, ("",))]),
    (b"331 pw\r\n230 ok\r\n", [(331, ("pw",)), (230, ("ok",))]),
    (
        b"211-Features:\r\n MDTM\r\n SIZE\r\n211 End\r\n",
        [(211, ("Features:", " MDTM", " SIZE", "End"))],
    ),
    # A line starting with another code (or the same code and "-") is text inside the reply.
    (
        b"123-first\r\n456 other\r\n123-still\r\n123 last\r\n",
        [(123, ("first", "456 other", "123-still", "last"))],
    ),
    (b"220-a\r\n220\r\n", [(220, ("a", ""))]),
    (b"550 caf\xc3\xa9 \xff\r\n", [(550, ("café \ufffd",))]),
]


@pytest.mark.parametrize(("data", "expected"), REPLY_CASES)
@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_reply_parser(
    data: bytes, expected: list[tuple[int, tuple[str, ...]]], chunk: int | None
) -> None:
    got = replies(data, chunk=chunk)
    assert [(r.code, r.lines) for r in got] == expected


@pytest.mark.parametrize(
    "data",
    [b"hello\r\n", b"22 short\r\n", b"620 bad class\r\n", b"220x\r\n", b"abc def\r\n", b"\r\n"],
)
def test_malformed_reply_lines_are_refused(data: bytes) -> None:
    with pytest.raises(FtpProtocolError):
        replies(data)


def test_reply_line_length_is_bounded_before_the_line_ends() -> None:
    parser = ReplyParser()
    parser.feed(b"220 " + b"x" * (MAX_REPLY_LINE - 10))
    with pytest.raises(FtpProtocolError, match="longer than"):
        parser.feed(b"x" * 100)  # no newline yet: refused while it is still arriving


def test_a_line_of_exactly_the_limit_is_accepted() -> None:
    line = b"220 " + b"x" * (MAX_REPLY_LINE - 6) + b"\r\n"
    assert len(line) == MAX_REPLY_LINE
    assert replies(line)[0].code == 220
    with pytest.raises(FtpProtocolError):
        replies(b"220 " + b"x" * (MAX_REPLY_LINE - 5) + b"\r\n")


def test_multi_line_reply_line_count_is_bounded() -> None:
    parser = ReplyParser()
    parser.feed(b"211-start\r\n")
    with pytest.raises(FtpProtocolError, match="lines"):
        for _ in range(MAX_REPLY_LINES + 1):
            parser.feed(b" more\r\n")


def test_buffered_counts_partial_lines_and_unfinished_replies() -> None:
    parser = ReplyParser()
    parser.feed(b"234 go ahead\r\n")
    assert parser.buffered == 0 and parser.waiting == 1
    parser.feed(b"2")
    assert parser.buffered == 1
    parser = ReplyParser()
    parser.feed(b"234 go\r\n230-injected\r\n")
    assert parser.buffered == len(b"230-injected\r\n")
    assert parser.next_reply() == FtpReply(234, ("go",))
    assert parser.next_reply() is None


def test_reply_message_and_kind() -> None:
    r = reply("211-a\r\n b\r\n211 c\r\n")
    assert r.message == "a\n b\nc" and r.kind == 2


# -- commands --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "wire"),
    [
        (("NOOP",), b"NOOP\r\n"),
        (("retr", "a b.txt"), b"RETR a b.txt\r\n"),
        (("PASS", ""), b"PASS \r\n"),
        (("STOR", "caf\u00e9"), "STOR caf\u00e9\r\n".encode()),
        (("RETR", "bad\udcff"), b"RETR bad\xff\r\n"),  # a name read from a listing goes back as is
        (("RNFR", "x", "y"), b"RNFR x y\r\n"),
    ],
)
def test_encode_command(args: tuple[str, ...], wire: bytes) -> None:
    assert encode_command(*args) == wire


@pytest.mark.parametrize("bad", ["a\rb", "a\nDELE x", "a\0", "\r\n", "x\r"])
def test_encode_command_refuses_injection_in_every_argument(bad: str) -> None:
    with pytest.raises(FtpArgumentError, match="CR, LF or NUL"):
        encode_command("RETR", bad)
    with pytest.raises(FtpArgumentError):
        encode_command("RNFR", "ok", bad)
    assert issubclass(FtpArgumentError, ValueError)


@pytest.mark.parametrize("verb", ["", "RE", "RETRX", "RE TR", "R\r\nT", "RET1"])
def test_encode_command_refuses_bad_verbs(verb: str) -> None:
    with pytest.raises(FtpArgumentError):
        encode_command(verb)


@given(st.text())
def test_encoded_commands_are_always_one_line(arg: str) -> None:
    try:
        wire = encode_command("RETR", arg)
    except FtpArgumentError:
        assert any(c in arg for c in "\r\n\0")
        return
    assert wire.count(b"\n") == 1 and wire.endswith(b"\r\n") and b"\0" not in wire
    assert wire.count(b"\r") == 1


# -- passive replies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "port"),
    [
        ("229 Entering Extended Passive Mode (|||6446|)", 6446),
        ("229 ok (!!!1!)", 1),
        ("229 (###65535#)", 65535),
    ],
)
def test_parse_epsv(text: str, port: int) -> None:
    assert parse_epsv(reply(text + "\r\n")) == port


@pytest.mark.parametrize(
    "text",
    [
        "229 (|||0|)",
        "229 (|||65536|)",
        "229 (|||99999|)",
        "229 no port",
        "229 (||6446|)",
        "229 (|!|6446|)",
    ],
)
def test_parse_epsv_refuses(text: str) -> None:
    with pytest.raises(FtpProtocolError):
        parse_epsv(reply(text + "\r\n"))


@pytest.mark.parametrize(
    ("text", "port"),
    [
        ("227 Entering Passive Mode (127,0,0,1,4,1)", 1025),
        ("227 =10,9,8,7,255,255", 65535),  # the host is ignored, whatever it says
        ("227 Entering Passive Mode (192,0,2,1,0,21).", 21),
    ],
)
def test_parse_pasv_returns_only_the_port(text: str, port: int) -> None:
    assert parse_pasv(reply(text + "\r\n")) == port


@pytest.mark.parametrize(
    "text", ["227 (127,0,0,1,0,0)", "227 (127,0,0,1,256,1)", "227 (300,0,0,1,4,1)", "227 none"]
)
def test_parse_pasv_refuses(text: str) -> None:
    with pytest.raises(FtpProtocolError):
        parse_pasv(reply(text + "\r\n"))


@pytest.mark.parametrize(
    ("parse", "text"),
    [(parse_epsv, "229 (|||0|)"), (parse_epsv, "229 none"), (parse_pasv, "227 (1,2,3,4,256,0)")],
)
def test_passive_errors_name_the_endpoint_and_what_to_do(
    parse: Callable[[FtpReply, str | None], int], text: str
) -> None:
    with pytest.raises(FtpProtocolError) as caught:
        parse(reply(text + "\r\n"), "ftp://example.org:21")
    assert caught.value.endpoint == "ftp://example.org:21"
    assert str(caught.value).startswith("ftp://example.org:21: ")
    assert "tell the server's operator" in str(caught.value)


# -- other payloads --------------------------------------------------------------------------


def test_parse_feat() -> None:
    r = reply(
        "211-Features:\r\n MDTM\r\n REST STREAM\r\n mlst type*;size*;\r\n UTF8\r\n211 End\r\n"
    )
    assert parse_feat(r) == {"MDTM": "", "REST": "STREAM", "MLST": "type*;size*;", "UTF8": ""}
    assert parse_feat(reply("211 no features\r\n")) == {}


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('257 "/home/a" is current', "/home/a"),
        ('257 "/say ""hi""" ok', '/say "hi"'),
        ('257 ""', ""),
    ],
)
def test_parse_pwd(text: str, path: str) -> None:
    assert parse_pwd(reply(text + "\r\n")) == path


@pytest.mark.parametrize("text", ["257 /no/quotes", '257 "unterminated'])
def test_parse_pwd_refuses(text: str) -> None:
    with pytest.raises(FtpProtocolError):
        parse_pwd(reply(text + "\r\n"))


def test_parse_size_and_announced_size() -> None:
    assert parse_size(reply("213 12345\r\n")) == 12345
    for bad in ("213 -1", "213 1.5", "213 ", "213 \u0661"):
        with pytest.raises(FtpProtocolError):
            parse_size(reply(bad + "\r\n"))
    assert (
        announced_size(reply("150 Opening BINARY mode data connection for f (4096 bytes).\r\n"))
        == 4096
    )
    assert announced_size(reply("150 Here comes the directory listing.\r\n")) is None


@pytest.mark.parametrize(
    ("text", "size"),
    [
        # vsftpd: "for <name> (<size> bytes)."; the name may hold a size-like text of its own.
        ("150 Opening BINARY mode data connection for photo (2 bytes).jpg (4096 bytes).", 4096),
        ("150 Opening BINARY mode data connection for x (9999 bytes) (12 bytes).", 12),
        ("150-for a (1 bytes)\r\n150 b (7 bytes)", 7),
    ],
)
def test_announced_size_is_the_last_in_the_reply(text: str, size: int) -> None:
    assert announced_size(reply(text + "\r\n")) == size


# -- listings --------------------------------------------------------------------------------

MLSD_CASES = [
    (
        "type=file;size=42;modify=20240102030405; a b.txt",
        FtpEntry("a b.txt", "file", 42, datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ),
    (
        "Type=DIR;Modify=20240102030405.123; sub",
        FtpEntry("sub", "dir", None, datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ),
    ("type=OS.unix=slink:/x;size=3; ln", FtpEntry("ln", "link", 3, None)),
    ("type=device; dev", FtpEntry("dev", "other", None, None)),
    ("size=abc;modify=2024; odd", FtpEntry("odd", "other", None, None)),
    ("type=cdir; .", None),
    ("type=pdir; ..", None),
]


@pytest.mark.parametrize(("line", "entry"), MLSD_CASES)
def test_parse_mlsd_line(line: str, entry: FtpEntry | None) -> None:
    assert parse_mlsd_line(line) == entry


def test_parse_mlsd_line_refuses_a_line_without_a_name() -> None:
    with pytest.raises(FtpProtocolError):
        parse_mlsd_line("type=file;size=1;")


LIST_CASES = [
    (
        "-rw-r--r--    1 0        0          4096 Mar 03  2020 report.pdf",
        FtpEntry("report.pdf", "file", 4096, datetime.datetime(2020, 3, 3, tzinfo=UTC)),
    ),
    (
        "drwxr-xr-x    2 ftp      ftp          17 Jan 09 11:22 my dir",
        FtpEntry("my dir", "dir", 17, datetime.datetime(2024, 1, 9, 11, 22, tzinfo=UTC)),
    ),
    # "Dec 24" shown with a time in March 2024 is last year's December.
    (
        "-rw-r--r--    1 u g 1 Dec 24 10:00 old",
        FtpEntry("old", "file", 1, datetime.datetime(2023, 12, 24, 10, 0, tzinfo=UTC)),
    ),
    (
        "lrwxrwxrwx    1 0 0 7 Feb 01  2021 latest -> v1.2/",
        FtpEntry("latest", "link", 7, datetime.datetime(2021, 2, 1, tzinfo=UTC)),
    ),
    ("crw-rw-rw-    1 0 0 5 Feb 31  2021 tty", FtpEntry("tty", "other", 5, None)),
    ("-rw-r--r--+   1 u g 9 Foo 01  2021 acl", FtpEntry("acl", "file", 9, None)),
    (
        "01-02-20  10:00AM       <DIR>          Program Files",
        FtpEntry("Program Files", "dir", None, datetime.datetime(2020, 1, 2, 10, 0, tzinfo=UTC)),
    ),
    (
        "12-31-99  12:30PM                 1234 readme.txt",
        FtpEntry("readme.txt", "file", 1234, datetime.datetime(1999, 12, 31, 12, 30, tzinfo=UTC)),
    ),
    (
        "07-04-2023  12:05AM                 1 a",
        FtpEntry("a", "file", 1, datetime.datetime(2023, 7, 4, 0, 5, tzinfo=UTC)),
    ),
    ("13-45-20  99:99PM  <DIR> bad date", FtpEntry("bad date", "dir", None, None)),
    ("total 12", None),
    ("drwxr-xr-x    2 0 0 6 Jan 01  2020 .", None),
    ("drwxr-xr-x    2 0 0 6 Jan 01  2020 ..", None),
]


@pytest.mark.parametrize(("line", "entry"), LIST_CASES)
def test_parse_list_line(line: str, entry: FtpEntry | None) -> None:
    assert parse_list_line(line, now=NOW) == entry


@pytest.mark.parametrize(
    "line", ["garbage", "-rw-r--r-- 1 u g", "13:45 <DIR> x", "?rw-r--r-- 1 u g 1 Jan 1 2020 x"]
)
def test_parse_list_line_refuses_unknown_formats(line: str) -> None:
    with pytest.raises(FtpProtocolError):
        parse_list_line(line, now=NOW)


UNSAFE_NAMES = ["../../x", "/etc/x", "a/b", "a\x1b[2Jb\x07", "..\\up", "\u202egpj.exe"]


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ("type=file;size=1;  lead", " lead"),  # RFC 3659 §7.2: one space, then the name
        ("type=file;size=1; trail ", "trail "),
        *((f"type=file;size=1; {name}", name) for name in UNSAFE_NAMES),
    ],
)
def test_mlsd_names_are_exact(line: str, name: str) -> None:
    entry = parse_mlsd_line(line)
    assert entry is not None and entry.name == name


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ("-rw-r--r-- 1 u g 1 Jan 01  2020  lead", " lead"),  # one space ends the date
        ("-rw-r--r--    1 0   0     1 Jan 01 10:00    three", "   three"),
        ("-rw-r--r-- 1 u g 1 Jan 01  2020 trail ", "trail "),
        ("lrwxrwxrwx 1 u g 1 Jan 01  2020  ln -> target", " ln"),
        *((f"-rw-r--r-- 1 u g 1 Jan 01  2020 {name}", name) for name in UNSAFE_NAMES),
    ],
)
def test_list_names_are_exact(line: str, name: str) -> None:
    entry = parse_list_line(line, now=NOW)
    assert entry is not None and entry.name == name


@pytest.mark.parametrize(
    "line",
    [
        "type=file; ..",
        "type=dir; .",
        "type=OS.unix=slink:/; ..",
        "size=0; .",
        "type=cdir; /home/user",  # RFC 3659 §7.5.1: the listed directory, under any name
        "type=pdir; /home",
    ],
)
def test_mlsd_never_lists_the_directory_or_its_parent(line: str) -> None:
    assert parse_mlsd_line(line) is None


@pytest.mark.parametrize(
    "line",
    [
        "-rw-r--r-- 1 u g 1 Jan 01  2020 ..",
        "lrwxrwxrwx 1 u g 1 Jan 01  2020 . -> /",
        "01-02-20  10:00AM       <DIR>          ..",
        "01-02-20  10:00AM                    1 .",
    ],
)
def test_list_never_lists_the_directory_or_its_parent(line: str) -> None:
    assert parse_list_line(line, now=NOW) is None


def test_parse_listing_skips_noise() -> None:
    lines = [
        "total 2",
        "",
        "drwxr-xr-x 2 0 0 6 Jan 01  2020 .",
        "-rw-r--r-- 1 0 0 3 Jan 01  2020 f",
    ]
    assert [e.name for e in parse_listing(lines, mlsd=False, now=NOW)] == ["f"]
    assert [e.name for e in parse_listing(["type=cdir; .", "type=file; g"], mlsd=True)] == ["g"]


# -- arbitrary input: FtpProtocolError or a result, nothing else -------------------------------


@given(st.lists(st.binary(max_size=200), max_size=20))
def test_reply_parser_raises_only_protocol_errors(chunks: list[bytes]) -> None:
    parser = ReplyParser()
    try:
        for chunk in chunks:
            parser.feed(chunk)
            while (r := parser.next_reply()) is not None:
                assert 100 <= r.code <= 599
    except FtpProtocolError:
        pass


@given(
    st.lists(
        st.sampled_from([b"211-", b"211 ", b"211", b" x", b"\r\n", b"\n", b"999", b"-"]),
        max_size=40,
    )
)
def test_reply_parser_on_reply_shaped_noise(parts: list[bytes]) -> None:
    with contextlib.suppress(FtpProtocolError):
        replies(b"".join(parts))


@given(st.integers(100, 599), st.text(max_size=100))
def test_payload_parsers_raise_only_protocol_errors(code: int, text: str) -> None:
    r = FtpReply(code, tuple(text.split("\n")))
    for parse in (parse_epsv, parse_pasv, parse_pwd, parse_size):
        with contextlib.suppress(FtpProtocolError):
            parse(r)
    assert isinstance(parse_feat(r), dict)
    assert announced_size(r) is None or announced_size(r) >= 0


@given(st.text(max_size=200))
def test_listing_parsers_raise_only_protocol_errors(line: str) -> None:
    for mlsd in (True, False):
        with contextlib.suppress(FtpProtocolError):
            parse_listing([line], mlsd=mlsd, now=NOW)


@given(
    st.sampled_from(["-", "d", "l", "c"]),
    st.integers(0, 10**15),
    st.sampled_from(["Jan", "Feb", "Xyz", "dec"]),
    st.integers(0, 40),
    st.sampled_from(["2020", "10:00", "25:99", "0", "99999"]),
    st.text(min_size=1, max_size=30).filter(lambda s: s.strip() == s and s not in (".", "..")),
)
def test_unix_list_lines_round_trip_name_and_size(
    kind: str, size: int, month: str, day: int, when: str, name: str
) -> None:
    line = f"{kind}rw-r--r-- 1 u g {size} {month} {day} {when} {name}"
    try:
        entry = parse_list_line(line, now=NOW)
    except FtpProtocolError:
        assert any(c.isspace() for c in name) or not name  # split() can only fail on odd names
        return
    if entry is not None and kind != "l" and " " not in name:
        assert entry.name == name and entry.size == size


@given(st.text(min_size=1, max_size=30).filter(lambda s: "\n" not in s and s not in (".", "..")))
def test_unix_list_names_survive_exactly(name: str) -> None:
    entry = parse_list_line(f"-rw-r--r-- 1 u g 7 Jan 01  2020 {name}", now=NOW)
    assert entry is not None and entry.name == name and entry.size == 7
    mlsd = parse_mlsd_line(f"type=file;size=7; {name}")
    assert mlsd is not None and mlsd.name == name
