"""Instructions per keep-alive GET, counted by valgrind: the client cost a busy machine hides.

CPU time per request swings by several per cent between rounds on a small shared machine, more
than the difference between asyncsp and aiohttp; an instruction count does not. Each client of
``http_client.py`` (asyncsp, aiohttp, aiohttp-core) runs under ``valgrind --tool=callgrind``
twice, for a small and a large number of GETs (c=10, against ``http_server.py`` in a separate
process, not counted); the difference between the two runs, divided by the difference in
requests, is what one more request costs the client, with start-up and warm-up taken out.

Instructions are not time (a cache miss costs more than an addition), but for the same Python
on the same machine, code that runs fewer of them on the same path is cheaper; and the count
is the same whatever else the machine is doing (a second run differs by a few hundred
instructions a request, from how the event loop's wake-ups fall).

    python benchmarks/instructions.py [--scheme http|https|both] [--requests 5000]
                                      [--base 1000] [--uvloop]

Needs ``valgrind`` on PATH. A run takes about a minute per client and scheme.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import trustme

sys.path.insert(0, str(Path(__file__).parent))
import http_client  # the clients and the server of the keep-alive benchmark

CLIENTS = ("asyncsp", "aiohttp", "aiohttp-core")
CONCURRENCY = 10
_COLLECTED = re.compile(rb"Collected : (\d+)")


async def _requests(name: str, url: str, requests: int, ca_pem: str) -> None:
    async with http_client.CLIENTS[name](ca_pem, CONCURRENCY) as get:
        await asyncio.gather(*(get(url) for _ in range(CONCURRENCY)))  # open the connections
        share = requests // CONCURRENCY

        async def worker() -> None:
            for _ in range(share):
                await get(url)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def count(name: str, url: str, requests: int, cafile: str, loop: str) -> int:
    """Instructions the whole client process runs for *requests* GETs (callgrind's total)."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--worker",
        name,
        url,
        str(requests),
        cafile,
        loop,
    ]
    done = subprocess.run(command, capture_output=True, timeout=1800, check=False)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        tail = done.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"{name}: the counted run failed ({done.returncode}):\n{tail}")
    return int(found.group(1))


def per_request(name: str, url: str, cafile: str, base: int, requests: int, loop: str) -> float:
    """Instructions per request: the large run minus the small one (both at once)."""
    with ThreadPoolExecutor(2) as pool:
        small = pool.submit(count, name, url, base, cafile, loop)
        large = pool.submit(count, name, url, requests, cafile, loop)
        return (large.result() - small.result()) / (requests - base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheme", choices=["http", "https", "both"], default="both")
    parser.add_argument("--requests", type=int, default=5000, help="GETs in the large run")
    parser.add_argument("--base", type=int, default=1000, help="GETs in the small run")
    parser.add_argument("--uvloop", action="store_true", help="run the clients under uvloop")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, url, requests, cafile, loop = args.worker
        loop_factory = None
        if loop == "uvloop":
            import uvloop

            loop_factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(_requests(name, url, int(requests), Path(cafile).read_text()))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    if not CONCURRENCY <= args.base < args.requests:
        sys.exit(f"need {CONCURRENCY} <= --base < --requests")
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
                    counts[name] = per_request(name, url, cafile, args.base, args.requests, loop)
                    print(f"  {scheme:5} {name:12} {counts[name]:9.0f} instructions/request")
            mine, peer, core = counts["asyncsp"], counts["aiohttp"], counts["aiohttp-core"]
            python = sys.version.split()[0]
            print(f"{scheme.upper()} keep-alive GETs, c={CONCURRENCY}, {loop}, Python {python}")
            print(f"  asyncsp/aiohttp       {mine / peer:.3f}  (goal <= 1.0; lower is cheaper)")
            print(f"  asyncsp/aiohttp-core  {mine / core:.3f}")
            print(
                f"  above aiohttp-core: asyncsp {mine - core:,.0f}, aiohttp {peer - core:,.0f} "
                "instructions/request"
            )


if __name__ == "__main__":
    main()
