"""The ``asyncsp`` command line, run as a subprocess against loopback servers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from .servers import ThreadedServer, server_context

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 30


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCSP_")}
    env["PYTHONPATH"] = str(ROOT)
    env["COLUMNS"] = "200"
    return env


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m asyncsp ARGS`` with piped output (so no colours and no progress bar)."""
    return subprocess.run(
        [sys.executable, "-m", "asyncsp", *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env={**_env(), **(env or {})},
        cwd=ROOT,
        check=False,
    )


async def arun(*args: str) -> subprocess.CompletedProcess[str]:
    """`run` without blocking the event loop that serves the peer."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncsp",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
        cwd=ROOT,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        proc.kill()  # by its PID, never by name
        await proc.wait()
        raise
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


@pytest.fixture(scope="module")
def cafile(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def leaf_sha256(cert: trustme.LeafCert) -> str:
    pem = cert.cert_chain_pems[0].bytes().decode()
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the contract's JSON schema ------------------------------------------------------------

VERSION_NAMES = ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]


CONTRACT_KEYS = {"target", "versions", "certificate", "findings"}
CONTRACT_VERSION_KEYS = {"accepted", "cipher", "alpn", "error"}
CONTRACT_CERT_KEYS = {"subject", "issuer", "san", "not_after", "sha256"}
# The contract lets fields be added, never removed or renamed: these are the ones added, each
# pinned here so that a new one is a documented decision, not an accident.
ADDED_KEYS = {
    "notes",
    "legacy_probed",
    "groups",
    "alpn_accepted",
    "chain",
    "resumption",
    "enumeration_complete",
    "seconds",
}
ADDED_VERSION_KEYS = {"opt_out_only", "suites", "preference"}
ADDED_CERT_KEYS = {"not_before", "key", "key_bits", "signature_hash", "trusted"}


def check_probe_schema(report: object) -> None:
    """CONTRACT.md's ``probe --json`` object: its keys with their types, and besides them
    exactly the documented added keys, nothing more."""
    assert isinstance(report, dict)
    assert set(report) == CONTRACT_KEYS | ADDED_KEYS
    assert isinstance(report["target"], str)
    versions = report["versions"]
    assert isinstance(versions, dict) and list(versions) == VERSION_NAMES
    for v in versions.values():
        assert set(v) == CONTRACT_VERSION_KEYS | ADDED_VERSION_KEYS
        assert isinstance(v["accepted"], bool)
        for key in ("cipher", "alpn", "error"):
            assert v[key] is None or isinstance(v[key], str)
        assert isinstance(v["opt_out_only"], bool)
        assert v["suites"] is None or all(
            set(s) == {"name", "iana", "key_exchange", "weak"} for s in v["suites"]
        )
        assert v["preference"] in (None, "server", "client")
    cert = report["certificate"]
    if cert is not None:
        assert set(cert) == CONTRACT_CERT_KEYS | ADDED_CERT_KEYS
        assert all(isinstance(cert[k], str) for k in ("subject", "issuer", "not_after", "sha256"))
        assert isinstance(cert["san"], list) and all(isinstance(s, str) for s in cert["san"])

        datetime.datetime.fromisoformat(cert["not_after"])  # ISO 8601
        datetime.datetime.fromisoformat(cert["not_before"])
        assert cert["trusted"] in (True, False)
    assert isinstance(report["findings"], list)
    assert all(isinstance(f, str) for f in report["findings"])
    assert all(isinstance(n, str) for n in report["notes"])
    assert isinstance(report["legacy_probed"], bool)
    assert isinstance(report["resumption"], list)
    for r in report["resumption"]:
        assert r["mechanism"] in ("session ID", "ticket") and isinstance(r["supported"], bool)
    if report["chain"] is not None:
        assert report["chain"]["count"] == len(report["chain"]["certificates"])


# -- probe ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls12_server(server_cert: trustme.LeafCert) -> Iterator[ThreadedServer]:
    with ThreadedServer(server_context(server_cert, "TLSv1.2", "TLSv1.2")) as server:
        yield server


@pytest.fixture(scope="module")
def tls11_server(server_cert: trustme.LeafCert) -> Iterator[ThreadedServer]:
    with ThreadedServer(server_context(server_cert, "TLSv1.1", "TLSv1.3")) as server:
        yield server


def test_probe_json_tls12_only(
    tls12_server: ThreadedServer, cafile: str, server_cert: trustme.LeafCert
) -> None:
    target = f"127.0.0.1:{tls12_server.port}"
    result = run("probe", target, "--cafile", cafile, "--json")
    assert result.stderr == ""
    report = json.loads(result.stdout)  # one object and nothing else on stdout
    check_probe_schema(report)
    assert report["target"] == target
    versions = report["versions"]
    assert versions["TLSv1.2"]["accepted"] is True
    assert versions["TLSv1.2"]["cipher"] and versions["TLSv1.2"]["error"] is None
    assert versions["TLSv1.3"]["accepted"] is False
    assert versions["TLSv1.3"]["error"]
    # The legacy versions are tried by default (under the opt-out) and refused here.
    assert not versions["TLSv1"]["accepted"] and versions["TLSv1"]["error"]
    assert "not tried" not in versions["TLSv1"]["error"]
    assert report["legacy_probed"] is True
    assert report["certificate"]["sha256"] == leaf_sha256(server_cert)
    assert set(report["certificate"]["san"]) >= {"localhost", "127.0.0.1"}
    assert report["findings"] == []
    assert result.returncode == 0

    # --no-legacy skips them, and says so.
    skipped = json.loads(run("probe", target, "--cafile", cafile, "--json", "--no-legacy").stdout)
    check_probe_schema(skipped)
    assert not skipped["versions"]["TLSv1"]["accepted"]
    assert "not tried" in skipped["versions"]["TLSv1"]["error"]
    assert skipped["legacy_probed"] is False


def test_probe_flags_a_tls11_capable_server(tls11_server: ThreadedServer, cafile: str) -> None:
    target = f"https://localhost:{tls11_server.port}"
    result = run("probe", target, "--cafile", cafile, "--insecure-legacy", "--json")
    report = json.loads(result.stdout)
    check_probe_schema(report)
    versions = report["versions"]
    assert versions["TLSv1.1"]["accepted"] is True
    assert versions["TLSv1"]["accepted"] is False
    assert versions["TLSv1.3"]["accepted"] is True
    assert any(f.startswith("TLSv1.1 accepted") for f in report["findings"])
    assert result.returncode == 1

    human = run("probe", target, "--cafile", cafile, "--insecure-legacy")
    assert human.returncode == 1
    assert "TLSv1.1 accepted" in human.stdout
    assert "effective here: TLSv1.2, TLSv1.3 (system configuration:" in human.stdout
    assert "\x1b[" not in human.stdout  # plain text when piped

    # By default too: TLS 1.0 and 1.1 are tried under the opt-out without being asked.
    default = json.loads(run("probe", target, "--cafile", cafile, "--json").stdout)
    check_probe_schema(default)
    assert default["versions"]["TLSv1.1"]["accepted"] is True
    assert default["versions"]["TLSv1.1"]["opt_out_only"] is True
    assert any(f.startswith("TLSv1.1 accepted") for f in default["findings"])


def test_probe_untrusted_certificate_is_a_finding(tls12_server: ThreadedServer) -> None:
    # No --cafile: the system store does not know the test CA.
    result = run("probe", f"localhost:{tls12_server.port}", "--json")
    report = json.loads(result.stdout)
    check_probe_schema(report)
    assert report["versions"]["TLSv1.2"]["accepted"] is True  # the version, not the trust
    assert report["certificate"] is not None
    assert any(f.startswith("certificate not trusted") for f in report["findings"])
    assert result.returncode == 1


def test_probe_unreachable_target_exits_1() -> None:
    result = run("probe", f"127.0.0.1:{closed_port()}", "--json", "--timeout", "5")
    report = json.loads(result.stdout)
    check_probe_schema(report)
    assert report["certificate"] is None
    assert report["findings"] and "connect" in report["findings"][0]
    assert result.returncode == 1


@pytest.mark.parametrize("command", ["probe", "smtp-check"])
def test_a_refused_server_is_named_as_asked_not_as_the_raw_stream(command: str) -> None:
    port = closed_port()
    target = f"smtp://127.0.0.1:{port}" if command == "probe" else f"127.0.0.1:{port}"
    result = run(command, target, "--timeout", "5")
    assert result.returncode == 1
    assert f"cannot connect to smtp://127.0.0.1:{port}" in result.stdout + result.stderr
    assert "tcp://" not in result.stdout + result.stderr


def test_probe_protocol_option_limits_the_versions(
    tls12_server: ThreadedServer, cafile: str
) -> None:
    result = run(
        "probe", f"localhost:{tls12_server.port}", "--cafile", cafile, "--protocol", "Tls13"
    )
    assert result.returncode == 1  # nothing the policy allows is accepted
    assert "no TLS version accepted" in result.stdout


# -- usage errors and help -----------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["probe"],
        ["probe", "localhost"],
        ["probe", "http://localhost"],
        ["probe", "localhost:1", "--protocol", "Tls14"],
        ["probe", "localhost:1", "--protocol", "tls11"],
        ["probe", "localhost:1", "--timeout", "0"],
        ["probe", "localhost:1", "--cafile", "/nonexistent/ca.pem"],
        ["get", "ftp://localhost/"],
        ["smtp-check", "localhost:99999"],
    ],
)
def test_usage_error_is_one_line_and_exit_2(args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("asyncsp")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [[], ["demo"], ["probe"], ["get"], ["smtp-check"]])
def test_help_everywhere(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: asyncsp")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ASYNCSP_SECURITY_PROTOCOL", "Tls14"),
        ("ASYNCSP_STRONG_CRYPTO", "maybe"),
        ("ASYNCSP_SECURITY_PROTOCOL", "Tls11"),  # legacy without the opt-out
    ],
)
@pytest.mark.parametrize(
    "command",
    [
        ["demo"],
        ["probe", "localhost:1", "--protocol", "Tls12"],
        ["get", "https://localhost:1/"],
        ["smtp-check", "localhost:1"],
    ],
    ids=lambda command: command[0],
)
def test_a_bad_environment_is_a_usage_error(command: list[str], variable: str, value: str) -> None:
    result = run(*command, env={variable: value})
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"asyncsp {command[0]}: error: {variable}={value!r}")
    assert "--protocol:" not in lines[0]  # the variable is at fault, not the option


def test_help_works_in_a_bad_environment() -> None:
    # Help reads no setting, and is where a user looks for how to fix one.
    result = run("probe", "--help", env={"ASYNCSP_SECURITY_PROTOCOL": "Tls14"})
    assert result.returncode == 0 and result.stdout.startswith("usage: asyncsp probe")
    assert "ASYNCSP_SECURITY_PROTOCOL" in result.stdout and result.stderr == ""


def test_missing_cli_extra_is_one_clear_line() -> None:
    code = (
        "import sys; sys.modules['trustme'] = None; "
        "from asyncsp._cli import main; sys.exit(main(['demo']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=_env(),
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        'asyncsp demo needs trustme, which is not installed: pip install "asyncsp[cli]"'
    ]


# -- get -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def https_app(cert: trustme.LeafCert) -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello, asyncsp\n")

    app = web.Application()
    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock, ssl_context=server_context(cert, "TLSv1.2", "TLSv1.3"))
    await site.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        await runner.cleanup()


async def test_get(server_cert: trustme.LeafCert, cafile: str, tmp_path: Path) -> None:
    async with https_app(server_cert) as port:
        url = f"https://localhost:{port}/hello"
        body = tmp_path / "body.txt"
        result = await arun("get", url, "--cafile", cafile, "-o", str(body))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("200 OK")
        assert "TLSv1.3" in result.stdout
        assert body.read_bytes() == b"hello, asyncsp\n"

        pinned = await arun("get", url, "--cafile", cafile, "--protocol", "TLSv1.2")
        assert pinned.returncode == 0, pinned.stderr
        assert "TLSv1.2" in pinned.stdout

        missing = await arun("get", f"https://localhost:{port}/missing", "--cafile", cafile)
        assert missing.returncode == 1
        assert missing.stdout.startswith("404")

        untrusted = await arun("get", url)
        assert untrusted.returncode == 1
        assert untrusted.stdout == ""
        assert len(untrusted.stderr.splitlines()) == 1
        assert "certificate" in untrusted.stderr and "Traceback" not in untrusted.stderr


# -- SMTP ----------------------------------------------------------------------------------


@contextlib.contextmanager
def smtp_server(cert: trustme.LeafCert, *, starttls: bool = True, auth_require_tls: bool = True):
    from aiosmtpd.controller import Controller

    class Sink:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            return "250 OK"

    context = server_context(cert)
    controller = Controller(
        Sink(),
        hostname="127.0.0.1",
        server_hostname="127.0.0.1",
        port=closed_port(),
        tls_context=context if starttls else None,
        require_starttls=starttls,
        auth_require_tls=auth_require_tls,
    )
    controller.start()
    try:
        yield controller.port
    finally:
        controller.stop()


def test_smtp_check_starttls(server_cert: trustme.LeafCert, cafile: str) -> None:
    with smtp_server(server_cert) as port:
        result = run("smtp-check", f"localhost:{port}", "--cafile", cafile)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "greeting" in out and "220" in out
    before = next(line for line in out.splitlines() if "before TLS" in line)
    after = next(line for line in out.splitlines() if "after TLS" in line)
    assert "STARTTLS" in before and "AUTH" not in before
    assert "AUTH" in after and "STARTTLS" not in after
    assert "TLSv1.3" in out
    assert "offered only after TLS" in out


def test_smtp_check_flags_auth_before_tls(server_cert: trustme.LeafCert, cafile: str) -> None:
    with smtp_server(server_cert, auth_require_tls=False) as port:
        result = run("smtp-check", f"127.0.0.1:{port}", "--cafile", cafile)
    assert result.returncode == 1
    assert "offered before TLS" in result.stdout


def test_smtp_check_flags_a_server_without_starttls(server_cert: trustme.LeafCert) -> None:
    with smtp_server(server_cert, starttls=False) as port:
        result = run("smtp-check", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert "does not offer STARTTLS" in result.stdout


def test_probe_smtp_starttls(server_cert: trustme.LeafCert, cafile: str) -> None:
    with smtp_server(server_cert) as port:
        result = run("probe", f"smtp://localhost:{port}", "--cafile", cafile, "--json")
    report = json.loads(result.stdout)
    check_probe_schema(report)
    assert report["versions"]["TLSv1.2"]["accepted"] is True
    assert report["versions"]["TLSv1.3"]["accepted"] is True
    assert report["findings"] == []
    assert result.returncode == 0


# -- what peers send never drives the terminal ---------------------------------------------

ESCAPES = "\x1b]0;owned-title\x07\x1b[2J\x1b[31m\x9b\u202e"


@contextlib.asynccontextmanager
async def hostile_server(*replies: bytes) -> AsyncIterator[int]:
    """A plain line server (SMTP or FTP) that answers each line with the next of *replies*."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(replies[0])
            for reply in replies[1:]:
                if not await reader.readline():
                    break
                writer.write(reply)
            await reader.read()  # until the client goes
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def assert_no_controls(text: str) -> None:
    assert not any(c in text for c in "\x1b\x07\x9b\u202e"), repr(text)
    assert "\\x1b]0;owned-title\\x07\\x1b[2J" in text  # shown, as escapes


async def test_smtp_check_error_shows_control_characters_as_escapes() -> None:
    async with hostile_server(f"554 {ESCAPES}go away\r\n".encode()) as port:
        result = await arun("smtp-check", f"127.0.0.1:{port}", "--timeout", "5")
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"asyncsp smtp-check: SMTP reply 554 from smtp://127.0.0.1:{port}"
    )
    assert len(result.stderr.splitlines()) == 1
    assert_no_controls(result.stderr)


