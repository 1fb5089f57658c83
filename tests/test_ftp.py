"""The FTPS client against pyftpdlib's TLS handler and scripted raw FTP servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import trustme
from OpenSSL import SSL
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import TLS_FTPHandler
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import FTPServer

from asyncsp import (
    ConnectionManager,
    FtpError,
    FtpProtocolError,
    FtpReplyError,
    ManagerClosedError,
    SecurityProtocol,
    StartTlsUnavailableError,
    TimeoutError,
    TlsPolicy,
)
from asyncsp._errors import FtpArgumentError

from .servers import ServerRecord, ThreadedServer, fd_baseline, server_context

SP = SecurityProtocol
PAYLOAD = bytes(range(256)) * 1200  # 300 KiB, several reads and TLS records
PASSWORD = "s3cret-pw"

logging.getLogger("pyftpdlib").setLevel(logging.WARNING)


# -- pyftpdlib's TLS handler in a thread ------------------------------------------------------


class PyFtpd:
    """pyftpdlib's TLS handler on loopback, pinned to one TLS version, in its own thread."""

    def __init__(self, root: pathlib.Path, cert: trustme.LeafCert, version: int) -> None:
        cert.private_key_and_cert_chain_pem.write_to_path(str(root.parent / "server.pem"))
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.use_certificate_chain_file(str(root.parent / "server.pem"))
        context.use_privatekey_file(str(root.parent / "server.pem"))
        context.set_min_proto_version(version)
        context.set_max_proto_version(version)
        authorizer = DummyAuthorizer()
        authorizer.add_user("alice", PASSWORD, str(root), perm="elradfmwMT")
        authorizer.add_anonymous(str(root))
        handler = type(
            "Handler",
            (TLS_FTPHandler,),
            {"ssl_context": context, "authorizer": authorizer, "auth_failed_timeout": 0},
        )
        self.server = FTPServer(("127.0.0.1", 0), handler, ioloop=IOLoop())
        self.port: int = self.server.socket.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.server.ioloop.loop(timeout=0.02, blocking=False)

    def __enter__(self) -> PyFtpd:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.server.close_all()


@pytest.fixture(params=["TLSv1.2", "TLSv1.3"])
def pyftpd(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path, server_cert: trustme.LeafCert
) -> Iterator[PyFtpd]:
    root = tmp_path / "root"
    root.mkdir()
    (root / "payload.bin").write_bytes(PAYLOAD)
    version = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}[request.param]
    with PyFtpd(root, server_cert, version) as server:
        server.version = request.param  # type: ignore[attr-defined]
        server.root = root  # type: ignore[attr-defined]
        yield server


async def test_round_trip_over_explicit_tls(
    pyftpd: PyFtpd, trusted: Callable[..., TlsPolicy]
) -> None:
    root: pathlib.Path = pyftpd.root  # type: ignore[attr-defined]
    async with ConnectionManager(policy=trusted()) as mgr:
        async with mgr.ftp(
            "localhost", pyftpd.port, username="alice", password=PASSWORD, timeout=5
        ) as ftp:
            assert ftp.tls is not None and ftp.tls.version == pyftpd.version  # type: ignore[attr-defined]
            assert "MLST" in ftp.features and ftp.features["REST"] == "STREAM"
            assert await ftp.retrieve("payload.bin") == PAYLOAD
            assert ftp.data_tls is not None and ftp.data_tls.session_reused
            assert ftp.data_tls.version == ftp.tls.version
            async with ftp.download("payload.bin", offset=1000) as chunks:
                got = [chunk async for chunk in chunks]
            assert b"".join(got) == PAYLOAD[1000:] and len(got) > 1
            await ftp.upload("up.bin", PAYLOAD[:70000])

            async def pieces() -> AsyncIterator[bytes]:
                for i in range(5):
                    yield bytes([i]) * 1000

            await ftp.upload("pieces.bin", pieces())
            assert (root / "up.bin").read_bytes() == PAYLOAD[:70000]
            assert await ftp.size("pieces.bin") == 5000
            await ftp.mkdir("sub")
            await ftp.cwd("sub")
            assert await ftp.pwd() == "/sub"
            await ftp.rename("../up.bin", "moved.bin")
            entries = {e.name: e for e in await ftp.list()}
            assert entries["moved.bin"].type == "file" and entries["moved.bin"].size == 70000
            assert entries["moved.bin"].modified is not None
            await ftp.delete("moved.bin")
            await ftp.cwd("/")
            await ftp.rmdir("sub")
            names = {e.name: e.type for e in await ftp.list()}
            assert names == {"payload.bin": "file", "pieces.bin": "file"}
        sp = mgr.find_service_point(f"ftp://localhost:{pyftpd.port}")
        # One full handshake (the control connection); every data connection resumed it.
        assert sp.stats.tls_handshakes == 1
        assert sp.stats.session_resumptions == sp.stats.connections_opened - 1 == 6
        assert sp.current_connections == 1  # the session went back to the pool


