"""A policy's context handed to other code: blocking libraries (``http.client``, ``smtplib``,
plain ``wrap_socket``) get the same handshake checks as asyncsp's own connections, and every
context refuses renegotiation.

Real peers on loopback: threaded TLS servers with trustme certificates, and ``openssl
s_server`` for a server that asks to renegotiate.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import shutil
import smtplib
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import trustme

import asyncsp
from asyncsp import ConnectionManager, SecurityProtocol, TlsPolicy

from .servers import LOCAL, ServerRecord, ThreadedServer, server_context, wait_until

WRONG_PIN = "0" * 64


def _leaf_sha256(cert: trustme.LeafCert) -> str:
    pem = cert.cert_chain_pems[0].bytes().decode()
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def http_handler(conn: socket.socket, record: ServerRecord) -> None:
    """Record what arrives; answer one request with a tiny response."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        with record.lock:
            record.received.append(chunk)
    if data:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


def smtp_handler(conn: socket.socket, record: ServerRecord) -> None:
    """Greet, then record each command and accept it, until QUIT or the client is gone."""
    conn.sendall(b"220 localhost ready\r\n")
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return
        with record.lock:
            record.received.append(chunk)
        if chunk.upper().startswith(b"QUIT"):
            conn.sendall(b"221 bye\r\n")
            return
        conn.sendall(b"250 ok\r\n")


@pytest.fixture
def https_server(server_cert: trustme.LeafCert) -> Iterator[ThreadedServer]:
    with ThreadedServer(server_context(server_cert), http_handler) as server:
        yield server


@pytest.fixture
def smtps_server(server_cert: trustme.LeafCert) -> Iterator[ThreadedServer]:
    with ThreadedServer(server_context(server_cert), smtp_handler) as server:
        yield server


def _http_get(port: int, context: ssl.SSLContext) -> int:
    conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=5)
    try:
        conn.request("GET", "/secret?token=1")
        return conn.getresponse().status
    finally:
        conn.close()


async def test_http_client_is_refused_before_it_sends(
    https_server: ThreadedServer, trusted: Callable[..., TlsPolicy], server_cert: trustme.LeafCert
) -> None:
    good = trusted(pins=frozenset({_leaf_sha256(server_cert)}))
    assert await asyncio.to_thread(_http_get, https_server.port, good.ssl_context()) == 200
    assert b"".join(https_server.record.received).startswith(b"GET /secret")
    https_server.record.received.clear()

    pinned = trusted(pins=frozenset({WRONG_PIN}))
    with pytest.raises(ssl.SSLError, match="matches none of the policy's pins"):
        await asyncio.to_thread(_http_get, https_server.port, pinned.ssl_context())
    await wait_until(lambda: https_server.record.active == 0)  # its handler has finished
    assert https_server.record.connections == 2
    assert https_server.record.received == []


@pytest.mark.parametrize("refusal", ["pin", "validator", "version"])
async def test_smtplib_is_refused_before_it_sends(
    server_cert: trustme.LeafCert, trusted: Callable[..., TlsPolicy], refusal: str
) -> None:
    with contextlib.ExitStack() as stack:
        if refusal == "pin":
            policy = trusted(pins=frozenset({WRONG_PIN}))
        elif refusal == "validator":
            policy = trusted(validator=lambda info, der: False)
        else:
            # A set with a gap offers its whole span; the check refuses the version in the gap
            # (the server speaks TLS 1.2 only).
            stack.enter_context(pytest.warns(asyncsp.InsecurePolicyWarning))
            policy = trusted(
                protocols=SecurityProtocol.TLS11 | SecurityProtocol.TLS13, strong_crypto=False
            )
        context = policy.ssl_context()

    def send(port: int) -> None:
        with smtplib.SMTP_SSL("localhost", port, context=context, timeout=5) as client:
            client.ehlo()

    with ThreadedServer(server_context(server_cert, "TLSv1.2", "TLSv1.2"), smtp_handler) as server:
        with pytest.raises(ssl.SSLError):
            await asyncio.to_thread(send, server.port)
        await wait_until(lambda: server.record.active == 0)
        assert server.record.connections == 1
        assert server.record.received == []  # not even EHLO


async def test_smtplib_with_a_good_policy_talks(
    smtps_server: ThreadedServer, trusted: Callable[..., TlsPolicy]
) -> None:
    context = trusted().ssl_context()

    def send() -> int:
        with smtplib.SMTP_SSL("localhost", smtps_server.port, context=context, timeout=5) as c:
            return c.ehlo()[0]

    assert await asyncio.to_thread(send) == 250
    assert b"".join(smtps_server.record.received).lower().startswith(b"ehlo")


