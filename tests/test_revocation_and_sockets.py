"""CRL revocation checks and socket options on raw streams."""

from __future__ import annotations

import datetime
import pathlib
import socket
from collections.abc import Callable

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from asyncsp import (
    CertificateVerificationError,
    ConnectionManager,
    PolicyError,
    TlsPolicy,
)

from .servers import ThreadedServer, server_context


def write_crl(ca: trustme.CA, revoked: list[trustme.LeafCert], path: pathlib.Path) -> pathlib.Path:
    """A CRL signed by *ca* listing *revoked*, written as PEM to *path*."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - datetime.timedelta(minutes=1))
        .next_update(now + datetime.timedelta(days=1))
    )
    for leaf in revoked:
        serial = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - datetime.timedelta(seconds=30))
            .build()
        )
    crl = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


async def test_revoked_leaf_is_refused_and_others_accepted(
    ca: trustme.CA, tmp_path: pathlib.Path, trusted: Callable[..., TlsPolicy]
) -> None:
    revoked = ca.issue_cert("localhost")
    good = ca.issue_cert("localhost")
    crl = write_crl(ca, [revoked], tmp_path / "ca.crl")
    with (
        ThreadedServer(server_context(revoked)) as bad_server,
        ThreadedServer(server_context(good)) as good_server,
    ):
        async with ConnectionManager(policy=trusted(crlfile=crl)) as mgr:
            with pytest.raises(CertificateVerificationError, match="revoked") as info:
                async with mgr.open_stream("localhost", bad_server.port, tls=True, timeout=5):
                    pass
            assert f"localhost:{bad_server.port}" in str(info.value)
            async with mgr.open_stream("localhost", good_server.port, tls=True, timeout=5) as s:
                assert s.tls is not None
        assert bad_server.record.received == []


def test_missing_or_malformed_crl_is_a_policy_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(PolicyError, match="crlfile"):
        TlsPolicy(crlfile=tmp_path / "missing.crl")
    junk = tmp_path / "junk.crl"
    junk.write_text("-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n")
    with pytest.raises(PolicyError, match="crlfile"):
        TlsPolicy(crlfile=junk).ssl_context()


async def test_socket_options_are_set_on_every_connection() -> None:
    with ThreadedServer() as server:
        async with ConnectionManager(tcp_keepalive=(30, 5)) as mgr:
            async with mgr.open_stream("127.0.0.1", server.port, timeout=5) as s:
                sock = s.get_extra_info("socket")
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5
        async with ConnectionManager(tcp_nodelay=False) as mgr:
            async with mgr.open_stream("127.0.0.1", server.port, timeout=5) as s:
                sock = s.get_extra_info("socket")
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


async def test_local_address_is_the_peer_address_the_server_sees() -> None:
    with ThreadedServer() as server:
        async with ConnectionManager(local_address="127.0.0.2") as mgr:
            async with mgr.open_stream("127.0.0.1", server.port, timeout=5) as s:
                s.write(b"x")
                await s.readexactly(6)
        assert server.record.peers[-1][0] == "127.0.0.2"


async def test_resolved_addresses_are_reused_until_the_refresh_timeout() -> None:
    with ThreadedServer() as server:
        async with ConnectionManager(dns_refresh_timeout=60) as mgr:
            sp = mgr.find_service_point(f"tcp://localhost:{server.port}")
            async with mgr.open_stream("localhost", server.port, timeout=5):
                pass
            cached = sp.dialer.addresses.cached
            assert cached is not None
            async with mgr.open_stream("localhost", server.port, timeout=5):
                pass
            assert sp.dialer.addresses.cached is cached
            sp.dns_refresh_timeout = 0
            async with mgr.open_stream("localhost", server.port, timeout=5):
                pass
            assert sp.dialer.addresses.cached is None  # a zero refresh time: resolved every time