async def test_smtp_check_report_shows_control_characters_as_escapes() -> None:
    greeting = f"220 mx {ESCAPES}\r\n".encode()
    ehlo = f"250-mx\r\n250 X-NOTE {ESCAPES}\r\n".encode()
    async with hostile_server(greeting, ehlo, b"221 bye\r\n") as port:
        result = await arun("smtp-check", f"127.0.0.1:{port}", "--timeout", "5")
    assert result.returncode == 1  # no STARTTLS: a finding
    assert f"smtp://127.0.0.1:{port} does not offer STARTTLS" in result.stdout
    assert_no_controls(result.stdout)
    assert result.stdout.count("owned-title") == 2  # the greeting and the EHLO keyword


async def test_probe_ftp_shows_control_characters_as_escapes() -> None:
    greeting = f"220 ftp {ESCAPES}\r\n".encode()
    async with hostile_server(greeting, f"534 no TLS {ESCAPES}\r\n".encode()) as port:
        result = await arun("probe", f"ftp://127.0.0.1:{port}", "--timeout", "5")
    assert result.returncode == 1  # AUTH TLS refused: a finding
    assert f"ftp://127.0.0.1:{port} refused AUTH TLS: 534 no TLS" in result.stdout
    assert_no_controls(result.stdout + result.stderr)


