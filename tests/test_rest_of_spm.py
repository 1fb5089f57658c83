"""The rest of ServicePointManager across protocols: CRL revocation and the validator over HTTP,
SMTP and FTP; socket options and the local address on HTTP connections (direct and tunnelled).

Real peers on loopback: aiohttp's web server, aiosmtpd and pyftpdlib, each with trustme
certificates; a CRL made here with ``cryptography`` (`write_crl`).
"""

from __future__ import annotations

import hashlib
import pathlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable

import pytest
import trustme
from OpenSSL import SSL

import asyncsp
from asyncsp import CertificateVerificationError, ConnectionManager, TlsInfo, TlsPolicy

from .servers import LOCAL, server_context
from .test_ftp import PAYLOAD, PyFtpd
from .test_http_proxy import ScriptedProxy, tunnel
from .test_http_support import Trusted, WebServer, endpoint_of
from .test_revocation_and_sockets import write_crl
from .test_smtp import mail_server, message


def der_of(cert: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


class Recorder:
    """A validator that records what it saw and answers as told."""

    def __init__(self, verdict: Callable[[TlsInfo, bytes], bool] = lambda info, der: True):
        self.seen: list[tuple[TlsInfo, bytes]] = []
        self.verdict = verdict

    def __call__(self, info: TlsInfo, der: bytes) -> bool:
        self.seen.append((info, der))
        return self.verdict(info, der)

    @property
    def resumed(self) -> list[bool]:
        return [info.session_reused for info, _ in self.seen]


class Refusal(Exception):
    """What a validator raises in these tests."""


def refuse_with_exception(info: TlsInfo, der: bytes) -> bool:
    raise Refusal("not on my watch")


@pytest.fixture
def revoked(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("localhost", LOCAL)


@pytest.fixture
def crl_policy(
    ca: trustme.CA, revoked: trustme.LeafCert, tmp_path: pathlib.Path, trusted: Trusted
) -> TlsPolicy:
    return trusted(crlfile=write_crl(ca, [revoked], tmp_path / "ca.crl"))


@pytest.fixture
def ftp_root(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "payload.bin").write_bytes(PAYLOAD)
    return root


@pytest.fixture
async def https(server_cert: trustme.LeafCert) -> AsyncIterator[WebServer]:
    async with WebServer(server_context(server_cert)) as server:
        yield server


# -- CRL revocation --------------------------------------------------------------------------


async def test_revoked_leaf_is_refused_over_http(
    revoked: trustme.LeafCert, https: WebServer, crl_policy: TlsPolicy
) -> None:
    async with (
        WebServer(server_context(revoked)) as bad,
        ConnectionManager(policy=crl_policy) as mgr,
    ):
        with pytest.raises(CertificateVerificationError, match="revoked") as caught:
            await mgr.get(bad.url())
        assert caught.value.endpoint == f"https://{LOCAL}:{bad.port}"
        assert (await mgr.get(https.url())).status == 200  # the CA's other leaf is fine
    assert bad.seen.requests == 0


async def test_revoked_leaf_is_refused_over_smtp(
    revoked: trustme.LeafCert, server_cert: trustme.LeafCert, crl_policy: TlsPolicy
) -> None:
    with mail_server(revoked) as bad, mail_server(server_cert) as good:
        async with ConnectionManager(policy=crl_policy) as mgr:
            with pytest.raises(CertificateVerificationError, match="revoked"):
                async with mgr.smtp(LOCAL, bad.port, timeout=5) as client:
                    await client.send_message(message())
            async with mgr.smtp(LOCAL, good.port, timeout=5) as client:
                await client.send_message(message())
    assert bad.box.messages == [] and len(good.box.messages) == 1


async def test_revoked_leaf_is_refused_over_ftp(
    revoked: trustme.LeafCert, ftp_root: pathlib.Path, crl_policy: TlsPolicy
) -> None:
    with PyFtpd(ftp_root, revoked, SSL.TLS1_3_VERSION) as bad:
        async with ConnectionManager(policy=crl_policy) as mgr:
            with pytest.raises(CertificateVerificationError, match="revoked") as caught:
                async with mgr.ftp("localhost", bad.port, timeout=5) as client:
                    await client.retrieve("payload.bin")
            assert f"localhost:{bad.port}" in str(caught.value)


# -- the validator ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
async def test_validator_over_http_sees_the_connection_and_runs_on_resumption(
    server_cert: trustme.LeafCert, trusted: Trusted, version: str
) -> None:
    # Accept two connections (the second one resumed), refuse the third.
    recorder = Recorder(lambda info, der: len(recorder.seen) < 3)
    async with (
        WebServer(server_context(server_cert, version, version)) as server,
        ConnectionManager(policy=trusted(validator=recorder)) as mgr,
    ):
        mgr.find_service_point(server.url()).connection_lease_timeout = 0.0  # new each time
        first = await mgr.get(server.url())
        second = await mgr.get(server.url())
        with pytest.raises(CertificateVerificationError, match="validator refused"):
            await mgr.get(server.url())
    assert recorder.resumed == [False, True, True]
    assert [info for info, _ in recorder.seen[:2]] == [first.tls, second.tls]
    for info, der in recorder.seen:
        assert info.version == version and der == der_of(server_cert)
        assert info.peer_cert_sha256 == hashlib.sha256(der).hexdigest()
    assert server.seen.requests == 2  # nothing was sent on the refused connection


async def test_validator_exception_is_the_cause_over_http_and_through_a_proxy(
    https: WebServer, trusted: Trusted
) -> None:
    async with ScriptedProxy(tunnel()) as proxy:
        for via in (None, proxy.url()):
            policy = trusted(validator=refuse_with_exception)
            async with ConnectionManager(policy=policy, proxy=via) as mgr:
                with pytest.raises(CertificateVerificationError, match="not on my watch") as caught:
                    await mgr.get(https.url())
            assert isinstance(caught.value.__cause__, Refusal)
    assert https.seen.requests == 0 and len(proxy.heads) == 1


async def test_validator_over_smtp(server_cert: trustme.LeafCert, trusted: Trusted) -> None:
    recorder = Recorder()
    with mail_server(server_cert) as server:
        async with ConnectionManager(policy=trusted(validator=recorder)) as mgr:
            sp = mgr.find_service_point(f"smtp://{LOCAL}:{server.port}")
            sp.connection_lease_timeout = 0.0  # each session on a new connection
            for _ in range(2):
                async with mgr.smtp(LOCAL, server.port, timeout=5) as client:
                    assert client.tls is not None
                    await client.send_message(message())
            assert recorder.resumed == [False, True]
            assert sp.stats.session_resumptions == 1
        async with ConnectionManager(policy=trusted(validator=refuse_with_exception)) as mgr:
            with pytest.raises(CertificateVerificationError) as caught:
                async with mgr.smtp(LOCAL, server.port, timeout=5) as client:
                    await client.send_message(message())
            assert isinstance(caught.value.__cause__, Refusal)
    assert len(server.box.messages) == 2
    assert all(der == der_of(server_cert) for _, der in recorder.seen)


async def test_validator_over_ftp_control_and_data_connections(
    server_cert: trustme.LeafCert, ftp_root: pathlib.Path, trusted: Trusted
) -> None:
    recorder = Recorder()
    with PyFtpd(ftp_root, server_cert, SSL.TLS1_2_VERSION) as server:
        async with ConnectionManager(policy=trusted(validator=recorder)) as mgr:
            async with mgr.ftp("localhost", server.port, timeout=5) as client:
                assert await client.retrieve("payload.bin") == PAYLOAD
                assert await client.retrieve("payload.bin") == PAYLOAD
        # The control connection, then two data connections that resumed its session.
        assert recorder.resumed == [False, True, True]
        assert {info.version for info, _ in recorder.seen} == {"TLSv1.2"}
        # A validator that refuses resumed connections: the data connection fails.
        fresh_only = trusted(validator=lambda info, der: not info.session_reused)
        async with ConnectionManager(policy=fresh_only) as mgr:
            with pytest.raises(CertificateVerificationError, match="validator refused"):
                async with mgr.ftp("localhost", server.port, timeout=5) as client:
                    await client.retrieve("payload.bin")


# -- socket options and the local address on HTTP connections --------------------------------


def http_sockets(mgr: ConnectionManager, url: str) -> list[socket.socket]:
    state = endpoint_of(mgr, url)
    assert state.current is not None
    sockets = [ticket.socket() for ticket in state.current._tickets.values()]
    return [s for s in sockets if s is not None]


async def test_socket_options_read_back_from_http_connections(
    https: WebServer, trusted: Trusted
) -> None:
    async with ScriptedProxy(tunnel()) as proxy:
        for via in (None, proxy.url()):
            options = {"tcp_nodelay": False, "tcp_keepalive": (30, 5)}
            async with ConnectionManager(policy=trusted(), proxy=via, **options) as mgr:
                assert (await mgr.get(https.url())).status == 200
                (sock,) = http_sockets(mgr, https.url())
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5
                peer = sock.getpeername()[1]
                assert peer == (https.port if via is None else proxy.port)
            async with ConnectionManager(policy=trusted(), proxy=via) as mgr:
                await mgr.get(https.url())
                (sock,) = http_sockets(mgr, https.url())
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


async def test_local_address_is_the_peer_an_http_server_sees(
    https: WebServer, trusted: Trusted
) -> None:
    async with WebServer() as plain:
        async with ConnectionManager(policy=trusted(), local_address="127.0.0.2") as mgr:
            assert (await mgr.get(plain.url())).status == 200
            assert (await mgr.get(https.url())).status == 200
    assert plain.seen.hosts == ["127.0.0.2"] and https.seen.hosts == ["127.0.0.2"]


def test_invalid_socket_options_fail_when_the_manager_is_made() -> None:
    for bad in (
        {"tcp_nodelay": 1},
        {"tcp_keepalive": (0, 5)},
        {"tcp_keepalive": (30,)},
        {"local_address": "localhost"},
    ):
        with pytest.raises(ValueError):
            ConnectionManager(**bad)  # type: ignore[arg-type]
    assert asyncsp.ConnectionManager(tcp_keepalive=(1, 32767)).socket_options.tcp_keepalive
