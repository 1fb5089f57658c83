"""New HTTPS connections per second: asyncsp (with and without TLS resumption) vs aiohttp vs httpx.

Every request goes out on a new connection (the request asks the server to close it), at a
concurrency of 20, against a loopback server in another process: nginx when installed (one
shared session cache, tickets on), else a Python aiohttp server. TLS 1.2 and TLS 1.3 each, all
clients in the same run, several rounds interleaved. Printed per client: the best and median
rate, the best against aiohttp's best, the median of per-round ratios to aiohttp ("paired"),
and the client process's CPU time per connection (its least round, and paired), which a
shared machine disturbs less than the rate.

"aiohttp-core" is the part of aiohttp asyncsp runs for each connection, on asyncsp's own
context: ``ClientSession._request`` (no cookie store, no redirects), with
``TlsPolicy.ssl_context()``, whose handshakes run asyncsp's checks. asyncsp without resumption
minus aiohttp-core is asyncsp's own work per connection (the gate that holds a slot until the
socket is gone, socket and handshake accounting, the response wrapper): printed last.
"room" is asyncsp without resumption under a connection limit of twice the concurrency: no
request waits for the socket of the one before it to close, so the difference to the plain
row is what ``connection_limit`` bounding sockets (not requests, as aiohttp's limit does) costs.

    python benchmarks/new_connections.py [--requests 1000] [--rounds 5] [--key rsa]
                                         [--python-server] [--no-httpx]
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx

sys.path.insert(0, __import__("os").path.dirname(__file__))
from _loopback import https_servers

import asyncsp
from asyncsp import ConnectionManager, SecurityProtocol, TlsPolicy

CONCURRENCY = 20
CLOSE = {"Connection": "close"}
Run = Callable[[str, int], Awaitable[None]]
Rounds = list[tuple[float, float]]


def client_context(cafile: str, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


async def bounded(n: int, one: Callable[[], Awaitable[None]]) -> None:
    queue = iter(range(n))

    async def worker() -> None:
        for _ in queue:
            await one()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def make_asyncsp(
    cafile: str, protocols: SecurityProtocol, resume: bool, limit: int = CONCURRENCY
) -> Run:
    async def run(url: str, n: int) -> None:
        policy = TlsPolicy(cafile=cafile, protocols=protocols, resume_sessions=resume)
        async with ConnectionManager(policy=policy, default_connection_limit=limit) as mgr:

            async def one() -> None:
                resp = await mgr.get(url, headers=CLOSE)
                assert resp.status == 200

            await bounded(n, one)
            sp = mgr.find_service_point(url)
            if resume:
                assert sp.stats.session_resumptions > 0, "no session was resumed"

    return run


def make_aiohttp(ctx: ssl.SSLContext) -> Run:
    async def run(url: str, n: int) -> None:
        connector = aiohttp.TCPConnector(ssl=ctx, limit=CONCURRENCY, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one() -> None:
                async with session.get(url, headers=CLOSE) as resp:
                    await resp.read()
                    assert resp.status == 200

            await bounded(n, one)

    return run


def make_aiohttp_core(cafile: str, protocols: SecurityProtocol) -> Run:
    ctx = TlsPolicy(cafile=cafile, protocols=protocols, resume_sessions=False).ssl_context()

    async def run(url: str, n: int) -> None:
        connector = aiohttp.TCPConnector(ssl=ctx, limit=CONCURRENCY, force_close=True)
        jar = aiohttp.DummyCookieJar()
        async with aiohttp.ClientSession(connector=connector, cookie_jar=jar) as session:

            async def one() -> None:
                # What asyncsp's _send calls (private, pinned like asyncsp's own use).
                resp = await session._request("GET", url, headers=CLOSE, allow_redirects=False)
                try:
                    await resp.read()
                    assert resp.status == 200
                finally:
                    resp.release()

            await bounded(n, one)

    return run


def make_httpx(ctx: ssl.SSLContext) -> Run:
    async def run(url: str, n: int) -> None:
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=0)
        async with httpx.AsyncClient(verify=ctx, limits=limits) as client:

            async def one() -> None:
                resp = await client.get(url, headers=CLOSE)
                assert resp.status_code == 200

            await bounded(n, one)

    return run


async def compare(clients: dict[str, Run], url: str, n: int, rounds: int) -> dict[str, Rounds]:
    """Each client's rounds as (connections per second, client CPU µs per connection).

    Rounds are interleaved, each starting with the next client in turn, so a slow spell of a
    shared machine falls on every client alike instead of on whichever ran during it.
    """
    for run in clients.values():
        await run(url, min(n, 50))  # warm up: imports, first context build
    results: dict[str, Rounds] = {name: [] for name in clients}
    names = list(clients)
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = time.perf_counter(), time.process_time()
            await clients[name](url, n)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            results[name].append((n / wall, cpu / n * 1e6))
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--python-server", action="store_true", help="skip nginx")
    parser.add_argument("--key", choices=["ecdsa", "rsa"], default="ecdsa", help="server key type")
    parser.add_argument("--no-httpx", action="store_true", help="leave httpx out")
    args = parser.parse_args()
    with https_servers(prefer_nginx=not args.python_server, key_type=args.key) as servers:
        print(
            f"server: {servers.kind}, {args.key} key; {args.requests} new connections per round, "
            f"concurrency {CONCURRENCY}, {args.rounds} rounds interleaved"
        )
        for label, port, version, protocols in (
            ("TLS 1.2", servers.port12, ssl.TLSVersion.TLSv1_2, SecurityProtocol.TLS12),
            ("TLS 1.3", servers.port13, ssl.TLSVersion.TLSv1_3, SecurityProtocol.TLS13),
        ):
            url = f"https://localhost:{port}/"
            ctx = client_context(servers.cafile, version)
            clients: dict[str, Run] = {
                "asyncsp (resumption)": make_asyncsp(servers.cafile, protocols, True),
                "asyncsp (no resumption)": make_asyncsp(servers.cafile, protocols, False),
                "asyncsp (no res., room)": make_asyncsp(
                    servers.cafile, protocols, False, limit=2 * CONCURRENCY
                ),
                "aiohttp": make_aiohttp(ctx),
                "aiohttp-core": make_aiohttp_core(servers.cafile, protocols),
            }
            if not args.no_httpx:
                clients["httpx"] = make_httpx(ctx)
            results = await compare(clients, url, args.requests, args.rounds)
            print(f"\n{label}")
            report(results)


def report(results: dict[str, Rounds]) -> None:
    """One line per client: its rates, its CPU per connection, and both against aiohttp's.

    "paired" is the median over rounds of the client's figure divided by aiohttp's in the same
    round: a lucky or unlucky round of either changes it little, unlike a ratio of bests.
    """
    base = results["aiohttp"]
    base_rate = max(rate for rate, _ in base)
    print(
        f"  {'client':24} {'best conn/s':>11} {'median':>7} {'vs aiohttp':>10} {'paired':>7}"
        f" {'CPU µs/conn':>12} {'paired':>7}"
    )
    for name, rounds in results.items():
        rates = [rate for rate, _ in rounds]
        paired_rate = statistics.median(r / b for (r, _), (b, _) in zip(rounds, base, strict=True))
        paired_cpu = statistics.median(b / c for (_, c), (_, b) in zip(rounds, base, strict=True))
        print(
            f"  {name:24} {max(rates):11.0f} {statistics.median(rates):7.0f}"
            f" {max(rates) / base_rate:9.2f}x {paired_rate:6.2f}x"
            f" {min(cpu for _, cpu in rounds):12.0f} {paired_cpu:6.2f}x"
        )
    _difference(
        results,
        "asyncsp (no resumption)",
        "aiohttp-core",
        "asyncsp's own work per connection (no resumption minus aiohttp-core, same round)",
    )
    _difference(
        results,
        "asyncsp (no resumption)",
        "asyncsp (no res., room)",
        "of which waiting for closing sockets (no resumption minus room, same round)",
    )


def _difference(results: dict[str, Rounds], name: str, other: str, label: str) -> None:
    """Print *name*'s CPU per connection minus *other*'s, round by round."""
    extra = [a - b for (_, a), (_, b) in zip(results[name], results[other], strict=True)]
    print(
        f"  {label}: {statistics.median(extra):.0f} µs CPU "
        f"(per round {min(extra):.0f} to {max(extra):.0f})"
    )


if __name__ == "__main__":
    print(
        f"asyncsp {asyncsp.__version__}, aiohttp {aiohttp.__version__}, httpx {httpx.__version__}"
    )
    asyncio.run(main())