# -- what peers do never holds a step past its timeout ---------------------------------------

TRICKLE_PACE = 0.2
"""Seconds between the bytes of a trickled reply."""
STEP_TIMEOUT = 1.0
MARGIN = 2.0
"""What a dialogue may take past its step's timeout (the connection and the checks after it)."""


@contextlib.asynccontextmanager
async def trickling_server(reply: bytes) -> AsyncIterator[tuple[int, list[float]]]:
    """A server that sends *reply* one byte per `TRICKLE_PACE` to each connection, and lists
    how long each client stayed (from the accept until it went)."""
    stays: list[float] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        gone = asyncio.Event()

        async def watch() -> None:
            with contextlib.suppress(ConnectionError):
                await reader.read()  # the client sends nothing before a whole greeting
            gone.set()

        watcher = asyncio.create_task(watch())
        with contextlib.suppress(ConnectionError):
            for byte in reply:  # bounded by the reply's length
                if gone.is_set():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                with contextlib.suppress(TimeoutError):  # the pace: the next byte is due
                    await asyncio.wait_for(gone.wait(), TRICKLE_PACE)
        await watcher  # the client's going (the reply is never finished)
        stays.append(loop.time() - accepted)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], stays
    finally:
        server.close()
        await server.wait_closed()


NEVER_ENDING_SMTP = b"220-mx.example trickling\r\n" * 20  # 100 s of trickle, no final line
NEVER_ENDING_FTP = b"220-ftp.example trickling\r\n" * 20