async def test_sessions_are_pooled_per_credentials_and_go_home(
    pyftpd: PyFtpd, trusted: Callable[..., TlsPolicy]
) -> None:
    (pyftpd.root / "d").mkdir()  # type: ignore[attr-defined]
    async with ConnectionManager(policy=trusted()) as mgr:
        sp = mgr.find_service_point(f"ftp://127.0.0.1:{pyftpd.port}")
        async with mgr.ftp("127.0.0.1", pyftpd.port, username="alice", password=PASSWORD) as a:
            await a.cwd("d")
        async with mgr.ftp("127.0.0.1", pyftpd.port, username="alice", password=PASSWORD) as b:
            assert await b.pwd() == "/"  # the pooled session went back to its login directory
        assert sp.stats.tls_handshakes == 1 and sp.current_connections == 1
        async with mgr.ftp("127.0.0.1", pyftpd.port) as anon:  # other credentials: own session
            assert await anon.retrieve("payload.bin") == PAYLOAD
        assert sp.stats.tls_handshakes == 2 and sp.current_connections == 2
        with pytest.raises(FtpReplyError) as caught:
            async with mgr.ftp("127.0.0.1", pyftpd.port, username="alice", password="wrong"):
                pass
        assert caught.value.code == 530 and "wrong" not in str(caught.value)
        assert sp.current_connections == 2  # the failed login was not pooled
        mgr.policy = trusted(protocols=SP.TLS12)  # pooled sessions are from an older policy
        if pyftpd.version == "TLSv1.2":  # type: ignore[attr-defined]
            opened = sp.stats.connections_opened
            async with mgr.ftp("127.0.0.1", pyftpd.port, username="alice", password=PASSWORD) as c:
                assert c.tls is not None and c.tls.version == "TLSv1.2"
                assert sp.stats.connections_opened == opened + 1  # a new control connection


async def test_connection_limit_bounds_sessions(
    pyftpd: PyFtpd, trusted: Callable[..., TlsPolicy]
) -> None:
    async with ConnectionManager(policy=trusted(), default_connection_limit=1) as mgr:
        sp = mgr.find_service_point(f"ftp://127.0.0.1:{pyftpd.port}")
        events: list[str] = []
        first_in = asyncio.Event()
        release = asyncio.Event()

        async def first() -> None:
            async with mgr.ftp("127.0.0.1", pyftpd.port, username="alice", password=PASSWORD):
                events.append("first in")
                first_in.set()
                await release.wait()
                assert sp.current_connections == 1
                events.append("first out")

        async def second() -> None:
            await first_in.wait()
            async with mgr.ftp("127.0.0.1", pyftpd.port) as ftp:
                events.append("second in")
                assert await ftp.size("payload.bin") == len(PAYLOAD)

        async def let_go() -> None:
            await first_in.wait()
            for _ in range(20):  # give the second session every chance to sneak in
                await asyncio.sleep(0)
            release.set()

        await asyncio.wait_for(asyncio.gather(first(), second(), let_go()), 10)
        assert events == ["first in", "first out", "second in"]
        assert sp.current_connections == 1


