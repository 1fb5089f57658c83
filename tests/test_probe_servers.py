"""``asyncsp probe`` against real servers on loopback: ``openssl s_server`` pinned per version
and suite, nginx, vsftpd and Postfix, each on a free port, stopped by its PID.

Where sslscan is installed, its accepted versions and TLS 1.2 suites on the same servers must
be the probe's. Servers a machine lacks are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from .servers import ServerRecord, ThreadedServer
from .test_cli import check_probe_schema, run

OPENSSL = shutil.which("openssl")
NGINX = "/usr/sbin/nginx"
POSTFIX = "/usr/sbin/postfix"
SSLSCAN = shutil.which("sslscan")
NGINX_TEMPLATE = Path(__file__).parent / "nginx" / "nginx.conf.in"
START_TIMEOUT = 10.0
SSLSCAN_TIMEOUT = 60

needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")


class Child:
    """A server child process on a free loopback port, stopped by its PID."""

    def __init__(self, command: list[str], port: int, workdir: Path | None = None) -> None:
        self.port = port
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,  # s_server ends when its stdin closes, should we die first
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=workdir,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                pytest.fail(f"{command[0]} exited with {self.process.returncode}: {err[-500:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"{command[0]} did not listen on port {port}")

    def stop(self) -> None:
        self.process.terminate()  # by its PID, never by name: the machine is shared
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        for pipe in (self.process.stdin, self.process.stderr):
            if pipe is not None:
                pipe.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An RSA root, an intermediate and a leaf, as the files the servers and probes read."""
    root = trustme.CA(key_type=trustme.KeyType.RSA)
    intermediate = root.create_child_ca(key_type=trustme.KeyType.RSA)
    leaf = intermediate.issue_cert("localhost", "127.0.0.1", key_type=trustme.KeyType.RSA)
    where = tmp_path_factory.mktemp("pki")
    files = {
        "root": root.cert_pem,
        "leaf": leaf.cert_chain_pems[0],
        "intermediate": leaf.cert_chain_pems[1],
        "key": leaf.private_key_pem,
    }
    paths = {}
    for name, blob in files.items():
        paths[name] = str(where / f"{name}.pem")
        blob.write_to_path(paths[name])
    (where / "chain.pem").write_bytes(files["leaf"].bytes() + files["intermediate"].bytes())
    (where / "with-root.pem").write_bytes(files["intermediate"].bytes() + root.cert_pem.bytes())
    paths["chain"] = str(where / "chain.pem")
    paths["with_root"] = str(where / "with-root.pem")
    paths["dir"] = str(where)
    return paths


@contextlib.contextmanager
def s_server(
    pki: dict[str, str], *options: str, chain: str | None = "intermediate"
) -> Iterator[int]:
    """``openssl s_server`` with the leaf, its chain file (*chain*: a key of *pki*) and
    *options*; yields its port."""
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed")
    port = free_port()
    command = [OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}", "-www", "-quiet"]
    command += ["-cert", pki["leaf"], "-key", pki["key"], "-naccept", "100000"]
    if chain is not None:
        command += ["-cert_chain", pki[chain]]
    child = Child(command + list(options), port)
    try:
        yield port
    finally:
        child.stop()


def probe(target: str, *args: str) -> tuple[dict, subprocess.CompletedProcess[str]]:
    result = run("probe", target, "--json", "--timeout", "5", *args)
    assert result.stderr == "", result.stderr
    report = json.loads(result.stdout)
    check_probe_schema(report)
    return report, result


def suite_names(report: dict, version: str) -> list[str]:
    return [s["name"] for s in report["versions"][version]["suites"] or []]


def accepted_versions(report: dict) -> set[str]:
    return {name for name, v in report["versions"].items() if v["accepted"]}


# -- openssl s_server ------------------------------------------------------------------------

