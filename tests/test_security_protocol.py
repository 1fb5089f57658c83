"""SecurityProtocol: .NET values, parsing, validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncsp import InvalidSecurityProtocolError, SecurityProtocol

SP = SecurityProtocol


def test_values_are_dotnet_security_protocol_type() -> None:
    assert [
        (m.name, int(m)) for m in (SP.SYSTEM_DEFAULT, SP.SSL3, SP.TLS, SP.TLS11, SP.TLS12, SP.TLS13)
    ] == [
        ("SYSTEM_DEFAULT", 0),
        ("SSL3", 48),
        ("TLS", 192),
        ("TLS11", 768),
        ("TLS12", 3072),
        ("TLS13", 12288),
    ]


def test_error_is_asyncsp_and_value_error() -> None:
    import asyncsp

    assert issubclass(InvalidSecurityProtocolError, asyncsp.AsyncspError)
    assert issubclass(InvalidSecurityProtocolError, ValueError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Tls12, Tls13", SP.TLS12 | SP.TLS13),
        ("tls12|tls13", SP.TLS12 | SP.TLS13),
        ("TLS13", SP.TLS13),
        ("SystemDefault", SP.SYSTEM_DEFAULT),
        ("system_default", SP.SYSTEM_DEFAULT),
        ("TLSv1.2", SP.TLS12),
        ("TLSv1", SP.TLS),
        ("TLSv1.1 TLSv1.3", SP.TLS11 | SP.TLS13),
        ("Tls", SP.TLS),
        ("12288", SP.TLS13),
        ("3072 | 12288", SP.TLS12 | SP.TLS13),
        ("15360", SP.TLS12 | SP.TLS13),
        ("0", SP.SYSTEM_DEFAULT),
        ("  tls12 ,  TLS13  ", SP.TLS12 | SP.TLS13),
        ("Ssl3", SP.SSL3),
    ],
)
def test_parse_accepts_dotnet_openssl_and_numbers(text: str, expected: SP) -> None:
    assert SP.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("Tls14", "Tls14"),
        ("Tls12, bogus", "bogus"),
        ("TLSv1.4", "TLSv1.4"),
        ("1", None),
        ("1024", None),
        ("99999", None),
        ("-1", "-1"),
    ],
)
def test_parse_rejects_unknown_tokens_naming_them(text: str, token: str | None) -> None:
    with pytest.raises(InvalidSecurityProtocolError) as info:
        SP.parse(text)
    message = str(info.value)
    if token is not None:
        assert repr(token) in message
        assert "Tls12" in message and "TLSv1.3" in message  # lists the valid names


@pytest.mark.parametrize("text", ["", "   ", ",", " | "])
def test_parse_rejects_empty(text: str) -> None:
    with pytest.raises(InvalidSecurityProtocolError, match="empty"):
        SP.parse(text)


def test_system_default_cannot_be_mixed() -> None:
    with pytest.raises(InvalidSecurityProtocolError, match="SystemDefault"):
        SP.parse("SystemDefault, Tls12")


@pytest.mark.parametrize("value", [1, 1024, 1 << 20, -1, 3072 + 1])
def test_validate_rejects_bits_outside_members(value: int) -> None:
    with pytest.raises(InvalidSecurityProtocolError):
        SP.validate(value)


@pytest.mark.parametrize("value", ["TLS12", 1.5, None, True])
def test_validate_rejects_non_ints(value: object) -> None:
    with pytest.raises(InvalidSecurityProtocolError):
        SP.validate(value)


def test_members_and_versions() -> None:
    assert (SP.TLS | SP.TLS12).members == (SP.TLS, SP.TLS12)
    assert SP.SYSTEM_DEFAULT.members == ()
    assert (SP.TLS | SP.TLS12).allows(SP.TLS12)
    assert not (SP.TLS | SP.TLS12).allows(SP.TLS11)
    assert SP.from_version_string("TLSv1.3") is SP.TLS13


_SINGLE = [SP.TLS, SP.TLS11, SP.TLS12, SP.TLS13]


@given(st.sets(st.sampled_from(_SINGLE), min_size=1))
def test_parse_round_trips_names_and_numbers(members: set[SP]) -> None:
    value = SP(sum(int(m) for m in members))
    by_name = ", ".join(m.name or "" for m in members)
    assert SP.parse(by_name) == value
    assert SP.parse(str(int(value))) == value
    assert SP.parse(by_name.lower().replace(", ", "|")) == value
    assert SP.validate(int(value)) == value


@given(st.text(max_size=30))
def test_parse_raises_only_invalid_security_protocol_error(text: str) -> None:
    try:
        result = SP.parse(text)
    except InvalidSecurityProtocolError:
        return
    assert SP.validate(int(result)) == result  # whatever parses is valid


@given(st.integers(min_value=-(2**40), max_value=2**40))
def test_validate_accepts_exactly_unions_of_members(value: int) -> None:
    whole = sum(int(m) for m in (SP.SSL3, *_SINGLE) if value >= 0 and value & int(m) == int(m))
    if value == whole:
        assert int(SP.validate(value)) == value
    else:
        with pytest.raises(InvalidSecurityProtocolError):
            SP.validate(value)