async def test_a_socket_wrapped_without_a_handshake_checks_before_its_first_write(
    https_server: ThreadedServer, trusted: Callable[..., TlsPolicy]
) -> None:
    context = trusted(pins=frozenset({WRONG_PIN})).ssl_context()

    def send() -> None:
        raw = socket.create_connection((LOCAL, https_server.port), timeout=5)
        with context.wrap_socket(
            raw, server_hostname="localhost", do_handshake_on_connect=False
        ) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")

    with pytest.raises(ssl.SSLError, match="pins"):
        await asyncio.to_thread(send)
    await wait_until(lambda: https_server.record.active == 0)
    assert https_server.record.received == []


# -- renegotiation ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def renegotiating_server(
    server_cert: trustme.LeafCert, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[int, asyncio.subprocess.Process]]:
    """``openssl s_server`` under TLS 1.2: a line ``r`` on its stdin asks the client to
    renegotiate, any other line is sent to the client."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    pem = tmp_path_factory.mktemp("reneg") / "server.pem"
    server_cert.private_key_and_cert_chain_pem.write_to_path(pem)
    with socket.socket() as probe:
        probe.bind((LOCAL, 0))
        port = probe.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        openssl, "s_server", "-accept", f"{LOCAL}:{port}", "-cert", str(pem), "-tls1_2",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(10):
            while b"ACCEPT" not in await proc.stdout.readline():
                pass
        yield port, proc
    finally:
        if proc.returncode is None:
            proc.kill()  # our own child, by its PID
        await proc.wait()


async def _server_saw(proc: asyncio.subprocess.Process, text: bytes) -> None:
    assert proc.stdout is not None
    async with asyncio.timeout(10):
        while text not in await proc.stdout.readline():
            pass


async def test_a_server_asking_to_renegotiate_is_refused(
    server_cert: trustme.LeafCert,
    trusted: Callable[..., TlsPolicy],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    assert trusted().ssl_context().options & ssl.OP_NO_RENEGOTIATION
    async with renegotiating_server(server_cert, tmp_path_factory) as (port, proc):
        assert proc.stdin is not None
        async with ConnectionManager(policy=trusted()) as mgr:
            async with mgr.open_stream("localhost", port, tls=True, timeout=5) as stream:
                stream.write(b"hello\n")
                await stream.drain()
                await _server_saw(proc, b"hello")
                proc.stdin.write(b"r\nafter renegotiation\n")
                await proc.stdin.drain()
                received = b""
                with contextlib.suppress(asyncsp.AsyncspError):
                    async with asyncio.timeout(5):
                        while chunk := await stream.read(1024):
                            received += chunk
                # Renegotiation would run a second handshake after our check; the client
                # refuses it (no_renegotiation), so nothing sent after it ever arrives.
                assert b"after renegotiation" not in received


def _memory_handshake(
    client: ssl.SSLContext, server_cert: trustme.LeafCert
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A client SSL object (the caller's own memory BIOs) and a server one, not yet talking."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_cert.configure_cert(server)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    tls = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    peer = server.wrap_bio(s_in, s_out, server_side=True)
    tls.asyncsp_test_bios = (c_in, c_out, s_in, s_out)  # type: ignore[attr-defined]
    return tls, peer


def _writes_until_done(tls: ssl.SSLObject, peer: ssl.SSLObject) -> int:
    """Write from the client before any handshake, passing flights until the write goes."""
    c_in, c_out, s_in, s_out = tls.asyncsp_test_bios  # type: ignore[attr-defined]
    for _ in range(8):  # a handshake is a few flights each way
        try:
            return tls.write(b"early")
        except ssl.SSLWantReadError:
            pass
        s_in.write(c_out.read())
        with contextlib.suppress(ssl.SSLWantReadError):
            peer.do_handshake()
        c_in.write(s_out.read())
    raise AssertionError("the handshake did not finish")


def test_a_write_before_the_handshake_runs_the_check_first(
    server_cert: trustme.LeafCert, trusted: Callable[..., TlsPolicy]
) -> None:
    """A caller driving its own memory BIOs may write first; OpenSSL would then run the
    handshake inside the write, past the check, so the write runs it (and the check) itself."""
    tls, peer = _memory_handshake(trusted().ssl_context(), server_cert)
    assert _writes_until_done(tls, peer) == len(b"early")
    # Checked once: the writes after it go straight to the standard library's.
    assert type(tls).write is ssl.SSLObject.write

    wrong_pin = "00" * 32
    tls, peer = _memory_handshake(trusted(pins={wrong_pin}).ssl_context(), server_cert)
    with pytest.raises(ssl.SSLError, match="pin"):
        _writes_until_done(tls, peer)
    assert type(tls).write is not ssl.SSLObject.write  # refused: still guarded