async def test_smtp_check_bounds_each_reply_not_each_read() -> None:
    """A greeting sent a byte at a time never lets one read time out; the timeout is the
    whole reply's."""
    async with trickling_server(NEVER_ENDING_SMTP) as (port, stays):
        result = await arun("smtp-check", f"127.0.0.1:{port}", "--timeout", str(STEP_TIMEOUT))
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"asyncsp smtp-check: smtp://127.0.0.1:{port} did not complete a reply within "
        f"{STEP_TIMEOUT} s"
    ), result.stderr
    assert len(stays) == 1 and STEP_TIMEOUT / 2 < stays[0] < STEP_TIMEOUT + MARGIN, stays


async def test_probe_ftp_bounds_each_reply_not_each_read() -> None:
    async with trickling_server(NEVER_ENDING_FTP) as (port, stays):
        result = await arun("probe", f"ftp://127.0.0.1:{port}", "--timeout", str(STEP_TIMEOUT))
    assert result.returncode == 1
    assert f"ftp://127.0.0.1:{port} did not complete a reply within {STEP_TIMEOUT} s" in (
        result.stdout
    ), result.stdout
    assert stays and all(STEP_TIMEOUT / 2 < stay < STEP_TIMEOUT + MARGIN for stay in stays), stays


@pytest.mark.parametrize(
    "replies",
    [
        (b"421 Too many connections, try later\r\n",),
        (b"120 Ready in a minute\r\n421 Too many connections, try later\r\n",),
        (b"220 ftp.example\r\n", b"421 Too many connections, try later\r\n"),
    ],
    ids=["greeting", "after 120", "to AUTH TLS"],
)
async def test_probe_ftp_ends_at_a_421(replies: tuple[bytes, ...]) -> None:
    """421 is the server going away (RFC 959 §4.2), whatever it answers: said as such, not as
    a server without TLS."""
    async with hostile_server(*replies) as port:
        result = await arun("probe", f"ftp://127.0.0.1:{port}", "--timeout", "5")
    assert result.returncode == 1
    assert "FTP reply 421" in result.stdout, result.stdout
    assert "Too many connections, try later; the server is closing the connection" in (
        result.stdout
    )
    assert "AUTH TLS" not in result.stdout and "greeted with" not in result.stdout


