"""asyncsp.defaults: the process-wide statics, initialised from the environment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import asyncsp
from asyncsp import (
    ConnectionManager,
    Defaults,
    InvalidSecurityProtocolError,
    PolicyError,
    SecurityProtocol,
    TlsPolicy,
)

SP = SecurityProtocol


def run_python(
    code: str, *, check: bool, options: tuple[str, ...] = (), **environ: str
) -> subprocess.CompletedProcess[str]:
    """Run *code* in a new interpreter (with command-line *options*, such as ``-O``) with
    *environ* added: the environment is read only once per process, so only a fresh one
    shows what a variable does at import."""
    return subprocess.run(
        [sys.executable, *options, "-c", code],
        env=dict(os.environ, **environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def test_environment_sets_the_protocols() -> None:
    d = Defaults.from_environment({"ASYNCSP_SECURITY_PROTOCOL": "Tls12, Tls13"})
    assert d.security_protocol == SP.TLS12 | SP.TLS13
    assert d.policy.strong_crypto


def test_environment_opt_out_allows_legacy() -> None:
    d = Defaults.from_environment(
        {"ASYNCSP_SECURITY_PROTOCOL": "tls11|tls12", "ASYNCSP_STRONG_CRYPTO": "0"}
    )
    assert d.security_protocol == SP.TLS11 | SP.TLS12
    assert not d.policy.strong_crypto


def test_empty_environment_is_system_default() -> None:
    d = Defaults.from_environment({})
    assert d.policy == TlsPolicy()


@pytest.mark.parametrize(
    ("env", "error", "names"),
    [
        (
            {"ASYNCSP_SECURITY_PROTOCOL": "Tls14"},
            InvalidSecurityProtocolError,
            "ASYNCSP_SECURITY_PROTOCOL",
        ),
        (
            {"ASYNCSP_SECURITY_PROTOCOL": ""},
            InvalidSecurityProtocolError,
            "ASYNCSP_SECURITY_PROTOCOL",
        ),
        ({"ASYNCSP_STRONG_CRYPTO": "maybe"}, PolicyError, "ASYNCSP_STRONG_CRYPTO"),
        ({"ASYNCSP_SECURITY_PROTOCOL": "Tls11"}, PolicyError, "ASYNCSP_STRONG_CRYPTO"),
    ],
)
def test_bad_environment_values_name_the_variable(
    env: dict[str, str], error: type[Exception], names: str
) -> None:
    with pytest.raises(error, match=names):
        Defaults.from_environment(env)


def test_bad_environment_fails_the_first_use_with_the_variable_named() -> None:
    result = run_python(
        "import asyncsp; asyncsp.ConnectionManager().policy",
        check=False,
        ASYNCSP_SECURITY_PROTOCOL="Tls99",
    )
    assert result.returncode != 0
    assert "ASYNCSP_SECURITY_PROTOCOL='Tls99'" in result.stderr
    assert "Tls12" in result.stderr  # lists the valid names


def test_good_environment_reaches_the_process_defaults() -> None:
    result = run_python(
        "import asyncsp; print(int(asyncsp.defaults.security_protocol))",
        check=True,
        ASYNCSP_SECURITY_PROTOCOL="TLSv1.3",
    )
    assert result.stdout.strip() == "12288"


def test_security_protocol_assignment_validates_and_keeps_old_value() -> None:
    asyncsp.defaults.security_protocol = SP.TLS13
    for bad in (1024, 1, SP.TLS11, "Tls12"):
        with pytest.raises(ValueError):
            asyncsp.defaults.security_protocol = bad  # type: ignore[assignment]
        assert asyncsp.defaults.security_protocol == SP.TLS13


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("default_connection_limit", 0),
        ("default_connection_limit", 2.5),
        ("max_idle_time", -1),
        ("connection_lease_timeout", "10"),
        ("dns_refresh_timeout", -0.1),
    ],
)
def test_invalid_numbers_leave_the_old_setting(name: str, bad: object) -> None:
    before = getattr(asyncsp.defaults, name)
    with pytest.raises(ValueError, match=name):
        setattr(asyncsp.defaults, name, bad)
    assert getattr(asyncsp.defaults, name) == before


def test_managers_without_a_policy_follow_the_defaults_live() -> None:
    follower = ConnectionManager()
    own = ConnectionManager(security_protocol=SP.TLS12)
    asyncsp.defaults.security_protocol = SP.TLS13
    assert follower.security_protocol == SP.TLS13
    assert own.security_protocol == SP.TLS12
    sp = follower.find_service_point("https://example.test")
    assert sp.policy.protocols == SP.TLS13
    asyncsp.defaults.security_protocol = SP.TLS12 | SP.TLS13
    assert sp.policy.protocols == SP.TLS12 | SP.TLS13


def test_bad_environment_does_not_break_the_import() -> None:
    result = run_python(
        "import asyncsp; print(asyncsp.SecurityProtocol.TLS13.value)",
        check=True,
        ASYNCSP_STRONG_CRYPTO="maybe",
    )
    assert result.stdout.strip() == "12288"


def test_an_explicit_policy_needs_no_environment() -> None:
    d = Defaults(TlsPolicy(protocols=SP.TLS13), environ={"ASYNCSP_SECURITY_PROTOCOL": "bad"})
    assert d.security_protocol == SP.TLS13
    lazy = Defaults(environ={"ASYNCSP_SECURITY_PROTOCOL": "bad"})
    with pytest.raises(InvalidSecurityProtocolError, match="ASYNCSP_SECURITY_PROTOCOL"):
        _ = lazy.policy
    lazy.policy = TlsPolicy()  # setting a policy fixes it
    assert lazy.security_protocol == SP.SYSTEM_DEFAULT


MAKE_A_MANAGER = """
import asyncsp
try:
    asyncsp.ConnectionManager()
