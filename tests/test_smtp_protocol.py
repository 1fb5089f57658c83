"""The SMTP protocol core, byte by byte: reply parser, encoders, EHLO parser, state machine."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncsp import SmtpProtocolError, SmtpReplyError
from asyncsp._errors import SmtpArgumentError
from asyncsp._smtp_protocol import (
    _EHLO_MEMO,
    _EHLO_MEMO_SIZE,
    _EHLO_MEMO_TEXT,
    _SENDABLE,
    _TRANSITIONS,
    MAX_REPLY_LINE,
    MAX_REPLY_LINES,
    Command,
    Outcome,
    ReplyParser,
    SmtpReply,
    SmtpSession,
    State,
    check_address,
    check_argument,
    encode_command,
    encode_data,
    parse_ehlo,
)

# -- reply parser -------------------------------------------------------------------------


def parse_all(data: bytes) -> list[SmtpReply]:
    parser = ReplyParser("smtp://test:25")
    parser.feed(data)
    replies = []
    while (reply := parser.next_reply()) is not None:
        replies.append(reply)
    assert parser.buffered == 0
    return replies


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b"220 ready\r\n", [SmtpReply(220, "ready")]),
        (b"250\r\n", [SmtpReply(250, "")]),
        (b"250 \r\n", [SmtpReply(250, "")]),
        (b"250-a\r\n250-\r\n250 c\r\n", [SmtpReply(250, "a\n\nc")]),
        (b"250 ok\n", [SmtpReply(250, "ok")]),  # a bare LF ends a line too
        (b"250 a\r\n354 go\r\n", [SmtpReply(250, "a"), SmtpReply(354, "go")]),
        (b"550 5.1.1 no\xffone\r\n", [SmtpReply(550, "5.1.1 no\ufffdone")]),
        (b"250 a\rb\r\n", [SmtpReply(250, "a\rb")]),  # a lone CR is text, not a line end
    ],
)
def test_parser_reads_replies(wire: bytes, expected: list[SmtpReply]) -> None:
    assert parse_all(wire) == expected


@pytest.mark.parametrize(
    "wire",
    [
        b"\r\n",
        b"25\r\n",
        b"abc ok\r\n",
        b"25O ok\r\n",
        b"2500 ok\r\n",
        b"250_ok\r\n",
        b"199 too low\r\n",
        b"600 too high\r\n",
        b"+OK pop3\r\n",
        b"\xef\xbb\xbf250 bom\r\n",
        b"250-a\r\n251 b\r\n",  # a multi-line reply with two codes
        b" 25 ok\r\n",  # int() would take " 25", "2_5" and "+25"; a code is three ASCII digits
        b"2_5 ok\r\n",
        b"+25 ok\r\n",
        "\u0662\u0665\u0660 ok\r\n".encode(),  # Arabic-Indic digits are not a code
        b"250-a\r\n2_0 b\r\n",
        b"250 " + b"x" * (MAX_REPLY_LINE - 3) + b"\r\n",
    ],
)
def test_parser_refuses_malformed_replies(wire: bytes) -> None:
    with pytest.raises(SmtpProtocolError, match="smtp://test:25"):
        parse_all(wire)


def test_line_at_the_limit_is_accepted() -> None:
    line = b"250 " + b"x" * (MAX_REPLY_LINE - 4)
    assert len(line) == MAX_REPLY_LINE
    assert parse_all(line + b"\r\n")[0].message == "x" * (MAX_REPLY_LINE - 4)


def test_overlong_line_fails_before_its_end_arrives() -> None:
    parser = ReplyParser()
    parser.feed(b"250 " + b"x" * 16 * 1024)  # no line end yet: 4 MiB could follow
    with pytest.raises(SmtpProtocolError, match="longer than 8192"):
        parser.next_reply()


def test_reply_line_count_limit() -> None:
    at_limit = b"250-x\r\n" * (MAX_REPLY_LINES - 1) + b"250 end\r\n"
    assert len(parse_all(at_limit)[0].lines) == MAX_REPLY_LINES
    with pytest.raises(SmtpProtocolError, match="more than 1000 lines"):
        parse_all(b"250-x\r\n" * MAX_REPLY_LINES + b"250 end\r\n")


def test_byte_by_byte_feeding_and_buffered() -> None:
    wire = b"250-first\r\n250 second\r\n221 bye\r\n"
    parser = ReplyParser()
    replies = []
    for i in range(len(wire)):
        parser.feed(wire[i : i + 1])
        reply = parser.next_reply()
        if reply is not None:
            replies.append(reply)
    assert replies == [SmtpReply(250, "first\nsecond"), SmtpReply(221, "bye")]
    assert parser.buffered == 0
    parser.feed(b"250 x\r\nleft")
    assert parser.next_reply() == SmtpReply(250, "x")
    assert parser.buffered == 4  # what follows a reply stays visible (STARTTLS injection)
    assert parser.next_reply() is None


def test_enhanced_status_code() -> None:
    assert SmtpReply(550, "5.1.1 unknown user").enhanced_status == "5.1.1"
    assert SmtpReply(250, "2.0.0").enhanced_status == "2.0.0"
    assert SmtpReply(250, "ok 2.0.0").enhanced_status is None
    assert SmtpReply(250, "2.0.0x").enhanced_status is None
    assert str(SmtpReply(250, "ok")) == "250 ok"


reply_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30
).map(str.rstrip)
replies_strategy = st.lists(
    st.tuples(st.integers(200, 599), st.lists(reply_text, min_size=1, max_size=4)),
    min_size=1,
    max_size=6,
)


@given(replies_strategy, st.data())
def test_parser_property_any_chunking_gives_the_same_replies(
    replies: list[tuple[int, list[str]]], data: st.DataObject
) -> None:
    wire = b"".join(
        b"".join(
            f"{code}{'-' if i < len(lines) - 1 else ' '}{line}\r\n".encode()
            for i, line in enumerate(lines)
        )
        for code, lines in replies
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    parser = ReplyParser()
    got = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        parser.feed(wire[start:end])
        while (reply := parser.next_reply()) is not None:
            got.append(reply)
    assert got == [SmtpReply(code, "\n".join(lines)) for code, lines in replies]
    assert parser.buffered == 0


# -- command encoder ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    ["a@b\r\nRCPT TO:<x@y>", "a@b\n", "a\rb", "a\0b", "a\tb", "a\x1bb", "a\x7fb", "\x85"],
)
def test_command_arguments_refuse_control_characters(bad: str) -> None:
    with pytest.raises(SmtpArgumentError):
        encode_command("RCPT", f"TO:<{bad}>", utf8=True)
    with pytest.raises(SmtpArgumentError):
        check_address(bad, "recipient", utf8=True)


@pytest.mark.parametrize("bad", ["a@b> NOTIFY=NEVER", "<a@b", "a b@c"])
def test_addresses_refuse_brackets_and_spaces(bad: str) -> None:
    with pytest.raises(SmtpArgumentError, match="bare address"):
        check_address(bad, "recipient")


def test_non_ascii_needs_utf8() -> None:
    with pytest.raises(SmtpArgumentError, match="SMTPUTF8"):
        check_argument("jörg@example.org", "recipient")
    assert encode_command("RCPT", "TO:<jörg@example.org>", utf8=True) == (
        "RCPT TO:<jörg@example.org>\r\n".encode()
    )


@pytest.mark.parametrize(
    ("verb", "args", "wire"),
    [
        ("EHLO", ("[127.0.0.1]",), b"EHLO [127.0.0.1]\r\n"),
        ("MAIL", ("FROM:<>",), b"MAIL FROM:<>\r\n"),
        (
            "MAIL",
            ("FROM:<a@b>", "SIZE=10", "BODY=8BITMIME"),
            b"MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME\r\n",
        ),
        ("QUIT", (), b"QUIT\r\n"),
    ],
)
def test_encode_command(verb: str, args: tuple[str, ...], wire: bytes) -> None:
    assert encode_command(verb, *args) == wire


# -- DATA encoder ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "wire"),
    [
        (b"", b".\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
        (b"a\rb", b"a\r\nb\r\n.\r\n"),
        (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"x\r\n.\r\ny", b"x\r\n..\r\ny\r\n.\r\n"),
        (b"x\r\n..\r\n", b"x\r\n...\r\n.\r\n"),
        # The smuggling shapes: each must stay inside the message.
        (b"x\n.\ny", b"x\r\n..\r\ny\r\n.\r\n"),
        (b"x\r.\ry", b"x\r\n..\r\ny\r\n.\r\n"),
        (b"x\r.\r\ny", b"x\r\n..\r\ny\r\n.\r\n"),
        (b"x\r\n.\ny", b"x\r\n..\r\ny\r\n.\r\n"),
        (b"x\n.\r\ny", b"x\r\n..\r\ny\r\n.\r\n"),
    ],
)
def test_encode_data(body: bytes, wire: bytes) -> None:
    assert encode_data(body) == wire


def unstuff(wire: bytes) -> bytes:
    """What a strict RFC 5321 server makes of the content: lines up to the lone dot."""
    lines = wire.split(b"\r\n")
    end = lines.index(b".")
    assert lines[end + 1 :] == [b""], "bytes after the end of the content"
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines[:end])


@given(
    st.binary(max_size=200) | st.lists(st.sampled_from([b"\r", b"\n", b".", b"a"])).map(b"".join)
)
def test_data_property_only_our_end_can_end_the_message(body: bytes) -> None:
    wire = encode_data(body)
    assert wire.endswith(b".\r\n")
    assert b"\r" not in wire.replace(b"\r\n", b"") and b"\n" not in wire.replace(b"\r\n", b"")
    # The end-of-data sequence appears once, at the very end (or the content is empty).
    assert (b"\r\n" + wire).find(b"\r\n.\r\n") == len(wire) - 3
    normalised = re.sub(rb"\r\n|\r|\n", b"\r\n", body)
    if normalised and not normalised.endswith(b"\r\n"):
        normalised += b"\r\n"
    assert unstuff(wire) == normalised


# -- EHLO parser ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["mx.example greets you"], {}),
        (
            ["mx", "PIPELINING", "size 1000", "8BITMIME", "AUTH PLAIN LOGIN", "STARTTLS"],
            {
                "PIPELINING": "",
                "SIZE": "1000",
                "8BITMIME": "",
                "AUTH": "PLAIN LOGIN",
                "STARTTLS": "",
            },
        ),
        (["mx", "AUTH LOGIN", "AUTH=PLAIN"], {"AUTH": "LOGIN PLAIN"}),
        (["mx", "AUTH=LOGIN"], {"AUTH": "LOGIN"}),
        (
            ["mx", "X-EXPS GSSAPI", "-bad", "", "!!", "ENHANCEDSTATUSCODES"],
            {"X-EXPS": "GSSAPI", "ENHANCEDSTATUSCODES": ""},
        ),
    ],
)
def test_parse_ehlo(lines: list[str], expected: dict[str, str]) -> None:
    assert parse_ehlo(SmtpReply(250, "\n".join(lines))) == expected
    assert parse_ehlo(SmtpReply(250, "\n".join(lines))) == expected  # remembered: the same


def test_parse_ehlo_remembers_extension_lines_not_greetings() -> None:
    first = parse_ehlo(SmtpReply(250, "mx1 hello [10.0.0.1]\nPIPELINING\nSIZE 100"))
    first["SIZE"] = "1"  # each session gets a dict of its own
    second = parse_ehlo(SmtpReply(250, "mx2 hello [10.0.0.2]\nPIPELINING\nSIZE 100"))
    assert second == {"PIPELINING": "", "SIZE": "100"}


def test_parse_ehlo_memo_stays_bounded() -> None:
    for i in range(3 * _EHLO_MEMO_SIZE):
        assert parse_ehlo(SmtpReply(250, f"mx\nSIZE {i}")) == {"SIZE": str(i)}
        assert len(_EHLO_MEMO) <= _EHLO_MEMO_SIZE
    long = "mx\n" + "\n".join(f"X-EXT{i} " + "p" * 60 for i in range(200))
    assert len(parse_ehlo(SmtpReply(250, long))) == 200
    assert all(len(key) <= _EHLO_MEMO_TEXT for key in _EHLO_MEMO)


# -- the session state machine --------------------------------------------------------------


def ready_session(*extensions: str) -> SmtpSession:
    session = SmtpSession("smtp://test:25")
    session.receive(b"220 hi\r\n")
    assert session.next_reply() == (Command.GREETING, SmtpReply(220, "hi"))
    assert session.command(Command.EHLO, "me") == b"EHLO me\r\n"
    session.receive(
        b"250-mx\r\n" + b"".join(f"250-{e}\r\n".encode() for e in extensions) + b"250 HELP\r\n"
    )
    item = session.next_reply()
    assert item is not None and item[0] is Command.EHLO
    assert session.state is State.READY
    return session


def feed(session: SmtpSession, wire: bytes) -> list[tuple[Command, int]]:
    session.receive(wire)
    out = []
    while (item := session.next_reply()) is not None:
        out.append((item[0], item[1].code))
    return out


@pytest.mark.parametrize(
    ("command", "state"),
    [
        (Command.RCPT, State.READY),  # RCPT before MAIL
        (Command.DATA, State.READY),
        (Command.CONTENT, State.READY),
        (Command.AUTH_RESPONSE, State.READY),
        (Command.STARTTLS, State.GREETING),
        (Command.MAIL, State.GREETING),
    ],
)
def test_commands_the_state_does_not_allow_are_refused(command: Command, state: State) -> None:
    session = ready_session() if state is State.READY else SmtpSession("smtp://test:25")
    if state is State.GREETING:
        session.pending.clear()
    with pytest.raises(SmtpProtocolError, match="not allowed"):
        if command is Command.CONTENT:
            session.content(encode_data(b"x"))
        elif command is Command.AUTH_RESPONSE:
            session.auth_response("abc")
        else:
            session.command(command)


def test_a_transaction_step_by_step() -> None:
    session = ready_session()
    session.mail("a@b")
    with pytest.raises(SmtpProtocolError, match="still awaited"):  # no PIPELINING offered
        session.rcpt("c@d")
    assert feed(session, b"250 ok\r\n") == [(Command.MAIL, 250)]
    assert session.state is State.MAIL
    session.rcpt("c@d")
    assert feed(session, b"550 no\r\n") == [(Command.RCPT, 550)]
    assert session.state is State.MAIL
    session.rcpt("e@f")
    feed(session, b"250 ok\r\n")
    session.command(Command.DATA)
    assert feed(session, b"354 go\r\n") == [(Command.DATA, 354)]
    assert session.state is State.DATA
    assert session.content(encode_data(b"hi")) == b"hi\r\n.\r\n"
    assert feed(session, b"250 queued\r\n") == [(Command.CONTENT, 250)]
    assert session.state is State.READY


def test_pipelined_batch_and_replies_in_order() -> None:
    session = ready_session("PIPELINING")
    batch = session.mail("a@b") + session.rcpt("c@d") + session.rcpt("e@f")
    batch += session.command(Command.DATA)
    assert batch == b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nDATA\r\n"
    with pytest.raises(SmtpProtocolError, match="still awaited"):  # DATA ends a batch
        session.command(Command.NOOP)
    got = feed(session, b"250 a\r\n550 b\r\n250 c\r\n354 d\r\n")
    assert got == [
        (Command.MAIL, 250),
        (Command.RCPT, 550),
        (Command.RCPT, 250),
        (Command.DATA, 354),
    ]
    assert session.state is State.DATA


def test_pipelined_batch_after_a_refused_mail() -> None:
    session = ready_session("PIPELINING")
    session.mail("a@b")
    session.rcpt("c@d")
    session.command(Command.DATA)
    assert feed(session, b"550 no\r\n503 seq\r\n503 seq\r\n") == [
        (Command.MAIL, 550),
        (Command.RCPT, 503),
        (Command.DATA, 503),
    ]
    assert session.state is State.READY


@pytest.mark.parametrize(
    ("command", "reply"),
    [(Command.MAIL, b"354 go\r\n"), (Command.RSET, b"500 what\r\n"), (Command.NOOP, b"334 x\r\n")],
)
def test_a_reply_with_no_transition_is_a_protocol_error(command: Command, reply: bytes) -> None:
    session = ready_session()
    if command is Command.MAIL:
        session.mail("a@b")
    else:
        session.command(command)
    with pytest.raises(SmtpProtocolError, match="makes no sense"):
        feed(session, reply)
    assert session.state is State.CLOSED


def test_unsolicited_replies() -> None:
    session = ready_session()
    with pytest.raises(SmtpProtocolError, match="nobody asked for"):
        feed(session, b"250 surprise\r\n")
    session = ready_session()
    with pytest.raises(SmtpReplyError) as info:
        feed(session, b"421 shutting down\r\n")
    assert info.value.code == 421


def test_421_closes_whatever_it_answers() -> None:
    session = ready_session()
    session.mail("a@b")
    assert feed(session, b"421 bye\r\n") == [(Command.MAIL, 421)]
    assert session.state is State.CLOSED
    with pytest.raises(SmtpProtocolError, match="not allowed"):
        session.command(Command.RSET)


def test_starttls_forgets_what_was_learnt_in_clear() -> None:
    session = ready_session("STARTTLS", "AUTH PLAIN")
    session.command(Command.STARTTLS)
    with pytest.raises(SmtpProtocolError, match="awaited"):
        session.command(Command.EHLO, "me")
    feed(session, b"220 go\r\n")
    assert session.state is State.STARTTLS
    with pytest.raises(SmtpProtocolError, match="not allowed"):
        session.command(Command.EHLO, "me")  # nothing but the handshake now
    session.tls_started()
    assert session.state is State.CONNECTED and session.extensions == {}
    with pytest.raises(SmtpProtocolError, match="not allowed"):
        session.mail("a@b")


def test_auth_challenge_loop() -> None:
    session = ready_session("AUTH LOGIN")
    session.command(Command.AUTH, "LOGIN")
    assert feed(session, b"334 VXNlcm5hbWU6\r\n") == [(Command.AUTH, 334)]
    assert session.state is State.AUTH
    with pytest.raises(SmtpProtocolError):
        session.mail("a@b")
    assert session.auth_response("dXNlcg==") == b"dXNlcg==\r\n"
    feed(session, b"334 UGFzc3dvcmQ6\r\n")
    session.auth_response("cGFzcw==")
    assert feed(session, b"235 ok\r\n") == [(Command.AUTH_RESPONSE, 235)]
    assert session.state is State.READY


def cancelled_auth_session() -> SmtpSession:
    session = ready_session("AUTH PLAIN")
    session.command(Command.AUTH, "PLAIN", "AGEAYg==")
    assert feed(session, b"334 \r\n") == [(Command.AUTH, 334)]  # a challenge PLAIN cannot answer
    assert session.auth_response("*") == b"*\r\n"
    return session


@pytest.mark.parametrize(
    "reply", [b"334 \r\n", b"334 more\r\n334 more\r\n", b"235 ok\r\n", b"535 no\r\n", b"250 ok\r\n"]
)
def test_a_cancelled_auth_exchange_takes_only_501(reply: bytes) -> None:
    # RFC 4954 §4: the server MUST reject a cancelled AUTH with 501.
    session = cancelled_auth_session()
    with pytest.raises(SmtpProtocolError, match="only 501"):
        feed(session, reply)
    assert session.state is State.CLOSED
    with pytest.raises(SmtpProtocolError):  # nothing more goes out on this session
        session.auth_response("*")


def test_a_cancelled_auth_exchange_ends_with_its_501() -> None:
    session = cancelled_auth_session()
    assert feed(session, b"501 5.7.0 cancelled\r\n") == [(Command.AUTH_CANCEL, 501)]
    assert session.state is State.READY
    session.command(Command.NOOP)


def test_utf8_is_per_transaction() -> None:
    session = ready_session("SMTPUTF8")
    with pytest.raises(SmtpArgumentError):
        session.mail("jörg@example.org")
    assert not session.pending
    session.mail("jörg@example.org", "SMTPUTF8", utf8=True)
    feed(session, b"250 ok\r\n")
    session.rcpt("zoë@example.org")
    feed(session, b"250 ok\r\n")
    session.command(Command.RSET)
    feed(session, b"250 ok\r\n")
    with pytest.raises(SmtpArgumentError):
        session.mail("jörg@example.org")


def test_the_two_tables_agree() -> None:
    # Whatever may be sent in a state has somewhere to go when it succeeds.
    hoped = {Command.DATA: Outcome.INTERMEDIATE, Command.AUTH_CANCEL: Outcome.NEGATIVE}
    for state, commands in _SENDABLE.items():
        for command in commands:
            outcome = hoped.get(command, Outcome.POSITIVE)
            assert (state, command, outcome) in _TRANSITIONS, (state, command)
    assert set(_SENDABLE) == set(State)