async def test_refused_commands_leave_the_session_usable(
    pyftpd: PyFtpd, trusted: Callable[..., TlsPolicy]
) -> None:
    async with ConnectionManager(policy=trusted()) as mgr:
        async with mgr.ftp("127.0.0.1", pyftpd.port, timeout=5) as ftp:
            with pytest.raises(FtpReplyError) as caught:
                await ftp.retrieve("missing.bin")
            assert caught.value.code == 550
            with pytest.raises(FtpReplyError):
                await ftp.delete("payload.bin")  # anonymous: no write permission
            with pytest.raises(FtpArgumentError):
                await ftp.retrieve("x\r\nDELE payload.bin")
            assert await ftp.size("payload.bin") == len(PAYLOAD)


async def test_retrieve_is_bounded_by_max_body_size(
    pyftpd: PyFtpd, trusted: Callable[..., TlsPolicy]
) -> None:
    async with ConnectionManager(policy=trusted(), max_body_size=100_000) as mgr:
        sp = mgr.find_service_point(f"ftp://127.0.0.1:{pyftpd.port}")
        with pytest.raises(FtpError, match="max_body_size"):
            async with mgr.ftp("127.0.0.1", pyftpd.port, timeout=5) as ftp:
                await ftp.retrieve("payload.bin")
        assert sp.current_connections == 0  # an unfinished transfer: session closed


async def test_security_none_is_plain_and_explicit(
    pyftpd: PyFtpd, trusted: Callable[..., TlsPolicy]
) -> None:
    async with ConnectionManager(policy=trusted()) as mgr:
        async with mgr.ftp("127.0.0.1", pyftpd.port, security="none", timeout=5) as ftp:
            assert ftp.tls is None
            assert await ftp.retrieve("payload.bin") == PAYLOAD
            assert ftp.data_tls is None
        with pytest.raises(ValueError, match="security"):
            async with mgr.ftp("127.0.0.1", pyftpd.port, security="ssl"):
                pass


# -- Stream.ended_with_close_notify, which honest transfers rely on ---------------------------


def _send_then(close_notify: bool) -> Callable[[socket.socket, ServerRecord], None]:
    def handler(conn: socket.socket, record: ServerRecord) -> None:
        conn.sendall(PAYLOAD)
        if close_notify:
            assert isinstance(conn, ssl.SSLSocket)
            conn.unwrap().close()
        else:
            conn.shutdown(socket.SHUT_RDWR)  # SSLSocket.shutdown: TCP FIN, no close_notify

    return handler


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
@pytest.mark.parametrize("close_notify", [True, False])
async def test_stream_tells_close_notify_from_a_bare_fin(
    server_cert: trustme.LeafCert,
    trusted: Callable[..., TlsPolicy],
    version: str,
    close_notify: bool,
) -> None:
    context = server_context(server_cert, version, version)
    with ThreadedServer(context, _send_then(close_notify)) as server:
        async with ConnectionManager(policy=trusted()) as mgr:
            async with mgr.open_stream("localhost", server.port, tls=True, timeout=5) as stream:
                assert await stream.read() == PAYLOAD
                assert stream.at_eof()
                assert stream.ended_with_close_notify is close_notify


# -- scripted raw FTP servers -----------------------------------------------------------------

FEAT = b"211-Features:\r\n EPSV\r\n PASV\r\n SIZE\r\n211 End\r\n"