except ValueError as exc:
    print(type(exc).__name__, exc)
else:
    print("made")
"""


@pytest.mark.parametrize(
    ("variable", "value", "error", "names"),
    [
        ("ASYNCSP_SECURITY_PROTOCOL", "Tls99", "InvalidSecurityProtocolError", "Tls12"),
        ("ASYNCSP_STRONG_CRYPTO", "maybe", "PolicyError", "use 1"),
        ("ASYNCSP_SECURITY_PROTOCOL", "Tls11", "PolicyError", "ASYNCSP_STRONG_CRYPTO"),
    ],
)
def test_making_a_manager_under_a_bad_environment_raises_naming_the_variable(
    variable: str, value: str, error: str, names: str
) -> None:
    result = run_python(MAKE_A_MANAGER, check=True, **{variable: value})
    kind, _, message = result.stdout.strip().partition(" ")
    assert kind == error, result.stdout
    assert f"{variable}={value!r}" in message and names in message


REPRS_UNDER_A_BAD_ENVIRONMENT = """
import asyncio, asyncsp

async def main():
    async def serve(reader, writer):
        await reader.read()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with asyncsp.ConnectionManager(policy=asyncsp.TlsPolicy()) as mgr:
        async with mgr.open_stream("127.0.0.1", port, timeout=5) as stream:
            mgr.policy = None  # from now on it follows the process defaults, which cannot be read
            for thing in (mgr, stream.service_point, stream):
                print(repr(thing))
    print(repr(mgr))
    server.close()

asyncio.run(main())
"""


def test_reprs_never_raise_under_a_bad_environment() -> None:
    result = run_python(
        REPRS_UNDER_A_BAD_ENVIRONMENT, check=False, ASYNCSP_SECURITY_PROTOCOL="Tls99"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [
        "<ConnectionManager",
        "<ServicePoint",
        "<Stream",
        "<ConnectionManager",
    ]
    assert "ASYNCSP_SECURITY_PROTOCOL" in lines[0] and "closed" in lines[3]


def test_repr_of_a_manager_whose_making_failed() -> None:
    with pytest.raises(ValueError) as caught:
        ConnectionManager(max_service_points=-1)
    half_made = caught.traceback[-1].frame.f_locals["self"]  # as a traceback shows it
    protocols = asyncsp.defaults.security_protocol
    assert repr(half_made) == f"<ConnectionManager {protocols!r} 0 service points>"
