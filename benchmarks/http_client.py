"""Keep-alive GETs per second: asyncsp vs raw aiohttp vs httpx, over HTTP and HTTPS.

The server (``benchmarks/http_server.py``) runs in a separate process on 127.0.0.1 and answers
faster than any of the clients can ask, so what is measured is the client's cost per request.
Every client gets the same connection limit and concurrency, reads each body, and reuses its
connections; the clients take turns within each round (in a rotating order) so that load from
elsewhere on the machine hits them alike. Prints requests/s per round, the median, the spread,
and the ratios asyncsp/aiohttp and asyncsp/httpx (goal: >= 0.95 and >= 1.5). The client's own
CPU time per request (this process's user and system time; the server is another process) is
printed too, with its ratio to aiohttp's (lower is cheaper): a second view of the same cost,
which on a small shared machine swings between rounds much as throughput does.

A fourth client, "aiohttp-core", is the part of aiohttp that asyncsp runs on every request:
``ClientSession._request`` on a session set up as asyncsp sets up its own (no cookie store, no
redirects followed by aiohttp), the body read and the connection released. What asyncsp costs
above it is its own per-request work (the connection gate, the stale-connection claim, the
response wrapper, statistics): the floor under "asyncsp/aiohttp".

    python benchmarks/http_client.py [--rounds 5] [--requests 4000] [--concurrency 10]
                                     [--uvloop] [--no-httpx]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import trustme

if importlib.util.find_spec("sniffio") is None:
    # httpcore 1.0 tries `import sniffio` on every request; anyio 4 no longer installs it, and
    # each failed import searches sys.path again (~100 us). Failing it at once keeps httpx's
    # figure about httpx, not about this environment.
    sys.modules["sniffio"] = None  # type: ignore[assignment]

import httpx  # after the sniffio note above

from asyncsp import ConnectionManager, TlsPolicy

SERVER = Path(__file__).with_name("http_server.py")
Client = Callable[[str], Awaitable[int]]


@contextlib.contextmanager
def server(tls: tuple[str, str] | None) -> Iterator[int]:
    """Start the loopback server in its own process; yield its port."""
    command = [sys.executable, str(SERVER), "--uvloop"]
    if tls:
        command += ["--tls", *tls]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the benchmark server did not start: {line!r}")
        yield int(line.split()[1])
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def asyncsp_client(ca_pem: str, limit: int) -> AsyncIterator[Client]:
    async with ConnectionManager(
        policy=TlsPolicy(cadata=ca_pem), default_connection_limit=limit
    ) as mgr:

        async def get(url: str) -> int:
            response = await mgr.get(url)
            return len(await response.read())

        yield get


@contextlib.asynccontextmanager
async def aiohttp_client(ca_pem: str, limit: int) -> AsyncIterator[Client]:
    import ssl

    context = ssl.create_default_context(cadata=ca_pem)
    connector = aiohttp.TCPConnector(ssl=context, limit=limit, limit_per_host=limit)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def get(url: str) -> int:
            async with session.get(url) as response:
                return len(await response.read())

        yield get


@contextlib.asynccontextmanager
async def httpx_client(ca_pem: str, limit: int) -> AsyncIterator[Client]:
    import ssl

    context = ssl.create_default_context(cadata=ca_pem)
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    async with httpx.AsyncClient(verify=context, limits=limits) as client:

        async def get(url: str) -> int:
            response = await client.get(url)
            return len(response.content)

        yield get


@contextlib.asynccontextmanager
async def aiohttp_core_client(ca_pem: str, limit: int) -> AsyncIterator[Client]:
    import ssl

    context = ssl.create_default_context(cadata=ca_pem)
    connector = aiohttp.TCPConnector(ssl=context, limit=limit, limit_per_host=limit)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:

        async def get(url: str) -> int:
            # What asyncsp's _send calls (a private method, pinned like asyncsp's own use).
            response = await session._request("GET", url, allow_redirects=False)
            try:
                return len(await response.read())
            finally:
                response.release()

        yield get


CLIENTS = {
    "asyncsp": asyncsp_client,
    "aiohttp": aiohttp_client,
    "aiohttp-core": aiohttp_core_client,
    "httpx": httpx_client,
}


async def measure(get: Client, url: str, requests: int, concurrency: int) -> tuple[float, float]:
    """Requests per second, and this process's CPU µs per request, for *requests* GETs spread
    over *concurrency* tasks."""
    await asyncio.gather(*(get(url) for _ in range(concurrency)))  # warm: open the connections
    share = requests // concurrency

    async def worker() -> None:
        for _ in range(share):
            await get(url)

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    done = share * concurrency
    return done / (time.perf_counter() - start), (time.process_time() - cpu) / done * 1e6


async def run_scheme(
    scheme: str, port: int, ca_pem: str, args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Requests/s and CPU µs per request of each client, one entry per round."""
    url = f"{scheme}://127.0.0.1:{port}/"
    names = [name for name in CLIENTS if name != "httpx" or not args.no_httpx]
    results: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(args.rounds):
        order = names[round_no % len(names) :] + names[: round_no % len(names)]
        for name in order:
            async with CLIENTS[name](ca_pem, args.concurrency) as get:
                rate, cost = await measure(get, url, args.requests, args.concurrency)
            results[name].append(rate)
            cpu[name].append(cost)
        print(
            f"  {scheme:5} round {round_no + 1}: "
            + "  ".join(f"{n} {results[n][-1]:8.0f}/s" for n in names),
            flush=True,
        )
    return results, cpu