class Control:
    """The server side of one scripted control connection (blocking sockets, own thread)."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, record: ServerRecord):
        self.sock = sock
        self.context = context
        self.record = record
        self._buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> str:
        """The next command line ("" once the client has gone)."""
        while b"\n" not in self._buffer:
            try:
                chunk = self.sock.recv(4096)
            except OSError:
                chunk = b""
            if not chunk:
                return ""
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        with self.record.lock:
            self.record.received.append(line.rstrip(b"\r"))
        return line.rstrip(b"\r").decode()

    def expect(self, verb: str, answer: bytes) -> str:
        got = self.line()
        assert got.split(" ")[0] == verb, f"expected {verb}, got {got!r}"
        self.send(answer)
        return got.partition(" ")[2]

    def login(self, *, auth: bool = True, feat: bytes = FEAT) -> None:
        self.send(b"220 scripted\r\n")
        if auth:
            self.expect("AUTH", b"234 go ahead\r\n")
            self.sock = self.context.wrap_socket(self.sock, server_side=True)
        self.expect("USER", b"331 password\r\n")
        self.expect("PASS", b"230 in\r\n")
        if auth or isinstance(self.sock, ssl.SSLSocket):
            self.expect("PBSZ", b"200 ok\r\n")
            self.expect("PROT", b"200 ok\r\n")
        self.expect("TYPE", b"200 binary\r\n")
        self.expect("FEAT", feat)

    def passive(self, *, pasv_host: str | None = None) -> socket.socket:
        """Answer EPSV (or, with *pasv_host*, refuse it and answer PASV naming that host)."""
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        if pasv_host is None:
            self.expect("EPSV", f"229 Entering Extended Passive Mode (|||{port}|)\r\n".encode())
        else:
            self.expect("EPSV", b"502 no EPSV here\r\n")
            host = pasv_host.replace(".", ",")
            self.expect("PASV", f"227 Passive ({host},{port >> 8},{port & 255})\r\n".encode())
        return listener

    def accept(self, listener: socket.socket, *, tls: bool = True) -> socket.socket:
        listener.settimeout(10)
        conn, peer = listener.accept()
        listener.close()
        with self.record.lock:
            self.record.peers.append(peer[:2])
        if not tls:
            return conn
        data = self.context.wrap_socket(conn, server_side=True)
        with self.record.lock:
            self.record.handshakes += 1  # data handshakes, counted only when resumed
            if not data.session_reused:
                self.record.handshakes += 1000
        return data

    def serve_rest(self) -> None:
        """Answer QUIT (and anything else) until the client goes."""
        while line := self.line():
            self.send(b"221 bye\r\n" if line.upper() == "QUIT" else b"200 ok\r\n")


Script = Callable[[Control], None]


@contextlib.asynccontextmanager
async def scripted(
    script: Script, cert: trustme.LeafCert, *, implicit: bool = False
) -> AsyncIterator[ThreadedServer]:
    """Run *script* for each connection; stopped off the event loop, which must keep running
    while the server's threads wait for our sockets to close."""
    context = server_context(cert)

    def handler(conn: socket.socket, record: ServerRecord) -> None:
        control = Control(conn, context, record)
        try:
            script(control)
        finally:
            control.sock.close()  # after AUTH it is a TLS socket of its own (`conn` detached)

    server = ThreadedServer(context if implicit else None, handler).__enter__()
    try:
        yield server
    finally:
        await asyncio.to_thread(server.close)


def retr_script(
    payload: bytes = PAYLOAD,
    *,
    announce: int | None = None,
    close_notify: bool = True,
    final: bytes = b"226 done\r\n",
    pasv_host: str | None = None,
) -> Script:
    def script(ctl: Control) -> None:
        ctl.login()
        listener = ctl.passive(pasv_host=pasv_host)
        size = len(payload) if announce is None else announce
        ctl.expect("RETR", f"150 Opening BINARY mode data connection ({size} bytes)\r\n".encode())
        data = ctl.accept(listener)
        data.sendall(payload)
        if close_notify:
            data.unwrap().close()
        else:
            data.shutdown(socket.SHUT_RDWR)
            data.close()
        ctl.send(final)
        ctl.serve_rest()

    return script


@pytest.fixture
def mgr_factory(trusted: Callable[..., TlsPolicy]) -> Callable[..., ConnectionManager]:
    return lambda **kw: ConnectionManager(policy=trusted(), **kw)


