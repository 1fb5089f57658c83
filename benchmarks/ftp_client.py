"""FTPS client benchmark: asyncsp vs aioftp (explicit TLS) vs ftplib.FTP_TLS in a thread.

One 64 MiB download and 200 downloads of 4 KiB over one FTPS session (login not timed),
against servers in separate processes on loopback (see ftp_server.py):

- vsftpd 3.0.3 when installed (and we are root) with ``require_ssl_reuse=YES``; peers that
  cannot resume the control session on data connections (ftplib) run against a second
  vsftpd with ``require_ssl_reuse=NO``. aioftp is tried once and reported if it cannot
  talk FTPS to vsftpd at all.
- pyftpdlib's TLS handler always, so that every peer runs against one server.

Several rounds, peers interleaved; the table shows medians and the min-max spread, and
ratios of each peer's time to asyncsp's on the same server (above 1.0: asyncsp is faster).

    python benchmarks/ftp_client.py [--rounds 5] [--tls 1.2|1.3]
"""

from __future__ import annotations

import argparse
import asyncio
import ftplib
import os
import pathlib
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import aioftp
import trustme
from ftp_server import Server, start_pyftpdlib, start_vsftpd, vsftpd_available

from asyncsp import ConnectionManager, SecurityProtocol, TlsPolicy

BIG_SIZE = 64 * 2**20
SMALL_SIZE = 4096
SMALL_COUNT = 200
CHUNK = 64 * 1024
TIMEOUT = 60.0
AIOFTP_PROBE_TIMEOUT = 3.0

Times = tuple[float, float, str]  # (64 MiB seconds, 200 x 4 KiB seconds, a note)
Peer = Callable[[int, "Setup"], Awaitable[Times]]


class Setup:
    """The files and the certificate every peer and server shares."""

    def __init__(self, workdir: pathlib.Path, tls: str) -> None:
        self.workdir = workdir
        self.root = workdir / "root"
        (self.root / "small").mkdir(parents=True)
        for path in (workdir, self.root, self.root / "small"):
            path.chmod(0o755)
        big = self.root / "big.bin"
        with big.open("wb") as f:
            for _ in range(BIG_SIZE // 2**20):
                f.write(os.urandom(2**20))
        big.chmod(0o644)
        for i in range(SMALL_COUNT):
            small = self.root / "small" / f"{i:03}.bin"
            small.write_bytes(os.urandom(SMALL_SIZE))
            small.chmod(0o644)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.certfile = str(workdir / "cert.pem")
        self.keyfile = str(workdir / "key.pem")
        self.pem = str(workdir / "server.pem")
        cert.cert_chain_pems[0].write_to_path(self.certfile)
        cert.private_key_pem.write_to_path(self.keyfile)
        cert.private_key_and_cert_chain_pem.write_to_path(self.pem)
        self.cafile = str(workdir / "ca.pem")
        ca.cert_pem.write_to_path(self.cafile)
        self.version = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}.get(tls)
        self.protocols = {"1.2": SecurityProtocol.TLS12, "1.3": SecurityProtocol.TLS13}.get(
            tls, SecurityProtocol.SYSTEM_DEFAULT
        )

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.cafile)
        if self.version is not None:
            context.minimum_version = context.maximum_version = self.version
        return context


def _small_paths() -> list[str]:
    return [f"small/{i:03}.bin" for i in range(SMALL_COUNT)]


# -- the peers -------------------------------------------------------------------------------


async def run_asyncsp(port: int, setup: Setup) -> Times:
    policy = TlsPolicy(cafile=setup.cafile, protocols=setup.protocols)
    async with ConnectionManager(policy=policy) as mgr:
        async with mgr.ftp("127.0.0.1", port, timeout=TIMEOUT) as ftp:
            started = time.perf_counter()
            received = 0
            async with ftp.download("big.bin") as chunks:
                async for chunk in chunks:
                    received += len(chunk)
            big = time.perf_counter() - started
            assert received == BIG_SIZE, received
            started = time.perf_counter()
            for path in _small_paths():
                assert len(await ftp.retrieve(path)) == SMALL_SIZE
            small = time.perf_counter() - started
            data_tls = ftp.data_tls
            assert data_tls is not None
            note = f"{data_tls.version}, data sessions resumed: {data_tls.session_reused}"
    return big, small, note


async def run_aioftp(port: int, setup: Setup, *, timeout: float = TIMEOUT) -> Times:
    client = aioftp.Client(socket_timeout=timeout, connection_timeout=timeout)
    await client.connect("127.0.0.1", port)
    try:
        await client.upgrade_to_tls(setup.ssl_context())
        await client.login()
        started = time.perf_counter()
        received = 0
        async with client.download_stream("big.bin") as stream:
            async for block in stream.iter_by_block(CHUNK):
                received += len(block)
        big = time.perf_counter() - started
        assert received == BIG_SIZE, received
        started = time.perf_counter()
        resumed = True
        for path in _small_paths():
            data = b""
            async with client.download_stream(path) as stream:
                ssl_object = stream.writer.transport.get_extra_info("ssl_object")
                resumed = resumed and bool(ssl_object and ssl_object.session_reused)
                async for block in stream.iter_by_block(CHUNK):
                    data += block
            assert len(data) == SMALL_SIZE
        small = time.perf_counter() - started
        await client.quit()
    finally:
        client.close()
    return big, small, f"data sessions resumed: {resumed}"


