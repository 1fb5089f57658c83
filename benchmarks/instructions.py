"""Instructions per keep-alive GET or new HTTPS connection, counted by valgrind: the client
cost a busy machine hides.

CPU time per request swings by several per cent between rounds on a small shared machine, more
than the difference between asyncsp and aiohttp; an instruction count does not. Each client of
``http_client.py`` (asyncsp, aiohttp, aiohttp-core) runs under ``valgrind --tool=callgrind``
twice, for a small and a large number of GETs (c=10, against ``http_server.py`` in a separate
process, not counted); the difference between the two runs, divided by the difference in
requests, is what one more request costs the client, with start-up and warm-up taken out.

``--new-connections`` counts the clients of ``new_connections.py`` instead: every GET on a
new connection (``Connection: close``) to nginx (or the Python server when nginx is missing),
TLS 1.2 and TLS 1.3, c=20; asyncsp with and without TLS session resumption, and without it
under a connection limit of twice the concurrency ("room": no request waits for the socket
before it to close), aiohttp (no resumption: its default) and aiohttp-core. The handshake's
cryptography is most of each connection's count, and the same in every client that does the
same handshake.

``--streams`` counts the byte runs of ``streams.py``: a TLS 1.3 stream through asyncsp and
through ``asyncio.open_connection(ssl=)``, writing in 64 KiB and in 16 KiB writes (each
followed by ``drain()``) to a sink, and reading 64 KiB at a time from a source; instructions
per KiB, from a small and a large run (16 and 64 MiB).

Instructions are not time (a cache miss costs more than an addition), but for the same Python
on the same machine, code that runs fewer of them on the same path is cheaper; and the count
is the same whatever else the machine is doing (a second run differs by a few hundred
instructions a request, from how the event loop's wake-ups fall).

    python benchmarks/instructions.py [--scheme http|https|both] [--requests 5000]
                                      [--base 1000] [--uvloop]
    python benchmarks/instructions.py --new-connections [--requests 300] [--base 100]
    python benchmarks/instructions.py --streams [--requests 64] [--base 16]   # MiB

``--no-gc`` counts with the garbage collector off: the code's own work, without the
collections, whose cost depends on when they fall (how many objects are alive at once, how
many outlived the one before), so a change to the code can move it either way by more than
the change itself costs.

Needs ``valgrind`` on PATH. A run takes about a minute per client and scheme.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import trustme

sys.path.insert(0, str(Path(__file__).parent))
import http_client  # the clients and the server of the keep-alive benchmark
import new_connections  # the clients of the new-connection benchmark
import streams  # the clients and the servers of the stream benchmark
from _loopback import https_servers

from asyncsp import SecurityProtocol

CLIENTS = ("asyncsp", "aiohttp", "aiohttp-core")
CONNECTION_CLIENTS = (
    "asyncsp (resumption)",
    "asyncsp (no resumption)",
    "asyncsp (no res., room)",
    "aiohttp",
    "aiohttp-core",
)
STREAM_CLIENTS = ("asyncsp", "asyncio")
STREAM_CASES = {
    "write 64 KiB": (streams.write_bytes, 65536),
    "write 16 KiB": (streams.write_bytes, 16384),
    "read 64 KiB": (streams.read_bytes, 65536),
}
CONCURRENCY = 10
_COLLECTED = re.compile(rb"Collected : (\d+)")
_VERSIONS = {
    "TLS 1.2": (ssl.TLSVersion.TLSv1_2, SecurityProtocol.TLS12),
    "TLS 1.3": (ssl.TLSVersion.TLSv1_3, SecurityProtocol.TLS13),
}


async def _requests(name: str, url: str, requests: int, ca_pem: str) -> None:
    async with http_client.CLIENTS[name](ca_pem, CONCURRENCY) as get:
        await asyncio.gather(*(get(url) for _ in range(CONCURRENCY)))  # open the connections
        share = requests // CONCURRENCY

        async def worker() -> None:
            for _ in range(share):
                await get(url)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def _connections(name: str, url: str, connections: int, cafile: str, version: str) -> None:
    tls_version, protocols = _VERSIONS[version]
    run = {
        "asyncsp (resumption)": lambda: new_connections.make_asyncsp(cafile, protocols, True),
        "asyncsp (no resumption)": lambda: new_connections.make_asyncsp(cafile, protocols, False),
        "asyncsp (no res., room)": lambda: new_connections.make_asyncsp(
            cafile, protocols, False, limit=2 * new_connections.CONCURRENCY
        ),
        "aiohttp": lambda: new_connections.make_aiohttp(
            new_connections.client_context(cafile, tls_version)
        ),
        "aiohttp-core": lambda: new_connections.make_aiohttp_core(cafile, protocols),
    }[name]()
    await run(url, connections)


async def _stream_bytes(name: str, port: int, mib: int, ca_pem: str, case: str) -> None:
    client, timeout = streams.CLIENTS[name]
    body, size = STREAM_CASES[case]
    async with client(ca_pem, 10, timeout) as open_:
        async with open_("127.0.0.1", port, True) as conn:
            await body(conn, mib * 2**20, size)


def count(worker: list[str]) -> int:
    """Instructions the whole client process runs for one worker (callgrind's total)."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--worker",
        *worker,
    ]
    done = subprocess.run(command, capture_output=True, timeout=3600, check=False)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        tail = done.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"{worker[:2]}: the counted run failed ({done.returncode}):\n{tail}")
    return int(found.group(1))