async def test_scripted_download_resumes_the_control_session(
    server_cert: trustme.LeafCert, mgr_factory: Callable[..., ConnectionManager]
) -> None:
    async with scripted(retr_script(), server_cert) as server:
        async with mgr_factory() as mgr, mgr.ftp("localhost", server.port, timeout=5) as ftp:
            assert await ftp.retrieve("f") == PAYLOAD
            assert ftp.data_tls is not None and ftp.data_tls.session_reused
    assert server.record.handshakes == 1  # the server saw one data handshake, resumed


async def test_implicit_tls(
    server_cert: trustme.LeafCert, mgr_factory: Callable[..., ConnectionManager]
) -> None:
    def script(ctl: Control) -> None:
        ctl.login(auth=False)
        ctl.expect("PWD", b'257 "/" is the directory\r\n')
        ctl.serve_rest()

    async with scripted(script, server_cert, implicit=True) as server:
        async with mgr_factory() as mgr:
            async with mgr.ftp("localhost", server.port, security="tls", timeout=5) as ftp:
                assert ftp.tls is not None and await ftp.pwd() == "/"
            assert mgr.find_service_point(f"ftps://localhost:{server.port}").current_connections
    assert b"AUTH TLS" not in server.record.received


@pytest.mark.parametrize("refusal", [b"534 policy forbids TLS\r\n", b"502 not implemented\r\n"])
async def test_refused_auth_tls_sends_nothing_in_clear(
    server_cert: trustme.LeafCert, mgr_factory: Callable[..., ConnectionManager], refusal: bytes
) -> None:
    def script(ctl: Control) -> None:
        ctl.send(b"220 no tls here\r\n")
        ctl.expect("AUTH", refusal)
        ctl.serve_rest()

    async with scripted(script, server_cert) as server:
        async with mgr_factory() as mgr:
            with pytest.raises(StartTlsUnavailableError, match=refusal[:3].decode()):
                async with mgr.ftp("localhost", server.port, username="u", password=PASSWORD):
                    pass
            assert mgr.find_service_point(f"ftp://localhost:{server.port}").current_connections == 0
    assert server.record.received == [b"AUTH TLS"]  # no USER, no password, not even QUIT


async def test_bytes_injected_after_234_are_refused(
    server_cert: trustme.LeafCert, mgr_factory: Callable[..., ConnectionManager]
) -> None:
    def script(ctl: Control) -> None:
        ctl.send(b"220 hi\r\n")
        ctl.expect("AUTH", b"234 go ahead\r\n230 injected: you are logged in\r\n")
        ctl.serve_rest()

    async with scripted(script, server_cert) as server:
        async with mgr_factory() as mgr:
            with pytest.raises(FtpProtocolError, match="injection"):
                async with mgr.ftp("localhost", server.port, password=PASSWORD):
                    pass
    assert server.record.received == [b"AUTH TLS"]


async def test_pasv_host_is_ignored(
    server_cert: trustme.LeafCert, mgr_factory: Callable[..., ConnectionManager]
) -> None:
    # The listener is bound to 127.0.0.1 only: a client that believed 127.0.0.2 would fail.
    async with scripted(retr_script(pasv_host="127.0.0.2"), server_cert) as server:
        async with mgr_factory() as mgr, mgr.ftp("127.0.0.1", server.port, timeout=5) as ftp:
            assert await ftp.retrieve("f") == PAYLOAD
    assert [peer[0] for peer in server.record.peers] == ["127.0.0.1", "127.0.0.1"]


@pytest.mark.parametrize(
    ("greeting", "error"),
    [
        (b"220 " + b"x" * (10 * 2**20), FtpProtocolError),  # a 10 MiB reply line
        (b"220-start\r\n" + b" more\r\n" * 5000, FtpProtocolError),  # never ends
        (b"220 ok\r\n", None),
    ],
)
async def test_oversized_replies_are_refused(
    server_cert: trustme.LeafCert,
    mgr_factory: Callable[..., ConnectionManager],
    greeting: bytes,
    error: type[Exception] | None,
) -> None:
    def script(ctl: Control) -> None:
        with contextlib.suppress(OSError):
            ctl.send(greeting)
        ctl.serve_rest()

    async with scripted(script, server_cert) as server:
        async with mgr_factory() as mgr:
            started = time.monotonic()
            with pytest.raises(error or StartTlsUnavailableError):
                async with mgr.ftp("localhost", server.port, timeout=10):
                    pass
            assert time.monotonic() - started < 5  # refused as it arrived, not at the timeout
            assert mgr.find_service_point(f"ftp://localhost:{server.port}").current_connections == 0