WEAK = ("-cipher", "ALL:@SECLEVEL=0")
"""Every version, anonymous and static-RSA suites, in the client's order."""
PINNED = ("-tls1_2", "-serverpref", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256:AES128-SHA")


@pytest.fixture(scope="module")
def weak_server(pki: dict[str, str]) -> Iterator[int]:
    with s_server(pki, *WEAK) as port:
        yield port


@pytest.fixture(scope="module")
def pinned_server(pki: dict[str, str]) -> Iterator[int]:
    with s_server(pki, *PINNED) as port:
        yield port


@pytest.fixture(scope="module")
def tls1_server(pki: dict[str, str]) -> Iterator[int]:
    with s_server(pki, "-tls1", "-cipher", "DEFAULT@SECLEVEL=0") as port:
        yield port


@needs_openssl
def test_weak_server_every_version_and_weak_suite(weak_server: int, pki: dict[str, str]) -> None:
    report, result = probe(f"localhost:{weak_server}", "--cafile", pki["root"])
    assert result.returncode == 1
    assert accepted_versions(report) == {"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"}
    assert report["versions"]["TLSv1"]["opt_out_only"] is True
    assert report["versions"]["TLSv1.2"]["opt_out_only"] is False
    tls12 = report["versions"]["TLSv1.2"]
    assert tls12["preference"] == "client"  # s_server without -serverpref
    names = suite_names(report, "TLSv1.2")
    assert len(names) == len(set(names)) > 30
    assert {"ADH-AES128-SHA", "AECDH-AES128-SHA", "AES128-SHA", "AES128-GCM-SHA256"} <= set(names)
    assert sorted(suite_names(report, "TLSv1.3")) == [
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
    ]
    findings = report["findings"]
    for expected in (
        "TLSv1 accepted: a deprecated version",
        "TLSv1.1 accepted: a deprecated version",
        "TLSv1.2 accepts anonymous (no authentication): ",
        "TLSv1.2 accepts no forward secrecy (static RSA): ",
        "TLSv1.2 accepts CBC with SHA-1: ",
    ):
        assert any(f.startswith(expected) for f in findings), (expected, findings)
    by_name = {s["name"]: s for s in tls12["suites"]}
    assert by_name["ECDHE-RSA-AES128-GCM-SHA256"]["weak"] == []
    assert by_name["ECDHE-RSA-AES128-GCM-SHA256"]["key_exchange"] == "x25519"
    assert by_name["DHE-RSA-AES128-GCM-SHA256"]["key_exchange"].startswith("DH ")
    # The chain as sent: the leaf and its intermediate, trusted through the root given.
    assert report["certificate"]["trusted"] is True
    assert report["certificate"]["key"] == "RSA 2048 bits"
    assert report["chain"]["count"] == 2
    assert [c["signature_hash"] for c in report["chain"]["certificates"]] == ["sha256"] * 2
    assert "x25519" in report["groups"]["accepted"]
    mechanisms = {(r["version"], r["mechanism"]): r for r in report["resumption"]}
    assert set(mechanisms) == {
        ("TLSv1.2", "session ID"),
        ("TLSv1.2", "ticket"),
        ("TLSv1.3", "ticket"),
    }
    # The speed-up is measured, so only its presence is a fact here (a loaded machine can make
    # one resumed handshake slower than a full one).
    assert all(r["supported"] and r["speedup"] > 0 for r in mechanisms.values()), mechanisms


@needs_openssl
def test_pinned_server_order_and_weak_suite(pinned_server: int, pki: dict[str, str]) -> None:
    report, result = probe(f"localhost:{pinned_server}", "--cafile", pki["root"])
    assert accepted_versions(report) == {"TLSv1.2"}
    assert suite_names(report, "TLSv1.2") == ["ECDHE-RSA-AES128-GCM-SHA256", "AES128-SHA"]
    assert report["versions"]["TLSv1.2"]["preference"] == "server"
    assert report["versions"]["TLSv1.2"]["suites"][1]["weak"] == [
        "no forward secrecy (static RSA)",
        "CBC with SHA-1",
    ]
    assert result.returncode == 1

    human = run("probe", f"localhost:{pinned_server}", "--cafile", pki["root"])
    assert "TLSv1.2 suites (the server's order)" in human.stdout
    assert "session resumption" in human.stdout


@needs_openssl
def test_tls1_only_server_is_reached_by_default(tls1_server: int, pki: dict[str, str]) -> None:
    report, result = probe(f"localhost:{tls1_server}", "--cafile", pki["root"])
    assert accepted_versions(report) == {"TLSv1"}
    assert report["versions"]["TLSv1"]["opt_out_only"] is True
    assert report["findings"][0] == "TLSv1 accepted: a deprecated version (RFC 8996)"
    assert result.returncode == 1
    skipped, result = probe(f"localhost:{tls1_server}", "--cafile", pki["root"], "--no-legacy")
    assert accepted_versions(skipped) == set()
    assert result.returncode == 1


@needs_openssl
def test_missing_intermediate_is_named_as_such(pki: dict[str, str]) -> None:
    with s_server(pki, chain=None) as port:
        report, _ = probe(f"localhost:{port}", "--cafile", pki["root"])
    assert report["certificate"]["trusted"] is False
    assert report["chain"]["count"] == 1
    [untrusted] = [f for f in report["findings"] if f.startswith("certificate not trusted")]
    assert "the server does not send its intermediate" in untrusted
    assert "--cafile" not in untrusted


@needs_openssl
def test_root_sent_along_is_a_note(pki: dict[str, str]) -> None:
    with s_server(pki, chain="with_root") as port:
        report, _ = probe(f"localhost:{port}", "--cafile", pki["root"])
    assert report["chain"]["count"] == 3
    assert report["chain"]["certificates"][2]["self_signed"] is True
    assert any("sends its root along" in n for n in report["notes"])
    assert not any("root" in f for f in report["findings"])


@needs_openssl
def test_small_dh_group_is_flagged(pki: dict[str, str]) -> None:
    # OpenSSL sizes an anonymous suite's DH group by the suite's strength: 1024 bits here.
    with s_server(pki, "-tls1_2", "-cipher", "ADH-AES128-GCM-SHA256:@SECLEVEL=0") as port:
        report, _ = probe(f"localhost:{port}", "--cafile", pki["root"])
    [suite] = report["versions"]["TLSv1.2"]["suites"]
    assert suite["key_exchange"] == "DH 1024 bits"
    assert suite["weak"] == ["anonymous (no authentication)", "DH 1024 bits"]
    assert any(f.startswith("TLSv1.2 accepts DH 1024 bits") for f in report["findings"])


# -- ports that do not speak TLS, and targets typed the wrong way ----------------------------


def http_handler(conn: socket.socket, record: ServerRecord) -> None:
    with contextlib.suppress(OSError):
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


def silent_handler(conn: socket.socket, record: ServerRecord) -> None:
    with contextlib.suppress(OSError):
        while conn.recv(4096):
            pass


def test_plain_http_port_is_named_as_such() -> None:
    with ThreadedServer(None, http_handler) as server:
        report, result = probe(f"https://127.0.0.1:{server.port}")
    [finding] = report["findings"]
    assert "plain text, not TLS ('HTTP/1.1 400 Bad Request')" in finding
    assert "plain HTTP" in finding and "--insecure-legacy" not in finding
    assert result.returncode == 1


def test_silent_port_says_no_answer() -> None:
    with ThreadedServer(None, silent_handler) as server:
        result = run("probe", f"127.0.0.1:{server.port}", "--timeout", "1")
    assert result.returncode == 1
    assert "no answer" in result.stdout and "--insecure-legacy" not in result.stdout
    assert "refused" not in result.stdout.split("finding(s)")[1]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("::1:443", "an IPv6 address takes brackets before its port: [::1]:443"),
        ("https://::1:8443", "brackets: https://[::1:8443] (https://[::1]:8443 for port 8443)"),
        ("smtp://::1", "an IPv6 address takes brackets: smtp://[::1]"),
        ("smtp://[::1", "not a host"),
        ("localhost:0", "the port must be a number from 1 to 65535, not '0'"),
        ("localhost:70000", "the port must be a number from 1 to 65535, not '70000'"),
        ("https://localhost:0", "the port must be a number from 1 to 65535, not '0'"),
        ("https://localhost:70000", "the port must be a number from 1 to 65535, not '70000'"),
    ],
)
def test_wrong_targets_say_what_to_type(target: str, expected: str) -> None:
    result = run("probe", target)
    assert result.returncode == 2 and result.stdout == ""
    assert expected in result.stderr, result.stderr


