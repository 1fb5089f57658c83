"""FTPS against a real vsftpd 3.0.3 that requires data connections to resume the control session.

vsftpd runs as a child process from ``tests/vsftpd/vsftpd.conf.in`` on a free loopback port,
with ``require_ssl_reuse=YES`` (its default). These tests skip only where vsftpd is missing.
"""

from __future__ import annotations

import asyncio
import ftplib
import os
import pathlib
import pwd
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
import trustme

from asyncsp import ConnectionManager, SecurityProtocol, TlsPolicy

VSFTPD = "/usr/sbin/vsftpd"
CONFIG_TEMPLATE = pathlib.Path(__file__).parent / "vsftpd" / "vsftpd.conf.in"
SECURE_CHROOT_DIR = "/var/run/vsftpd/empty"
FTP_USER = "ftp"  # ftp_username in the template
FILES = {f"file{i}.bin": os.urandom(200_000 + i * 4099) for i in range(4)}
START_TIMEOUT = 10.0

pytestmark = pytest.mark.skipif(
    not os.path.exists(VSFTPD),
    reason=f"vsftpd is not installed ({VSFTPD}); .ci/run installs it with apt-get when root",
)


class Vsftpd:
    """One vsftpd child process serving *root* anonymously over explicit TLS on loopback."""

    def __init__(self, workdir: pathlib.Path, cert: trustme.LeafCert, *, reuse: bool) -> None:
        if os.geteuid() != 0:
            pytest.skip("vsftpd must start as root (it chroots anonymous sessions)")
        os.makedirs(SECURE_CHROOT_DIR, exist_ok=True)  # the Debian package makes it at boot only
        try:
            # Anonymous sessions run as the package's "ftp" user, whose home must exist.
            os.makedirs(pwd.getpwnam(FTP_USER).pw_dir, exist_ok=True)
        except KeyError:
            pytest.fail(f"vsftpd is installed but the {FTP_USER!r} user it runs as is missing")
        self.root = workdir / "root"
        self.root.mkdir()
        self.root.chmod(0o755)  # vsftpd refuses a writable anonymous root
        incoming = self.root / "incoming"
        incoming.mkdir()
        incoming.chmod(0o777)
        for name, data in FILES.items():
            (self.root / name).write_bytes(data)
            (self.root / name).chmod(0o644)
        cert.cert_chain_pems[0].write_to_path(str(workdir / "cert.pem"))
        cert.private_key_pem.write_to_path(str(workdir / "key.pem"))
        self.port = _free_port()
        config = CONFIG_TEMPLATE.read_text().format(
            port=self.port,
            root=self.root,
            empty=SECURE_CHROOT_DIR,
            require_ssl_reuse="YES" if reuse else "NO",
            certfile=workdir / "cert.pem",
            keyfile=workdir / "key.pem",
        )
        (workdir / "vsftpd.conf").write_text(config)
        self.process = subprocess.Popen(
            [VSFTPD, str(workdir / "vsftpd.conf")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                stderr = self.process.stderr.read() if self.process.stderr else b""
                pytest.fail(f"vsftpd exited with {self.process.returncode}: {stderr!r}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)  # an external process: nothing to wait on but its port
        self.stop()
        pytest.fail(f"vsftpd did not listen on port {self.port} within {START_TIMEOUT} s")

    def stop(self) -> None:
        self.process.terminate()  # by PID, never by name
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        if self.process.stderr:
            self.process.stderr.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def vsftpd(tmp_path: pathlib.Path, server_cert: trustme.LeafCert) -> Iterator[Vsftpd]:
    server = Vsftpd(tmp_path, server_cert, reuse=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("protocols", "version"),
    [(SecurityProtocol.TLS12, "TLSv1.2"), (SecurityProtocol.TLS13, "TLSv1.3")],
    ids=["TLSv1.2", "TLSv1.3"],
)
async def test_vsftpd_requires_and_gets_session_reuse(
    vsftpd: Vsftpd,
    trusted: Callable[..., TlsPolicy],
    protocols: SecurityProtocol,
    version: str,
) -> None:
    async with ConnectionManager(policy=trusted(protocols=protocols)) as mgr:
        sp = mgr.find_service_point(f"ftp://localhost:{vsftpd.port}")
        async with mgr.ftp("localhost", vsftpd.port, timeout=10) as ftp:
            assert ftp.tls is not None and ftp.tls.version == version
            assert "MLST" not in ftp.features  # vsftpd has no MLSD: LIST in the Unix format
            entries = {e.name: e for e in await ftp.list()}
            assert set(entries) == {*FILES, "incoming"}
            assert entries["incoming"].type == "dir"
            assert all(entries[n].size == len(d) and entries[n].modified for n, d in FILES.items())
            for name, data in FILES.items():
                assert await ftp.retrieve(name) == data
                assert ftp.data_tls is not None and ftp.data_tls.version == version
                assert ftp.data_tls.session_reused
            upload = os.urandom(150_000)
            await ftp.upload("incoming/up.bin", upload)
            assert ftp.data_tls.session_reused
            assert (vsftpd.root / "incoming" / "up.bin").read_bytes() == upload
            async with ftp.download("file0.bin", offset=1000) as chunks:
                assert b"".join([c async for c in chunks]) == FILES["file0.bin"][1000:]
            assert sp.current_connections == 1
        # One control connection with one full handshake; all 7 data connections resumed it.
        assert sp.stats.tls_handshakes == 1
        assert sp.stats.session_resumptions == 7
        assert sp.stats.connections_opened == 8
        assert sp.stats.versions == {version: 8}


async def test_vsftpd_refuses_a_data_connection_that_does_not_resume(
    vsftpd: Vsftpd, ca_pem: str
) -> None:
    # The standard library cannot offer a session on a data connection: vsftpd refuses it,
    # which shows that the resumption our tests see is what lets asyncsp's transfers through.
    def plain_ftplib() -> str:
        ftp = ftplib.FTP_TLS(context=ssl.create_default_context(cadata=ca_pem), timeout=10)
        try:
            ftp.connect("localhost", vsftpd.port)
            ftp.login()
            ftp.prot_p()
            try:
                ftp.retrbinary("RETR file0.bin", lambda chunk: None)
            except ftplib.Error as exc:
                return str(exc)
            return "transferred"
        finally:
            ftp.close()

    assert "522" in await asyncio.to_thread(plain_ftplib)


async def test_data_connections_resume_even_with_resume_sessions_off(
    vsftpd: Vsftpd, trusted: Callable[..., TlsPolicy]
) -> None:
    # resume_sessions=False turns off the cache across connections; a data channel resuming
    # its own control connection is part of the protocol, not that cache.
    async with ConnectionManager(policy=trusted(resume_sessions=False)) as mgr:
        sp = mgr.find_service_point(f"ftp://localhost:{vsftpd.port}")
        async with mgr.ftp("localhost", vsftpd.port, timeout=10) as ftp:
            assert await ftp.retrieve("file0.bin") == FILES["file0.bin"]
            assert ftp.data_tls is not None and ftp.data_tls.session_reused
        async with mgr.ftp("localhost", vsftpd.port, timeout=10) as ftp:
            assert ftp.tls is not None and not ftp.tls.session_reused
        assert sp.current_connections <= 1


def test_vsftpd_config_template_is_complete() -> None:
    text = CONFIG_TEMPLATE.read_text().format(
        port=2121, root="/r", empty="/e", require_ssl_reuse="YES", certfile="/c", keyfile="/k"
    )
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    settings = dict(line.split("=", 1) for line in lines)
    assert len(settings) == len(lines) and "{" not in text
    # The traps of 3.0.3: no ssl_tlsv1_1/ssl_tlsv1_2 options, a cipher list OpenSSL 3 accepts.
    assert settings["ssl_ciphers"] == "HIGH" and settings["require_ssl_reuse"] == "YES"
    assert not any(key.startswith(("ssl_tlsv1_", "ssl_tlsv1.")) for key in settings)
    assert settings["background"] == "NO" and settings["listen_address"] == "127.0.0.1"