async def test_a_trickled_reply_ends_at_the_timeout(
    server_cert: trustme.LeafCert, mgr_factory: Callable[..., ConnectionManager]
) -> None:
    gone = threading.Event()

    def script(ctl: Control) -> None:
        ctl.send(b"220-welcome\r\n")
        with contextlib.suppress(OSError):
            while not gone.wait(0.02):
                ctl.send(b" still talking\r\n")

    async with scripted(script, server_cert) as server:
        async with mgr_factory() as mgr:
            with pytest.raises(TimeoutError, match="reply"):
                async with mgr.ftp("localhost", server.port, timeout=0.5):
                    pass
            gone.set()


@pytest.mark.parametrize(
    ("script", "match"),
    [
        (retr_script(final=b"426 transfer aborted\r\n"), "426"),
        (
            retr_script(PAYLOAD[:1000], announce=len(PAYLOAD)),
            "announced 307200 bytes and sent 1000",
        ),
        (retr_script(close_notify=False), "close_notify"),
        (retr_script(final=b"150 again?\r\n"), "150"),
    ],
    ids=["426-after-data", "closed-early", "no-close-notify", "no-226"],
)
async def test_dishonest_transfer_ends_are_errors_and_close_the_session(
    server_cert: trustme.LeafCert,
    mgr_factory: Callable[..., ConnectionManager],
    script: Script,
    match: str,
) -> None:
    async with scripted(script, server_cert) as server:
        async with mgr_factory() as mgr:
            sp = mgr.find_service_point(f"ftp://localhost:{server.port}")
            async with mgr.ftp("localhost", server.port, timeout=5) as ftp:
                with pytest.raises(FtpError, match=match):
                    async with ftp.download("f") as chunks:
                        async for _ in chunks:
                            pass
                with pytest.raises(FtpError, match="closed after a failed"):
                    await ftp.pwd()
            assert sp.current_connections == 0  # the session was not pooled


def named_retr_script(name: str, sent: bytes, *, tls: bool) -> Script:
    """RETR as vsftpd answers it: ``150 ... for <name> (<size> bytes).``, the size of PAYLOAD;
    then *sent* on the data connection, which ends cleanly."""

    def script(ctl: Control) -> None:
        ctl.login(auth=tls)
        listener = ctl.passive()
        opening = f"150 Opening BINARY mode data connection for {name} ({len(PAYLOAD)} bytes)."
        ctl.expect("RETR", opening.encode() + b"\r\n")
        data = ctl.accept(listener, tls=tls)
        data.sendall(sent)
        if isinstance(data, ssl.SSLSocket):
            data = data.unwrap()
        data.close()
        ctl.send(b"226 Transfer complete.\r\n")
        ctl.serve_rest()

    return script


async def test_the_announced_size_is_the_last_in_the_reply(
    server_cert: trustme.LeafCert, mgr_factory: Callable[..., ConnectionManager]
) -> None:
    # A size-like "(N bytes)" in the file name comes before the size vsftpd announces.
    async with scripted(
        named_retr_script("photo (2 bytes).jpg", PAYLOAD, tls=True), server_cert
    ) as server:
        async with mgr_factory() as mgr, mgr.ftp("localhost", server.port, timeout=5) as ftp:
            assert await ftp.retrieve("photo (2 bytes).jpg") == PAYLOAD
    # Without TLS a clean end proves nothing: only the count can reveal a truncation.
    truncated = named_retr_script("x (1000 bytes)", PAYLOAD[:1000], tls=False)
    async with scripted(truncated, server_cert) as server:
        async with mgr_factory() as mgr:
            sp = mgr.find_service_point(f"ftp://localhost:{server.port}")
            with pytest.raises(FtpProtocolError, match="announced 307200 bytes and sent 1000"):
                async with mgr.ftp("localhost", server.port, security="none", timeout=5) as ftp:
                    await ftp.retrieve("x (1000 bytes)")
            assert sp.current_connections == 0