def _ftplib(port: int, setup: Setup) -> Times:
    ftp = ftplib.FTP_TLS(context=setup.ssl_context(), timeout=TIMEOUT)
    ftp.connect("127.0.0.1", port)
    try:
        ftp.auth()
        ftp.login()
        ftp.prot_p()
        ftp.voidcmd("TYPE I")
        received = 0

        def count(block: bytes) -> None:
            nonlocal received
            received += len(block)

        started = time.perf_counter()
        ftp.retrbinary("RETR big.bin", count, blocksize=CHUNK)
        big = time.perf_counter() - started
        assert received == BIG_SIZE, received
        started = time.perf_counter()
        for path in _small_paths():
            received = 0
            ftp.retrbinary(f"RETR {path}", count, blocksize=CHUNK)
            assert received == SMALL_SIZE
        small = time.perf_counter() - started
        ftp.quit()
    finally:
        ftp.close()
    return big, small, "data sessions resumed: False (ftplib cannot offer a session)"


async def run_ftplib(port: int, setup: Setup) -> Times:
    return await asyncio.to_thread(_ftplib, port, setup)


# -- the run ---------------------------------------------------------------------------------


async def probe_aioftp_on_vsftpd(port: int, setup: Setup) -> str | None:
    """Why aioftp cannot run against vsftpd, or None when it can."""
    try:
        await asyncio.wait_for(
            run_aioftp(port, setup, timeout=AIOFTP_PROBE_TIMEOUT), 4 * AIOFTP_PROBE_TIMEOUT
        )
    except Exception as exc:  # whatever it is, it is the reason aioftp is not in the table
        return (
            f"aioftp cannot do FTPS with vsftpd ({type(exc).__name__} after "
            f"{AIOFTP_PROBE_TIMEOUT} s opening a data connection): it completes the "
            "data connection's TLS handshake before sending RETR, and vsftpd starts TLS on a "
            "data connection only after RETR"
        )
    return None


async def main(rounds: int, tls: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        setup = Setup(pathlib.Path(tmp), tls)
        servers: list[Server] = []
        try:
            # (label, server, peer name, peer) for every pairing we time.
            plan: list[tuple[str, Server, str, Peer]] = []
            notes: list[str] = []
            if vsftpd_available():
                reuse = start_vsftpd(
                    setup.workdir, setup.root, setup.certfile, setup.keyfile, reuse=True
                )
                no_reuse = start_vsftpd(
                    setup.workdir, setup.root, setup.certfile, setup.keyfile, reuse=False
                )
                servers += [reuse, no_reuse]
                plan.append(("vsftpd", reuse, "asyncsp", run_asyncsp))
                plan.append(("vsftpd", no_reuse, "ftplib (thread)", run_ftplib))
                notes.append("ftplib ran against vsftpd with require_ssl_reuse=NO")
                reason = await probe_aioftp_on_vsftpd(reuse.port, setup)
                if reason is None:
                    plan.append(("vsftpd", reuse, "aioftp", run_aioftp))
                else:
                    notes.append(reason)
            else:
                notes.append("vsftpd not available (needs /usr/sbin/vsftpd and root)")
            py = start_pyftpdlib(setup.root, setup.pem)
            servers.append(py)
            for name, peer in (
                ("asyncsp", run_asyncsp),
                ("aioftp", run_aioftp),
                ("ftplib (thread)", run_ftplib),
            ):
                plan.append(("pyftpdlib", py, name, peer))
            results: dict[tuple[str, str], list[Times]] = {}
            for round_no in range(rounds):
                shift = round_no % len(plan)
                for label, server, name, peer in plan[shift:] + plan[:shift]:
                    results.setdefault((label, name), []).append(await peer(server.port, setup))
            report(results, plan, notes, rounds, tls)
        finally:
            for server in servers:
                server.stop()


def report(
    results: dict[tuple[str, str], list[Times]],
    plan: list[tuple[str, Server, str, Peer]],
    notes: list[str],
    rounds: int,
    tls: str,
) -> None:
    print(f"FTPS downloads, {rounds} rounds, TLS {tls}; medians (min-max)")
    print(f"Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION}, aioftp {aioftp.__version__}")
    header = (
        f"{'server':<10} {'peer':<16} {'64 MiB s':>20} {'MiB/s':>7} "
        f"{'200x4KiB s':>20} {'files/s':>8}"
    )
    print(header)
    print("-" * len(header))
    medians: dict[tuple[str, str], tuple[float, float]] = {}
    for label, server, name, _ in plan:
        runs = results[(label, name)]
        bigs = [r[0] for r in runs]
        smalls = [r[1] for r in runs]
        big, small = statistics.median(bigs), statistics.median(smalls)
        medians[(label, name)] = (big, small)
        big_text = f"{big:.3f} ({min(bigs):.3f}-{max(bigs):.3f})"
        small_text = f"{small:.3f} ({min(smalls):.3f}-{max(smalls):.3f})"
        print(
            f"{label:<10} {name:<16} {big_text:>20} {64 / big:>7.0f} "
            f"{small_text:>20} {SMALL_COUNT / small:>8.0f}"
        )
        print(f"{'':<27}{server.kind}; {runs[-1][2]}")
    print()
    print("ratios (peer time / asyncsp time on the same server; above 1.0: asyncsp faster)")
    for (label, name), (big, small) in medians.items():
        base = medians.get((label, "asyncsp"))
        if name != "asyncsp" and base is not None:
            print(
                f"  {label:<10} {name:<16} 64 MiB {big / base[0]:.2f}x   "
                f"200x4KiB {small / base[1]:.2f}x"
            )
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tls", choices=["1.2", "1.3", "default"], default="default")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.tls))