def _paired(results: dict[str, list[float]], name: str, peer: str) -> str:
    """The ratio of medians, and the range of the same-round ratios."""
    ratios = [a / b for a, b in zip(results[name], results[peer], strict=True)]
    median = statistics.median(results[name]) / statistics.median(results[peer])
    return f"{median:.3f} (per round {min(ratios):.3f}-{max(ratios):.3f})"


def report(
    scheme: str, results: dict[str, list[float]], cpu: dict[str, list[float]], loop: str
) -> None:
    median = {name: statistics.median(rates) for name, rates in results.items()}
    print(f"\n{scheme.upper()} keep-alive GETs, {loop} (requests/s; median, min-max over rounds)")
    for name, rates in results.items():
        print(f"  {name:12} {median[name]:8.0f}   ({min(rates):.0f}-{max(rates):.0f})")
    print(f"  asyncsp/aiohttp       {_paired(results, 'asyncsp', 'aiohttp')}; goal >= 1.0")
    print(f"  asyncsp/aiohttp-core  {_paired(results, 'asyncsp', 'aiohttp-core')}")
    if "httpx" in results:
        print(f"  asyncsp/httpx         {_paired(results, 'asyncsp', 'httpx')}; goal >= 1.5")
    cost = {name: statistics.median(values) for name, values in cpu.items()}
    print(
        "  client CPU per request (µs; median over rounds): "
        + ", ".join(f"{name} {cost[name]:.1f}" for name in cpu)
    )
    print(f"  CPU asyncsp/aiohttp      {_paired(cpu, 'asyncsp', 'aiohttp')}; lower is cheaper")
    print(f"  CPU asyncsp/aiohttp-core {_paired(cpu, 'asyncsp', 'aiohttp-core')}")
    above = [a - b for a, b in zip(cpu["asyncsp"], cpu["aiohttp-core"], strict=True)]
    print(
        f"  asyncsp's own work per request: {statistics.median(above):.1f} µs CPU "
        f"(per round {min(above):.1f} to {max(above):.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=4000, help="per client per round")
    parser.add_argument("--concurrency", type=int, default=10, help="tasks = connection limit")
    parser.add_argument("--scheme", choices=["http", "https", "both"], default="both")
    parser.add_argument("--uvloop", action="store_true", help="run the clients under uvloop")
    parser.add_argument("--no-httpx", action="store_true", help="leave httpx out")
    args = parser.parse_args()
    loop_factory = None
    if args.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    loop = "uvloop" if args.uvloop else "asyncio"
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    ca_pem = ca.cert_pem.bytes().decode()
    schemes = ["http", "https"] if args.scheme == "both" else [args.scheme]
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        leaf.private_key_pem.write_to_path(str(key))
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        for scheme in schemes:
            tls = (str(cert), str(key)) if scheme == "https" else None
            with server(tls) as port:
                print(f"{scheme}: server on 127.0.0.1:{port} (separate process)", flush=True)
                with asyncio.Runner(loop_factory=loop_factory) as runner:
                    results, cpu = runner.run(run_scheme(scheme, port, ca_pem, args))
            report(scheme, results, cpu, loop)


if __name__ == "__main__":
    main()
