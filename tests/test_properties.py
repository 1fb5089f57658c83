"""Property tests (hypothesis) for what the per-module tests leave open.

The SMTP reply parser on arbitrary bytes (only its own error, never more buffered than its
limits allow); the DATA encoding as a real server (aiosmtpd) decodes it, smuggling shapes
included; a failed security-protocol assignment leaving the previous setting in force; and
every spelling of one endpoint finding the one service point.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asyncsp
from asyncsp import (
    AsyncspError,
    ConnectionManager,
    InvalidSecurityProtocolError,
    PolicyError,
    SecurityProtocol,
    SmtpProtocolError,
)
from asyncsp._smtp_protocol import MAX_REPLY_LINE, MAX_REPLY_LINES, ReplyParser

from .test_smtp import LOCAL, mail_server

# -- the SMTP reply parser on arbitrary bytes ---------------------------------------------

reply_pieces = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"\r\n", b"\n", b"\r", b"250 ", b"250-", b"220 ok\r\n", b"550-5.1.1 x\r\n"]),
    # Around the line limit, and around the line-count limit of one reply.
    st.integers(MAX_REPLY_LINE - 6, MAX_REPLY_LINE + 6).map(lambda n: b"2" * n),
    st.integers(MAX_REPLY_LINES - 3, MAX_REPLY_LINES + 1).map(lambda n: b"250-x\r\n" * n),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(reply_pieces, max_size=25))
def test_reply_parser_raises_only_its_error_and_buffers_within_its_limits(
    pieces: list[bytes],
) -> None:
    parser = ReplyParser("smtp://test:25")
    fed = bytearray()
    try:
        for piece in pieces:
            parser.feed(piece)
            fed += piece
            while (reply := parser.next_reply()) is not None:
                assert 200 <= reply.code <= 599
                assert len(reply.lines) <= MAX_REPLY_LINES
            # What waits for more bytes is at most one reply short of its end: fewer than
            # MAX_REPLY_LINES complete lines, then one partial line within the line limit.
            pending = bytes(fed[len(fed) - parser.buffered :])
            assert pending.count(b"\n") < MAX_REPLY_LINES
            assert len(pending) - (pending.rfind(b"\n") + 1) <= MAX_REPLY_LINE + 1
    except SmtpProtocolError as exc:
        assert "smtp://test:25" in str(exc)


# -- DATA as a real server decodes it ------------------------------------------------------

# The end-of-data shapes of SMTP smuggling (bare LF or CR around the dot), then a second
# transaction the attacker wants the server to run.
SMUGGLED = b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nforged\r\n"
line_ends = st.sampled_from([b"\r\n", b"\n", b"\r"])
smuggling_bodies = st.builds(
    lambda before, a, b, tail: before + a + b"." + b + SMUGGLED + tail,
    st.binary(max_size=40),
    line_ends,
    line_ends,
    st.sampled_from([b"", b".\r\n", b"\r\n.\r\n", b"\n.\n"]),
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from([b"\r", b"\n", b".", b"..", b"a", b"\r\n.\r\n"])).map(b"".join),
    smuggling_bodies,
)


def normalised(body: bytes) -> bytes:
    """*body* with every line end as CRLF and a final CRLF (RFC 5321 §2.3.8, §4.1.1.4)."""
    text = re.sub(rb"\r\n|\r|\n", b"\r\n", body)
    return text if not text or text.endswith(b"\r\n") else text + b"\r\n"


def test_data_arrives_as_sent_and_nothing_else_arrives() -> None:
    """Whatever the body, aiosmtpd receives one message per send: the body, normalised."""
    with mail_server(None) as server:
        loop = asyncio.new_event_loop()
        mgr = ConnectionManager()
        sent = 0
        try:

            async def send(body: bytes) -> None:
                async with mgr.smtp(LOCAL, server.port, security="none", timeout=10) as client:
                    result = await client.sendmail("a@example.org", ["b@example.org"], body)
                    assert result.accepted == ["b@example.org"]

            @settings(max_examples=150, deadline=None)
            @given(bodies)
            def check(body: bytes) -> None:
                nonlocal sent
                loop.run_until_complete(send(body))
                sent += 1
                assert len(server.box.messages) == sent  # no second message was smuggled
                sender, recipients, content, _ = server.box.messages[-1]
                assert (sender, recipients) == ("a@example.org", ["b@example.org"])
                assert content == normalised(body)

            check()
        finally:
            loop.run_until_complete(mgr.aclose())
            loop.close()
    assert sent > 0


# -- a failed security-protocol assignment changes nothing ---------------------------------

protocol_values = st.one_of(
    st.text(max_size=20),
    st.lists(
        st.sampled_from(["Tls12", "TLS13", "tlsv1.2", "SystemDefault", "tls", "Ssl3", "12288"]),
        min_size=1,
        max_size=3,
    ).map(", ".join),
    st.integers(min_value=-(2**16), max_value=2**16),
    st.sampled_from(list(SecurityProtocol.__members__.values())),
)


@settings(max_examples=300)
@given(st.lists(protocol_values, min_size=1, max_size=5))
def test_failed_assignments_leave_the_previous_setting_in_force(values: list[object]) -> None:
    mgr = ConnectionManager()
    for value in values:
        before = mgr.policy
        try:
            mgr.security_protocol = value  # type: ignore[assignment]
        except (InvalidSecurityProtocolError, PolicyError) as exc:
            assert isinstance(exc, AsyncspError) and isinstance(exc, ValueError)
            assert mgr.policy is before  # nothing changed, not even a rebuilt equal policy
            continue
        expected = (
            SecurityProtocol.parse(value)
            if isinstance(value, str)
            else SecurityProtocol.validate(value)
        )
        assert mgr.security_protocol == expected
        assert mgr.policy == before.__class__(
            **{**_fields(before), "protocols": expected}  # only the versions changed
        )


@settings(max_examples=200)
@given(protocol_values)
def test_failed_default_assignment_leaves_the_default_in_force(value: object) -> None:
    before = asyncsp.defaults.policy
    try:
        asyncsp.defaults.security_protocol = value  # type: ignore[assignment]
    except (InvalidSecurityProtocolError, PolicyError):
        assert asyncsp.defaults.policy is before
        return
    finally:
        asyncsp.defaults.policy = before  # each example starts from the same default
    assert not isinstance(value, str)  # the process default takes members and ints only


def _fields(policy: asyncsp.TlsPolicy) -> dict[str, object]:
    return {name: getattr(policy, name) for name in policy.__dataclass_fields__}


# -- every spelling of one endpoint is one service point -----------------------------------

DEFAULTS = {"http": 80, "https": 443, "smtp": 25, "smtps": 465, "ftp": 21, "ftps": 990}
dns_names = st.from_regex(r"[a-z][a-z0-9-]{0,8}(\.[a-z][a-z0-9-]{0,8}){0,2}", fullmatch=True)
hosts = st.one_of(
    dns_names,
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)


def spell(data: st.DataObject, scheme: str, host: str, port: int) -> str:
    """One of the many ways to write scheme://host:port as a URL."""
    draw = data.draw
    address = ip_or_none(host)
    if isinstance(address, ipaddress.IPv6Address):
        written = f"[{draw(st.sampled_from([address.compressed, address.exploded]))}]"
    else:
        written = host + (draw(st.sampled_from(["", "."])) if address is None else "")
    written = "".join(c.upper() if draw(st.booleans()) else c for c in written)
    scheme_written = "".join(c.upper() if draw(st.booleans()) else c for c in scheme)
    if scheme in DEFAULTS and port == DEFAULTS[scheme] and draw(st.booleans()):
        netloc = written  # the default port left out
    else:
        netloc = f"{written}:{port}"
    userinfo = draw(st.sampled_from(["", "user@", "user:secret@"]))
    tail = draw(st.sampled_from(["", "/", "/a/b?c=d", "/#frag", "?q"]))
    return f"{scheme_written}://{userinfo}{netloc}{tail}"


@settings(max_examples=300)
@given(
    st.sampled_from(sorted([*DEFAULTS, "tcp", "tls"])),
    hosts,
    st.integers(min_value=1, max_value=65535),
    st.data(),
)
def test_every_spelling_of_an_endpoint_finds_one_service_point(
    scheme: str, host: str, port: int, data: st.DataObject
) -> None:
    mgr = ConnectionManager()
    canonical = mgr.find_service_point(f"{scheme}://{spell_plain(host)}:{port}")
    for _ in range(3):
        url = spell(data, scheme, host, port)
        assert mgr.find_service_point(url) is canonical, url
    assert mgr.find_service_point(canonical.address) is canonical
    assert len(mgr.service_points) == 1
    assert (canonical.scheme, canonical.port) == (scheme, port)
    address = ip_or_none(host)
    assert canonical.host == (host if address is None else address.compressed)


def spell_plain(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def ip_or_none(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@pytest.mark.parametrize("bad", ["", " ", "x", "tcp://h", "https://h:0", "https://[::1"])
def test_bad_spellings_are_value_errors(bad: str) -> None:
    with pytest.raises(ValueError):
        ConnectionManager().find_service_point(bad)
