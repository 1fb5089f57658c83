"""The version matrix: servers pinned to each TLS version against each client policy.

Each cell asserts the negotiated version, or the refusal and that the refused server received
no application byte.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import pytest
import trustme

from asyncsp import (
    ConnectionManager,
    InsecurePolicyWarning,
    ProtocolNotAllowedError,
    SecurityProtocol,
    TlsError,
    TlsPolicy,
)

from .servers import ThreadedServer, server_context

SP = SecurityProtocol
LEGACY_ALL = SP.TLS | SP.TLS11 | SP.TLS12 | SP.TLS13

SERVERS = {
    "1.0": ("TLSv1", "TLSv1"),
    "1.1": ("TLSv1.1", "TLSv1.1"),
    "1.2": ("TLSv1.2", "TLSv1.2"),
    "1.3": ("TLSv1.3", "TLSv1.3"),
    "1.2-1.3": ("TLSv1.2", "TLSv1.3"),
}

# policy name -> (protocols, strong_crypto, {server: negotiated version or None for refused})
MATRIX: dict[str, tuple[SP, bool, dict[str, str | None]]] = {
    "SYSTEM_DEFAULT": (
        SP.SYSTEM_DEFAULT,
        True,
        {"1.0": None, "1.1": None, "1.2": "TLSv1.2", "1.3": "TLSv1.3", "1.2-1.3": "TLSv1.3"},
    ),
    "TLS12": (
        SP.TLS12,
        True,
        {"1.0": None, "1.1": None, "1.2": "TLSv1.2", "1.3": None, "1.2-1.3": "TLSv1.2"},
    ),
    "TLS13": (
        SP.TLS13,
        True,
        {"1.0": None, "1.1": None, "1.2": None, "1.3": "TLSv1.3", "1.2-1.3": "TLSv1.3"},
    ),
    "TLS12|TLS13": (
        SP.TLS12 | SP.TLS13,
        True,
        {"1.0": None, "1.1": None, "1.2": "TLSv1.2", "1.3": "TLSv1.3", "1.2-1.3": "TLSv1.3"},
    ),
    "legacy opt-out": (
        LEGACY_ALL,
        False,
        {
            "1.0": "TLSv1",
            "1.1": "TLSv1.1",
            "1.2": "TLSv1.2",
            "1.3": "TLSv1.3",
            "1.2-1.3": "TLSv1.3",
        },
    ),
    "gap TLS|TLS12": (
        SP.TLS | SP.TLS12,
        False,
        {"1.0": "TLSv1", "1.1": None, "1.2": "TLSv1.2", "1.3": None, "1.2-1.3": "TLSv1.2"},
    ),
    "gap TLS|TLS13": (
        SP.TLS | SP.TLS13,
        False,
        {"1.0": "TLSv1", "1.1": None, "1.2": None, "1.3": "TLSv1.3", "1.2-1.3": "TLSv1.3"},
    ),
}

CELLS = [(p, s) for p in MATRIX for s in SERVERS]


@pytest.fixture(scope="module")
def servers(server_cert: trustme.LeafCert) -> Iterator[dict[str, ThreadedServer]]:
    running = {
        name: ThreadedServer(server_context(server_cert, lo, hi)).__enter__()
        for name, (lo, hi) in SERVERS.items()
    }
    yield running
    for server in running.values():
        server.close()


@pytest.mark.parametrize(("policy_name", "server_name"), CELLS, ids=[f"{p}@{s}" for p, s in CELLS])
async def test_version_matrix(
    servers: dict[str, ThreadedServer],
    trusted: Callable[..., TlsPolicy],
    policy_name: str,
    server_name: str,
) -> None:
    protocols, strong, row = MATRIX[policy_name]
    expected = row[server_name]
    policy = trusted(protocols=protocols, strong_crypto=strong)
    server = servers[server_name]
    received_before = len(server.record.received)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePolicyWarning)  # the opt-out rows warn
        async with ConnectionManager(policy=policy) as mgr:
            if expected is None:
                with pytest.raises(TlsError) as info:
                    async with mgr.open_stream("localhost", server.port, tls=True, timeout=10):
                        pytest.fail("a refused connection was handed out")
                assert f"localhost:{server.port}" in str(info.value)
                if server_name != "1.0" and not strong and SP.TLS in protocols:
                    # The handshake succeeded at a version in the gap: our check refused it.
                    assert isinstance(info.value, ProtocolNotAllowedError)
                assert len(server.record.received) == received_before  # no application byte
            else:
                async with mgr.open_stream("localhost", server.port, tls=True, timeout=10) as s:
                    assert s.tls is not None
                    assert s.tls.version == expected
                    assert s.tls.protocol == SP.from_version_string(expected)
                    s.write(b"ping")
                    assert await s.readexactly(9) == b"echo:ping"
                sp = mgr.find_service_point(f"tls://localhost:{server.port}")
                assert sp.stats.versions == {expected: 1}


async def test_version_refusals_are_protocol_errors(
    servers: dict[str, ThreadedServer], trusted: Callable[..., TlsPolicy]
) -> None:
    """A strong client against a TLS 1.1-only server: a version error, with a hint."""
    async with ConnectionManager(policy=trusted()) as mgr:
        with pytest.raises(ProtocolNotAllowedError, match="opt-out"):
            async with mgr.open_stream("localhost", servers["1.1"].port, tls=True, timeout=10):
                pass
