"""Where trust comes from: the system store, certifi's bundle, or both, with `cafile`/`cadata`
adding to it; and a process where truststore has replaced ``ssl.SSLContext``."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
import trustme

import asyncsp
from asyncsp import ConnectionManager, PolicyError, TlsPolicy

from .servers import ThreadedServer, server_context


@pytest.fixture(scope="module")
def server(server_cert: trustme.LeafCert) -> Iterator[ThreadedServer]:
    with ThreadedServer(server_context(server_cert)) as running:
        yield running


async def _talk(policy: TlsPolicy, port: int) -> str:
    async with ConnectionManager(policy=policy) as mgr:
        async with mgr.open_stream("localhost", port, tls=True, timeout=5) as stream:
            stream.write(b"x")
            assert await stream.readexactly(6) == b"echo:x"
            assert stream.tls is not None
            return stream.tls.version


def _certificates_in(path: str) -> int:
    return pathlib.Path(path).read_text("ascii").count("BEGIN CERTIFICATE")


def _authorities(policy: TlsPolicy) -> int:
    return int(policy.ssl_context().cert_store_stats()["x509_ca"])


@pytest.mark.parametrize("trust", ["nss", (), ("system", "bundle"), 3])
def test_an_unknown_trust_source_is_a_policy_error(trust: object) -> None:
    with pytest.raises(PolicyError, match="trust"):
        TlsPolicy(trust=trust)  # type: ignore[arg-type]


def test_by_default_cafile_alone_is_trusted(ca_pem: str) -> None:
    assert _authorities(TlsPolicy(cadata=ca_pem)) == 1


def test_a_named_system_store_and_cafile_add_up(ca_pem: str) -> None:
    system = _authorities(TlsPolicy(trust="system"))
    assert _authorities(TlsPolicy(trust="system", cadata=ca_pem)) == system + 1
    assert TlsPolicy(trust="system").trust == ("system",)


async def test_certifi_trusts_its_bundle_and_cafile_adds_to_it(
    server: ThreadedServer, ca_pem: str
) -> None:
    certifi = pytest.importorskip("certifi")
    in_bundle = _certificates_in(certifi.where())
    both = TlsPolicy(trust=("certifi", "system"))
    assert both.trust == ("certifi", "system")
    assert _authorities(TlsPolicy(trust="certifi")) == in_bundle
    with pytest.raises(asyncsp.CertificateVerificationError):
        await _talk(TlsPolicy(trust="certifi"), server.port)  # the test CA is in neither
    assert await _talk(TlsPolicy(trust="certifi", cadata=ca_pem), server.port) in {
        "TLSv1.2",
        "TLSv1.3",
    }


def test_a_process_where_truststore_replaced_the_context_class(
    server: ThreadedServer, ca: trustme.CA, tmp_path: object
) -> None:
    pytest.importorskip("truststore")
    ca_file = os.path.join(str(tmp_path), "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    script = textwrap.dedent(
        f"""
        import asyncio, ssl, truststore
        truststore.inject_into_ssl()  # before asyncsp is imported: the harder case
        import asyncsp
        from asyncsp import ConnectionManager, TlsPolicy

        async def main():
            policy = TlsPolicy(cafile={ca_file!r}, pins=frozenset({{"0" * 64}}))
            async with ConnectionManager(policy=TlsPolicy(cafile={ca_file!r})) as mgr:
                async with mgr.open_stream("localhost", {server.port}, tls=True, timeout=5) as s:
                    print(s.tls.version)
            try:
                async with ConnectionManager(policy=policy) as mgr:
                    async with mgr.open_stream("localhost", {server.port}, tls=True, timeout=5):
                        pass
            except asyncsp.PinMismatchError:
                print("pins checked")

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("TLSv1.")
    assert "pins checked" in done.stdout