def per_unit(worker: list[str], base: int, large: int) -> float:
    """Instructions per request or connection: the large run minus the small one (both at once).

    *worker* holds "{n}" where the number of requests or connections goes.
    """
    with ThreadPoolExecutor(2) as pool:
        small = pool.submit(count, [arg.format(n=base) for arg in worker])
        big = pool.submit(count, [arg.format(n=large) for arg in worker])
        return (big.result() - small.result()) / (large - base)


def run_worker(argv: list[str]) -> None:
    """The counted process: one client's requests or connections, nothing else."""
    kind, name, url, n, cafile, extra, collector = argv
    if collector == "off":
        gc.disable()
    loop_factory = None
    if kind == "keep-alive" and extra == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        if kind == "keep-alive":
            runner.run(_requests(name, url, int(n), Path(cafile).read_text()))
        elif kind == "streams":
            runner.run(_stream_bytes(name, int(url), int(n), Path(cafile).read_text(), extra))
        else:
            runner.run(_connections(name, url, int(n), cafile, extra))


def keep_alive(args: argparse.Namespace) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    schemes = ["http", "https"] if args.scheme == "both" else [args.scheme]
    loop = "uvloop" if args.uvloop else "asyncio"
    with tempfile.TemporaryDirectory() as tmp:
        cafile, cert, key = (str(Path(tmp, name)) for name in ("ca.pem", "cert.pem", "key.pem"))
        ca.cert_pem.write_to_path(cafile)
        leaf.private_key_pem.write_to_path(key)
        leaf.cert_chain_pems[0].write_to_path(cert)
        for scheme in schemes:
            with http_client.server((cert, key) if scheme == "https" else None) as port:
                url = f"{scheme}://127.0.0.1:{port}/"
                counts = {}
                for name in CLIENTS:
                    worker = ["keep-alive", name, url, "{n}", cafile, loop, args.gc]
                    counts[name] = per_unit(worker, args.base, args.requests)
                    print(f"  {scheme:5} {name:12} {counts[name]:9.0f} instructions/request")
            mine, peer, core = counts["asyncsp"], counts["aiohttp"], counts["aiohttp-core"]
            python = sys.version.split()[0]
            print(
                f"{scheme.upper()} keep-alive GETs, c={CONCURRENCY}, {loop}, Python {python}, "
                f"collector {args.gc}"
            )
            print(f"  asyncsp/aiohttp       {mine / peer:.3f}  (goal <= 1.0; lower is cheaper)")
            print(f"  asyncsp/aiohttp-core  {mine / core:.3f}")
            print(
                f"  above aiohttp-core: asyncsp {mine - core:,.0f}, aiohttp {peer - core:,.0f} "
                "instructions/request"
            )