@pytest.mark.parametrize("styled", [False, True])
def test_output_shows_control_characters_as_escapes(styled: bool) -> None:
    from asyncsp._output import Output

    stream = io.StringIO()
    out = Output(stream, styled=styled)
    out.line(f"a\tb\nc {ESCAPES}", "bad")
    out.field("greeting", f"220 {ESCAPES}")
    out.table(["name"], [[f"x\ny{ESCAPES}"]], title=f"t{ESCAPES}")
    text = stream.getvalue()
    assert_no_controls(text)
    assert "b\nc " in text  # line breaks stay in a line
    assert "x\\x0ay" in text  # but not in a table cell


# -- demo ----------------------------------------------------------------------------------


def test_demo() -> None:
    result = run("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "TLSv1.3" in out and "TLSv1.2" in out
    assert "TLSv1.1" in out and "InsecurePolicyWarning" in out
    assert "session_reused=True" in out
    assert "still runs TLSv1.3" in out
    assert result.stderr == ""


def test_probe_certificate_findings(ca: trustme.CA, cafile: str) -> None:
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=10)
    cert = ca.issue_cert("other.example", not_after=soon)
    with ThreadedServer(server_context(cert)) as server:
        result = run("probe", f"localhost:{server.port}", "--cafile", cafile, "--json")
    report = json.loads(result.stdout)
    check_probe_schema(report)
    findings = report["findings"]
    assert any(f.startswith("hostname mismatch") and "other.example" in f for f in findings)
    assert any(f.startswith("certificate expires soon") for f in findings)
    # The verification failure is the mismatch already reported, not a second finding.
    assert not any(f.startswith("certificate not trusted") for f in findings)
    assert report["versions"]["TLSv1.3"]["accepted"] is True
    assert result.returncode == 1