HOSTILE_NAMES = ["../../x", "/etc/passwd", "a\x1b]0;title\x07b", " lead", "trail "]


def listing_script(verb: str, lines: list[str]) -> Script:
    """A listing of *lines* in answer to *verb* (MLSD is announced in FEAT as MLST)."""
    feat = FEAT.replace(b"211 End", b" MLST type*;size*;\r\n211 End") if verb == "MLSD" else FEAT

    def script(ctl: Control) -> None:
        ctl.login(feat=feat)
        listener = ctl.passive()
        ctl.expect(verb, b"150 Here comes the directory listing.\r\n")
        data = ctl.accept(listener)
        data.sendall("".join(line + "\r\n" for line in lines).encode())
        data.unwrap().close()
        ctl.send(b"226 Directory send OK.\r\n")
        ctl.serve_rest()

    return script


@pytest.mark.parametrize(
    ("verb", "lines"),
    [
        (
            "MLSD",
            ["type=cdir; /pub", "type=pdir; /", "type=file; ..", "type=dir; ."]
            + [f"type=file;size=1; {name}" for name in HOSTILE_NAMES],
        ),
        (
            "LIST",
            ["total 5", "drwxr-xr-x 2 0 0 6 Jan 01  2020 .", "-rw-r--r-- 1 0 0 1 Jan 01  2020 .."]
            + [f"-rw-r--r-- 1 0 0 1 Jan 01  2020 {name}" for name in HOSTILE_NAMES],
        ),
    ],
)
async def test_listings_hold_names_exactly_and_never_dot_entries(
    server_cert: trustme.LeafCert,
    mgr_factory: Callable[..., ConnectionManager],
    verb: str,
    lines: list[str],
) -> None:
    async with scripted(listing_script(verb, lines), server_cert) as server:
        async with mgr_factory() as mgr, mgr.ftp("localhost", server.port, timeout=5) as ftp:
            entries = await ftp.list()
    # Names come back as the server sent them: the caller checks them before using one as a
    # local path (see FtpEntry.name); the directory itself and its parent are never entries.
    assert [(e.name, e.type, e.size) for e in entries] == [(n, "file", 1) for n in HOSTILE_NAMES]
    assert f"{verb} .".encode() in server.record.received


def stall_script() -> Script:
    def script(ctl: Control) -> None:
        ctl.login()
        listener = ctl.passive()
        ctl.expect("RETR", b"150 here it comes (1000000 bytes)\r\n")
        data = ctl.accept(listener)
        data.sendall(PAYLOAD[:5000])
        ctl.line()  # stall until the client gives up on the control connection
        data.close()

    return script


def accepting_all(ctl: Control) -> None:
    """Log the client in, then answer every command with 200 (QUIT with 221)."""
    ctl.login()
    ctl.serve_rest()


async def download_from_stall(mgr: ConnectionManager, port: int, started: asyncio.Event) -> None:
    """Download from a `stall_script` server: *started* is set once data flows, and the
    download then waits until something ends it from outside."""
    async with mgr.ftp("localhost", port, timeout=30) as ftp:
        async with ftp.download("f") as chunks:
            async for _ in chunks:
                started.set()


async def test_a_stalled_data_connection_times_out(
    server_cert: trustme.LeafCert, mgr_factory: Callable[..., ConnectionManager]
) -> None:
    async with scripted(stall_script(), server_cert) as server:
        async with mgr_factory() as mgr:
            sp = mgr.find_service_point(f"ftp://localhost:{server.port}")
            with pytest.raises(TimeoutError):
                async with mgr.ftp("localhost", server.port, timeout=0.5) as ftp:
                    await ftp.retrieve("f")
            assert sp.current_connections == 0