def new_connection(args: argparse.Namespace) -> None:
    with https_servers() as servers:
        print(f"server: {servers.kind}; {ssl.OPENSSL_VERSION}, Python {sys.version.split()[0]}")
        for version, port in (("TLS 1.2", servers.port12), ("TLS 1.3", servers.port13)):
            url = f"https://localhost:{port}/"
            counts = {}
            for name in CONNECTION_CLIENTS:
                worker = ["connections", name, url, "{n}", servers.cafile, version, args.gc]
                counts[name] = per_unit(worker, args.base, args.requests)
                print(f"  {version} {name:24} {counts[name]:10.0f} instructions/connection")
            peer, core = counts["aiohttp"], counts["aiohttp-core"]
            plain = counts["asyncsp (no resumption)"]
            resumed = counts["asyncsp (resumption)"]
            print(
                f"{version}, a new connection per GET, c={new_connections.CONCURRENCY}, "
                f"collector {args.gc}"
            )
            print(f"  asyncsp (no resumption)/aiohttp  {plain / peer:.3f}  (lower is cheaper)")
            print(f"  asyncsp (resumption)/aiohttp     {resumed / peer:.3f}")
            room = counts["asyncsp (no res., room)"]
            print(f"  asyncsp (no res., room)/aiohttp  {room / peer:.3f}")
            print(
                f"  above aiohttp-core: asyncsp {plain - core:,.0f}, aiohttp {peer - core:,.0f} "
                "instructions/connection"
            )


def stream_bytes(args: argparse.Namespace) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    with tempfile.TemporaryDirectory() as tmp:
        cafile, cert, key = (str(Path(tmp, name)) for name in ("ca.pem", "cert.pem", "key.pem"))
        ca.cert_pem.write_to_path(cafile)
        leaf.private_key_pem.write_to_path(key)
        leaf.cert_chain_pems[0].write_to_path(cert)
        with streams.servers(cert, key) as (sink_port, _, _, _):
            print(f"{ssl.OPENSSL_VERSION}, Python {sys.version.split()[0]}")
            for case in STREAM_CASES:
                counts = {}
                for name in STREAM_CLIENTS:
                    worker = ["streams", name, str(sink_port), "{n}", cafile, case, args.gc]
                    counts[name] = per_unit(worker, args.base, args.requests) / 1024
                    print(f"  {case} {name:8} {counts[name]:9.0f} instructions/KiB")
                mine, peer = counts["asyncsp"], counts["asyncio"]
                print(
                    f"TLS 1.3 stream, {case}, collector {args.gc}: asyncsp/asyncio "
                    f"{mine / peer:.3f} (lower is cheaper), {mine - peer:+,.0f} instructions/KiB"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheme", choices=["http", "https", "both"], default="both")
    parser.add_argument("--new-connections", action="store_true", help="count new connections")
    parser.add_argument("--requests", type=int, help="GETs in the large run (5000; 300 new)")
    parser.add_argument("--base", type=int, help="GETs in the small run (1000; 100 new)")
    parser.add_argument("--streams", action="store_true", help="count TLS stream bytes")
    parser.add_argument("--no-gc", action="store_true", help="count with the collector off")
    parser.add_argument("--uvloop", action="store_true", help="run the clients under uvloop")
    parser.add_argument("--worker", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    args.gc = "off" if args.no_gc else "on"
    if args.streams:  # MiB
        args.requests = args.requests or 64
        args.base = args.base or 16
        if not 0 < args.base < args.requests:
            sys.exit("need 0 < --base < --requests")
        stream_bytes(args)
        return
    if args.new_connections:
        args.requests = args.requests or 300
        args.base = args.base or 100
    else:
        args.requests = args.requests or 5000
        args.base = args.base or 1000
    if not CONCURRENCY <= args.base < args.requests:
        sys.exit(f"need {CONCURRENCY} <= --base < --requests")
    (new_connection if args.new_connections else keep_alive)(args)


if __name__ == "__main__":
    main()