# -- nginx and vsftpd ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nginx(pki: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if not os.path.exists(NGINX):
        pytest.skip(f"nginx is not installed ({NGINX}); Debian: apt-get install nginx-light")
    workdir = tmp_path_factory.mktemp("nginx")
    port = free_port()
    config = NGINX_TEMPLATE.read_text().format(
        workdir=workdir, port=port, certfile=pki["chain"], keyfile=pki["key"]
    )
    (workdir / "nginx.conf").write_text(config)
    command = [NGINX, "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-e", "stderr"]
    child = Child(command, port, workdir)
    try:
        yield port
    finally:
        child.stop()


def test_nginx(nginx: int, pki: dict[str, str]) -> None:
    report, result = probe(f"https://localhost:{nginx}", "--cafile", pki["root"])
    assert accepted_versions(report) == {"TLSv1.2", "TLSv1.3"}
    assert suite_names(report, "TLSv1.2") == [
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
    assert report["versions"]["TLSv1.2"]["preference"] == "server"
    assert set(report["alpn_accepted"]) >= {"h2", "http/1.1"}
    assert report["chain"]["count"] == 2 and report["certificate"]["trusted"] is True
    resumed = {(r["version"], r["mechanism"]): r["supported"] for r in report["resumption"]}
    assert resumed == {
        ("TLSv1.2", "session ID"): True,
        ("TLSv1.2", "ticket"): True,
        ("TLSv1.3", "ticket"): True,
    }
    assert report["findings"] == [] and result.returncode == 0


def test_vsftpd(tmp_path: Path, server_cert: trustme.LeafCert, ca: trustme.CA) -> None:
    from .test_ftp_vsftpd import VSFTPD, Vsftpd

    if not os.path.exists(VSFTPD):
        pytest.skip(f"vsftpd is not installed ({VSFTPD}); Debian: apt-get install vsftpd")
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    server = Vsftpd(tmp_path, server_cert, reuse=True)
    try:
        report, _ = probe(f"ftp://localhost:{server.port}", "--cafile", str(cafile))
    finally:
        server.stop()
    assert {"TLSv1.2", "TLSv1.3"} <= accepted_versions(report)
    assert suite_names(report, "TLSv1.2") and report["certificate"]["trusted"] is True
    assert report["chain"]["count"] == 1
    # vsftpd resumes (its data connections depend on it; tickets here).
    assert any(r["supported"] for r in report["resumption"]), report["resumption"]


# -- Postfix ------------------------------------------------------------------------------------

POSTFIX_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
myhostname = localhost
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
maillog_file = /dev/stdout
smtpd_tls_chain_files = {root}/server.pem
smtpd_tls_security_level = may
"""
"""A private Postfix with its TLS settings as Debian ships them (opportunistic TLS: TLS 1.0 and
up, anonymous suites offered), listening on loopback only."""


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def postfix() -> Iterator[int]:
    """A Postfix instance of its own (config, queue and log in a temporary folder), started
    with ``postfix -c``; its master is stopped by the PID in its pid file."""
    if not os.path.exists(POSTFIX):
        pytest.skip(f"Postfix is not installed ({POSTFIX}); Debian: apt-get install postfix")
    if os.geteuid() != 0:
        pytest.skip("Postfix's master starts as root only")
    import pwd

    try:
        owner = pwd.getpwnam("postfix")
    except KeyError:
        pytest.skip("no postfix user on this machine")
    # Postfix's daemons, running as its user, must reach every folder on the way.
    root = Path(tempfile.mkdtemp(prefix="asyncsp-postfix-"))
    root.chmod(0o755)
    for folder in ("queue", "data"):
        (root / folder).mkdir()
    os.chown(root / "data", owner.pw_uid, owner.pw_gid)
    ca = trustme.CA()
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(root / "server.pem")
    )
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    port = free_port()
    (root / "main.cf").write_text(POSTFIX_MAIN_CF.format(root=root))
    master_cf = Path("/etc/postfix/master.cf").read_text().splitlines()
    smtp = f"127.0.0.1:{port} inet n - n - - smtpd"
    (root / "master.cf").write_text(
        "\n".join(smtp if line.startswith("smtp ") else line for line in master_cf) + "\n"
    )
    # Its log goes to its standard output (no syslog needed), here a file.
    log = root / "maillog"
    with log.open("wb") as output:
        started = subprocess.run(
            [POSTFIX, "-c", str(root), "start"], stdout=output, stderr=output, timeout=60
        )
    pid_file = root / "queue" / "pid" / "master.pid"
    try:
        if started.returncode != 0 or not pid_file.exists():
            pytest.fail(f"postfix start: {started.returncode}: {log.read_text()[-800:]}")
        pid = int(pid_file.read_text())
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", port), 1).close()
                    break
                time.sleep(0.05)
            else:
                pytest.fail(f"Postfix did not listen on port {port}")
            yield port
        finally:
            os.kill(pid, signal.SIGTERM)  # its master, by PID: the machine is shared
            if not wait_gone(pid, 10):
                os.kill(pid, signal.SIGKILL)
                wait_gone(pid, 5)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_postfix_legacy_versions_and_anonymous_suites(postfix: int) -> None:
    report, result = probe(f"smtp://127.0.0.1:{postfix}")
    assert accepted_versions(report) == {"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"}
    assert report["versions"]["TLSv1"]["opt_out_only"] is True
    names = set(suite_names(report, "TLSv1.2"))
    assert {"AECDH-AES256-SHA", "ADH-AES256-GCM-SHA384"} <= names, names
    findings = report["findings"]
    for expected in (
        "TLSv1 accepted: a deprecated version",
        "TLSv1.1 accepted: a deprecated version",
        "TLSv1.2 accepts anonymous (no authentication): ",
        "TLSv1.2 accepts CBC with SHA-1: ",
    ):
        assert any(f.startswith(expected) for f in findings), (expected, findings)
    assert result.returncode == 1


# -- the same servers through sslscan ----------------------------------------------------------


def sslscan(port: int, *options: str) -> tuple[set[str], set[str]]:
    """sslscan's enabled versions and accepted TLS 1.2 suites on 127.0.0.1:*port*."""
    assert SSLSCAN is not None
    command = [SSLSCAN, "--xml=-", "--no-colour", "--no-heartbleed", *options, f"127.0.0.1:{port}"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=SSLSCAN_TIMEOUT)
    root = ElementTree.fromstring(out.stdout[out.stdout.index("<?xml") :])
    versions = {
        f"TLSv{p.get('version')}".replace("TLSv1.0", "TLSv1")
        for p in root.iter("protocol")
        if p.get("type") == "tls" and p.get("enabled") == "1"
    }
    suites = {
        c.get("cipher", "")
        for c in root.iter("cipher")
        if c.get("sslversion") == "TLSv1.2" and c.get("status") in ("accepted", "preferred")
    }
    return versions, suites


@pytest.mark.skipif(SSLSCAN is None, reason="sslscan is not installed (Debian package sslscan)")
@pytest.mark.parametrize(
    "server", ["weak_server", "pinned_server", "tls1_server", "nginx", "postfix"]
)
def test_probe_agrees_with_sslscan(server: str, request: pytest.FixtureRequest) -> None:
    port = request.getfixturevalue(server)
    scheme, options = ("smtp://", ("--starttls-smtp",)) if server == "postfix" else ("", ())
    started = time.perf_counter()
    report, _ = probe(f"{scheme}127.0.0.1:{port}", "--insecure-legacy")
    probe_seconds = time.perf_counter() - started
    started = time.perf_counter()
    versions, suites = sslscan(port, *options)
    scan_seconds = time.perf_counter() - started
    print(
        f"{server}: probe {probe_seconds:.2f} s, sslscan {scan_seconds:.2f} s; versions "
        f"{sorted(versions)}; {len(suites)} TLS 1.2 suites",
        file=sys.stderr,
    )
    assert accepted_versions(report) == versions
    assert set(suite_names(report, "TLSv1.2")) == suites
