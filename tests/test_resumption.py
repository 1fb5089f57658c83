"""TLS session resumption per service point, on raw streams."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import trustme

import asyncsp
from asyncsp import ConnectionManager, SecurityProtocol, TlsPolicy

from .servers import ThreadedServer, server_context

SP = SecurityProtocol


@pytest.fixture(scope="module", params=["TLSv1.2", "TLSv1.3"])
def server(
    request: pytest.FixtureRequest, server_cert: trustme.LeafCert
) -> Iterator[ThreadedServer]:
    version = request.param
    with ThreadedServer(server_context(server_cert, version, version)) as running:
        yield running


async def _exchange(mgr: ConnectionManager, port: int, host: str = "localhost") -> asyncsp.TlsInfo:
    async with mgr.open_stream(host, port, tls=True, timeout=5) as s:
        s.write(b"x")
        assert await s.readexactly(6) == b"echo:x"
        assert s.tls is not None
        return s.tls


async def test_second_connection_resumes(
    server: ThreadedServer, trusted: Callable[..., TlsPolicy]
) -> None:
    async with ConnectionManager(policy=trusted()) as mgr:
        first = await _exchange(mgr, server.port)
        second = await _exchange(mgr, server.port)
        third = await _exchange(mgr, server.port)
        assert not first.session_reused
        assert second.session_reused and third.session_reused
        assert second.version == first.version
        assert second.peer_cert_sha256 == first.peer_cert_sha256
        sp = mgr.find_service_point(f"tls://localhost:{server.port}")
        assert sp.stats.tls_handshakes == 1
        assert sp.stats.session_resumptions == 2


async def test_resume_sessions_false_never_resumes(
    server: ThreadedServer, trusted: Callable[..., TlsPolicy]
) -> None:
    async with ConnectionManager(policy=trusted(resume_sessions=False)) as mgr:
        infos = [await _exchange(mgr, server.port) for _ in range(3)]
        assert not any(i.session_reused for i in infos)


async def test_a_policy_change_starts_a_fresh_cache(
    server: ThreadedServer, trusted: Callable[..., TlsPolicy]
) -> None:
    async with ConnectionManager(policy=trusted()) as mgr:
        await _exchange(mgr, server.port)
        assert (await _exchange(mgr, server.port)).session_reused
        mgr.policy = trusted(alpn=("other",))
        assert not (await _exchange(mgr, server.port)).session_reused
        assert (await _exchange(mgr, server.port)).session_reused


async def test_sessions_never_cross_endpoints(
    server: ThreadedServer, trusted: Callable[..., TlsPolicy]
) -> None:
    async with ConnectionManager(policy=trusted()) as mgr:
        await _exchange(mgr, server.port)
        # Another host name for the same server: its own service point, its own cache.
        assert not (await _exchange(mgr, server.port, host="127.0.0.1")).session_reused
        # Another port: a fresh server, nothing to resume.
        assert server.context is not None
        with ThreadedServer(server.context) as other:
            assert not (await _exchange(mgr, other.port)).session_reused


async def test_resumed_connections_are_still_verified(
    server: ThreadedServer, trusted: Callable[..., TlsPolicy]
) -> None:
    calls: list[bool] = []

    def record(info: asyncsp.TlsInfo, der: bytes) -> bool:
        calls.append(info.session_reused)
        assert der  # the session's peer certificate is checked on resumption too
        return len(calls) < 3

    async with ConnectionManager(policy=trusted(validator=record)) as mgr:
        await _exchange(mgr, server.port)
        await _exchange(mgr, server.port)
        with pytest.raises(asyncsp.CertificateVerificationError):
            await _exchange(mgr, server.port)
    assert calls == [False, True, True]


async def test_version_limit_holds_on_resumption(
    server_cert: trustme.LeafCert, trusted: Callable[..., TlsPolicy]
) -> None:
    with ThreadedServer(server_context(server_cert, "TLSv1.2", "TLSv1.3")) as both:
        async with ConnectionManager(policy=trusted(protocols=SP.TLS12)) as mgr:
            first = await _exchange(mgr, both.port)
            second = await _exchange(mgr, both.port)
            assert first.version == second.version == "TLSv1.2"
            assert second.session_reused


@pytest.fixture(scope="module", params=["TLSv1.2", "TLSv1.3"])
def other_name_server(request: pytest.FixtureRequest, ca: trustme.CA) -> Iterator[ThreadedServer]:
    """A server whose certificate names ``other.example`` only, never ``localhost``."""
    version = request.param
    cert = ca.issue_cert("other.example")
    with ThreadedServer(server_context(cert, version, version)) as running:
        yield running


async def _upgraded(mgr: ConnectionManager, port: int, name: str | None) -> asyncsp.TlsInfo:
    async with mgr.open_stream("localhost", port, timeout=5) as s:
        info = await s.start_tls(server_hostname=name)
        assert s.server_hostname == (name or "localhost")  # the name TLS verified
        s.write(b"x")
        assert await s.readexactly(6) == b"echo:x"  # a TLS 1.3 ticket arrives by now
        return info


async def test_a_session_is_kept_under_the_name_its_handshake_verified(
    other_name_server: ThreadedServer, trusted: Callable[..., TlsPolicy]
) -> None:
    port = other_name_server.port
    async with ConnectionManager(policy=trusted()) as mgr:
        assert not (await _upgraded(mgr, port, "other.example")).session_reused
        # The stream was opened as "localhost"; its session was verified for other.example
        # only. Offered to a handshake for "localhost" it would be resumed, and a resumed
        # handshake checks no host name: the certificate must be checked, and refused.
        with pytest.raises(asyncsp.CertificateVerificationError):
            await _upgraded(mgr, port, None)
        assert (await _upgraded(mgr, port, "other.example")).session_reused