async def test_cancelled_download_leaks_nothing_and_is_not_pooled(
    server_cert: trustme.LeafCert, mgr_factory: Callable[..., ConnectionManager]
) -> None:
    first_chunk = asyncio.Event()
    with fd_baseline():
        async with scripted(stall_script(), server_cert) as server, mgr_factory() as mgr:
            sp = mgr.find_service_point(f"ftp://localhost:{server.port}")
            task = asyncio.create_task(download_from_stall(mgr, server.port, first_chunk))
            await first_chunk.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert sp.current_connections == 0


async def test_closing_the_manager_ends_a_download(
    server_cert: trustme.LeafCert, mgr_factory: Callable[..., ConnectionManager]
) -> None:
    with fd_baseline():
        async with scripted(stall_script(), server_cert) as server:
            mgr = mgr_factory()
            started = asyncio.Event()
            task = asyncio.create_task(download_from_stall(mgr, server.port, started))
            await started.wait()
            await mgr.aclose()
            with pytest.raises(ManagerClosedError):
                await asyncio.wait_for(task, 5)


async def test_unsafe_paths_are_refused_before_anything_is_sent(
    server_cert: trustme.LeafCert, mgr_factory: Callable[..., ConnectionManager]
) -> None:
    async with scripted(accepting_all, server_cert) as server:
        async with mgr_factory() as mgr, mgr.ftp("localhost", server.port, timeout=5) as ftp:
            before = len(server.record.received)
            for call in (
                ftp.retrieve("a\r\nDELE b"),
                ftp.delete("a\nb"),
                ftp.upload("a\0b", b"x"),
                ftp.rename("ok", "bad\r"),
                ftp.cwd("x\ny"),
                ftp.list("\r"),
            ):
                with pytest.raises(FtpArgumentError):
                    await call
            await ftp.mkdir("fine")  # still usable: nothing was sent
            assert server.record.received[before:] == [b"MKD fine"]


async def test_epsv_refused_falls_back_to_pasv_once(
    server_cert: trustme.LeafCert, mgr_factory: Callable[..., ConnectionManager]
) -> None:
    def script(ctl: Control) -> None:
        ctl.login()
        for payload in (b"one", b"two"):
            listener = socket.create_server(("127.0.0.1", 0))
            port = listener.getsockname()[1]
            if payload == b"one":
                ctl.expect("EPSV", b"500 what?\r\n")
            ctl.expect("PASV", f"227 =127,0,0,1,{port >> 8},{port & 255}\r\n".encode())
            ctl.expect("RETR", b"150 ok\r\n")
            data = ctl.accept(listener)
            data.sendall(payload)
            data.unwrap().close()
            ctl.send(b"226 ok\r\n")
        ctl.serve_rest()

    async with scripted(script, server_cert) as server:
        async with mgr_factory() as mgr, mgr.ftp("localhost", server.port, timeout=5) as ftp:
            assert await ftp.retrieve("a") == b"one"
            assert await ftp.retrieve("b") == b"two"


async def test_pooled_sessions_say_quit_when_closed(
    server_cert: trustme.LeafCert, mgr_factory: Callable[..., ConnectionManager]
) -> None:
    async with scripted(accepting_all, server_cert) as server:
        async with mgr_factory() as mgr:
            sp = mgr.find_service_point(f"ftp://localhost:{server.port}")
            async with mgr.ftp("localhost", server.port, timeout=5):
                pass
            async with mgr.ftp("localhost", server.port, timeout=5):
                pass  # the same session, from the pool
            assert sp.current_connections == 1 and sp.stats.connections_opened == 1
            await sp.close()  # idle sessions end politely
            assert sp.current_connections == 0
    assert server.record.received[-1] == b"QUIT"
    assert server.record.received.count(b"USER anonymous") == 1