def test_certificate_findings_weak_key_and_sha1(tmp_path: Path) -> None:
    from asyncsp._certinfo import certificate_findings, describe_certificate

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command makes the SHA-1 certificate cryptography refuses to")
    pem = tmp_path / "legacy.pem"
    command = [openssl, "req", "-x509", "-sha1", "-newkey", "rsa:1024", "-nodes", "-days", "30"]
    command += ["-keyout", str(tmp_path / "key.pem"), "-out", str(pem)]
    command += ["-subj", "/CN=legacy.example", "-addext", "subjectAltName=DNS:*.legacy.example"]
    subprocess.run(command, check=True, capture_output=True, timeout=RUN_TIMEOUT)
    facts = describe_certificate(ssl.PEM_cert_to_DER_cert(pem.read_text()))
    assert facts.key == "RSA 1024 bits" and facts.key_is_weak
    assert facts.signature_hash == "sha1"
    assert facts.san == ("*.legacy.example",)
    assert [f.split(":")[0] for f in certificate_findings(facts, "www.legacy.example")] == [
        "certificate expires soon",
        "weak key",
        "weak signature",
    ]
    # A wildcard covers exactly one label (RFC 6125 §6.4.3).
    for host in ("a.b.legacy.example", "legacy.example"):
        assert certificate_findings(facts, host)[-1].startswith("hostname mismatch")


def test_certificate_findings_expired(ca: trustme.CA) -> None:
    from asyncsp._certinfo import certificate_findings, describe_certificate

    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    cert = ca.issue_cert("localhost", not_after=past)
    facts = describe_certificate(ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode()))
    assert certificate_findings(facts, "localhost") == [
        f"certificate expired on {facts.not_after.isoformat()}"
    ]


@pytest.mark.filterwarnings("ignore:The (asyncore|asynchat) module:DeprecationWarning")
def test_probe_ftp_auth_tls(tmp_path: Path, server_cert: trustme.LeafCert, cafile: str) -> None:
    from asyncsp._demo_servers import _ftp_server

    key_and_cert = tmp_path / "server.pem"
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(key_and_cert))
    with _ftp_server(str(key_and_cert), str(tmp_path), "secret") as port:
        result = run("probe", f"ftp://localhost:{port}", "--cafile", cafile, "--json")
    report = json.loads(result.stdout)
    check_probe_schema(report)
    assert report["versions"]["TLSv1.2"]["accepted"] is True
    assert report["versions"]["TLSv1.3"]["accepted"] is True
    assert report["certificate"]["sha256"] == leaf_sha256(server_cert)
    assert report["certificate"]["trusted"] is True
    # pyftpdlib's default suites include ECDHE-ECDSA-AES*-SHA: the one weakness it has.
    assert report["findings"], report["findings"]
    assert all(f.startswith("TLSv1.2 accepts CBC with SHA-1:") for f in report["findings"])
    assert result.returncode == 1


def test_debug_adds_the_traceback(tls12_server: ThreadedServer) -> None:
    url = f"https://localhost:{tls12_server.port}/"
    plain = run("get", url)
    debug = run("get", url, "--debug")
    assert plain.returncode == debug.returncode == 1
    assert "Traceback" not in plain.stderr
    assert "Traceback" in debug.stderr
    assert debug.stderr.splitlines()[-1] == plain.stderr.strip()
