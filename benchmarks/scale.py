"""Scale: slot waits under deep queues, and the memory a crawl leaves behind, against aiohttp.

Four measurements, asyncsp and the plain libraries in the same run:

1. **Slot waits.** W tasks (1,000, 5,000, 20,000 by default) each send one GET through a
   connection limit of 10 to one loopback server; with W - 10 of them queued, the cost of
   each admission shows as time per request. The clients take turns within each round (in a
   rotating order); per request it prints wall time and this process's CPU time (the server
   is another process). Flat as W grows is the goal, within 1.2x of aiohttp.
2. **Retained memory per endpoint.** A crawl GETs one page from each of N distinct loopback
   endpoints (2,000 by default), then waits twice the idle time (``max_idle_time`` for
   asyncsp, the connector's ``keepalive_timeout`` for aiohttp) plus a second. Each client
   crawls in a fresh child process, measured with ``tracemalloc`` (Python allocations) and a
   count of live objects: baseline, after the crawl and after the idle time, per endpoint.
   The same crawl is then made under ``max_service_points=100`` (no idle time), over HTTP
   and over raw streams (a request written and its answer read on a stream per endpoint,
   against asyncio's streams): what stays alive right after it, bounded by the limit.

3. **New endpoints.** One GET to each of N endpoints never contacted before (500 per round
   and client by default), 20 at a time: this process's CPU per endpoint, which for asyncsp
   includes making its service point, HTTP connector and session. (The crawl above runs under
   ``tracemalloc``, which slows every allocation: its time is not a cost figure; this is.)

The server answers every 127.x.y.z address from one socket tied to the loopback device
(``SO_BINDTODEVICE lo``, Linux 5.7+ without privileges), so the endpoints differ by host; where
that is refused, the crawl uses one listening port per endpoint on 127.0.0.1 instead.

    python benchmarks/scale.py [--rounds 3] [--waiters 1000 5000 20000] [--endpoints 2000]
                               [--idle 2] [--concurrency 50] [--created 500]
                               [--skip waits crawl create]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import resource
import socket
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp

from asyncsp import ConnectionManager, ServicePoint

LIMIT = 10
"""The connection limit every slot-wait run goes through."""
_START_TIMEOUT = 30.0
"""Seconds the child server gets to print where it listens."""
_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
    b"Connection: keep-alive\r\n\r\nok"
)
_END_OF_HEAD = b"\r\n\r\n"
_MAX_HEAD = 64 * 1024

Get = Callable[[str], Awaitable[int]]


# -- the server, in a child process -------------------------------------------------------


class _Answer(asyncio.Protocol):
    """Answers every request head with the same small response, keeping the connection."""

    def __init__(self) -> None:
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        buffer = self._buffer + data
        answers = buffer.count(_END_OF_HEAD)
        if answers:
            self._transport.write(_ANSWER * answers)
            buffer = buffer[buffer.rindex(_END_OF_HEAD) + len(_END_OF_HEAD) :]
        if len(buffer) > _MAX_HEAD:
            self._transport.close()
        self._buffer = buffer


def _loopback_only_socket() -> socket.socket | None:
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
        sock.bind(("0.0.0.0", 0))  # tied to lo above: loopback only
        sock.listen(4096)
    except (OSError, AttributeError):
        sock.close()
        return None
    sock.setblocking(False)
    return sock


async def _serve(ports: int) -> None:
    """Print ``HOSTS <port>`` (every 127.x.y.z answers) or ``PORTS <p1,p2,...>`` (127.0.0.1),
    then serve until stdin closes."""
    loop = asyncio.get_running_loop()
    servers = []
    shared = _loopback_only_socket()
    if shared is not None:
        servers.append(await loop.create_server(_Answer, sock=shared))
        print(f"HOSTS {shared.getsockname()[1]}", flush=True)
    else:
        for _ in range(ports):
            servers.append(await loop.create_server(_Answer, "127.0.0.1", 0, backlog=1024))
        listening = [str(s.sockets[0].getsockname()[1]) for s in servers]
        print(f"PORTS {','.join(listening)}", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    for server in servers:
        server.close()


@contextlib.contextmanager
def server(ports: int) -> Iterator[list[tuple[str, int]]]:
    """Start the loopback server in its own process; yield up to *ports* endpoints."""
    command = [sys.executable, __file__, "--serve", str(ports)]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        kind, _, rest = line.strip().partition(" ")
        if kind == "HOSTS":
            port = int(rest)
            yield [(f"127.0.{1 + i // 250}.{1 + i % 250}", port) for i in range(ports)]
        elif kind == "PORTS":
            yield [("127.0.0.1", int(p)) for p in rest.split(",")]
        else:
            raise RuntimeError(f"the benchmark server did not start: {line!r}")
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _more_descriptors() -> None:
    """Room for a crawl's sockets (one per endpoint while idle, at both ends)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))


# -- the clients --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def asyncsp_client(limit: int, idle: float, bound: int = 0) -> AsyncIterator[Get]:
    async with ConnectionManager(
        default_connection_limit=limit, max_idle_time=idle, max_service_points=bound
    ) as mgr:

        async def get(url: str) -> int:
            response = await mgr.get(url)
            return len(await response.read())

        yield get


@contextlib.asynccontextmanager
async def aiohttp_client(limit: int, idle: float) -> AsyncIterator[Get]:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=limit, keepalive_timeout=idle)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def get(url: str) -> int:
            async with session.get(url) as response:
                return len(await response.read())

        yield get


CLIENTS = {"asyncsp": asyncsp_client, "aiohttp": aiohttp_client}

BOUND = 100
"""``max_service_points`` of the bounded crawls."""
_REQUEST = b"GET / HTTP/1.1\r\nHost: scale\r\n\r\n"


def _split(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
    return host, int(port)


@contextlib.asynccontextmanager
async def bounded_asyncsp_stream(limit: int, idle: float) -> AsyncIterator[Get]:
    async with ConnectionManager(
        default_connection_limit=limit, max_idle_time=idle, max_service_points=BOUND
    ) as mgr:

        async def get(url: str) -> int:
            async with mgr.open_stream(*_split(url), timeout=30) as stream:
                stream.write(_REQUEST)
                return len(await stream.readexactly(len(_ANSWER)))

        yield get


@contextlib.asynccontextmanager
async def asyncio_stream(limit: int, idle: float) -> AsyncIterator[Get]:
    async def get(url: str) -> int:
        reader, writer = await asyncio.open_connection(*_split(url))
        try:
            writer.write(_REQUEST)
            return len(await reader.readexactly(len(_ANSWER)))
        finally:
            writer.close()
            await writer.wait_closed()

    yield get


BOUNDED = {
    "asyncsp": functools.partial(asyncsp_client, bound=BOUND),
    "aiohttp": aiohttp_client,
    "asyncsp streams": bounded_asyncsp_stream,
    "asyncio streams": asyncio_stream,
}
"""The bounded crawls: asyncsp under ``max_service_points``, and the plain libraries."""


# -- 1. slot waits ------------------------------------------------------------------------


async def slot_waits(client: str, url: str, waiters: int) -> tuple[float, float]:
    """Wall and CPU µs per request for *waiters* concurrent GETs through a limit of 10."""
    async with CLIENTS[client](LIMIT, 60.0) as get:
        await asyncio.gather(*(get(url) for _ in range(LIMIT)))  # warm: the connections
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(get(url) for _ in range(waiters)))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return wall / waiters * 1e6, cpu / waiters * 1e6


async def run_slot_waits(url: str, args: argparse.Namespace) -> None:
    names = list(CLIENTS)
    wall: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    for round_no in range(args.rounds):
        order = names[round_no % len(names) :] + names[: round_no % len(names)]
        for waiters in args.waiters:
            for name in order:
                per_request, per_request_cpu = await slot_waits(name, url, waiters)
                wall.setdefault((name, waiters), []).append(per_request)
                cpu.setdefault((name, waiters), []).append(per_request_cpu)
        print(f"  round {round_no + 1} of {args.rounds} done", flush=True)
    print(f"\nSlot waits: W tasks, one GET each, through connection_limit={LIMIT}")
    print("  (µs per request, median over rounds, min-max; CPU is this process's)")
    print(f"  {'W':>6}  {'asyncsp':>18}  {'aiohttp':>18}  {'ratio':>5}  CPU asyncsp / aiohttp")
    for waiters in args.waiters:
        a, b = wall[("asyncsp", waiters)], wall[("aiohttp", waiters)]
        ca, cb = cpu[("asyncsp", waiters)], cpu[("aiohttp", waiters)]
        ratios = [x / y for x, y in zip(a, b, strict=True)]
        print(
            f"  {waiters:>6}  {_spread(a):>18}  {_spread(b):>18}  "
            f"{statistics.median(ratios):5.2f}  "
            f"{statistics.median(ca):.0f} / {statistics.median(cb):.0f}"
        )


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


# -- 2. retained memory after a crawl -----------------------------------------------------


def _live(kind: type) -> int:
    return sum(1 for obj in gc.get_objects() if isinstance(obj, kind))


def _snapshot() -> dict[str, int]:
    gc.collect()
    return {
        "bytes": tracemalloc.get_traced_memory()[0],
        "objects": len(gc.get_objects()),
        "service_points": _live(ServicePoint),
        "connectors": _live(aiohttp.TCPConnector),
        "sessions": _live(aiohttp.ClientSession),
    }


async def crawl(
    client: str, endpoints: list[tuple[str, int]], idle: float, concurrency: int, bounded: bool
) -> None:
    """One crawl (in a child process): print a JSON line of snapshots. *bounded*: one of the
    `BOUNDED` clients, and no idle time after it."""
    urls = [f"http://{host}:{port}/" for host, port in endpoints]
    gate = asyncio.Semaphore(concurrency)
    failures = 0
    make = BOUNDED[client] if bounded else CLIENTS[client]

    async with make(LIMIT, idle) as get:

        async def one(url: str) -> None:
            nonlocal failures
            async with gate:
                try:
                    await get(url)
                except Exception:
                    failures += 1

        await get(urls[0])  # warm: imports, caches, the first connector
        tracemalloc.start()
        baseline = _snapshot()
        start = time.perf_counter()
        await asyncio.gather(*(one(url) for url in urls[1:]))
        took = time.perf_counter() - start
        crawled = _snapshot()
        if not bounded:
            await asyncio.sleep(2 * idle + 1.0)  # what is measured is the state after this time
        rested = _snapshot()
        tracemalloc.stop()
    result = {
        "client": client,
        "endpoints": len(urls) - 1,
        "failures": failures,
        "seconds": took,
        "baseline": baseline,
        "crawled": crawled,
        "rested": rested,
    }
    print(json.dumps(result), flush=True)


def run_crawl(
    client: str, endpoints: list[tuple[str, int]], args: argparse.Namespace, bounded: bool = False
) -> dict[str, Any]:
    """Crawl in a fresh child process (the endpoints go through its stdin); its snapshots."""
    command = [
        sys.executable,
        __file__,
        "--crawl-child",
        client,
        "--idle",
        str(args.idle),
        "--concurrency",
        str(args.concurrency),
        *(["--bounded"] if bounded else []),
    ]
    budget = 120.0 + 2 * args.idle
    done = subprocess.run(
        command,
        input=json.dumps(endpoints),
        capture_output=True,
        text=True,
        timeout=budget,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the {client} crawl failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def report_crawl(results: list[dict[str, Any]], idle: float) -> None:
    print(f"\nRetained after a crawl, per endpoint (idle time {idle} s; Python allocations)")
    header = "after crawl", f"after {2 * idle + 1:.0f} s idle", "live points/connectors/sessions"
    print(f"  {'':8} {'endpoints':>9} {header[0]:>12} {header[1]:>14}   {header[2]}")
    for result in results:
        n = result["endpoints"]
        base, crawled, rested = result["baseline"], result["crawled"], result["rested"]
        after = (crawled["bytes"] - base["bytes"]) / n / 1024
        rest = (rested["bytes"] - base["bytes"]) / n / 1024
        counts = "/".join(str(rested[k]) for k in ("service_points", "connectors", "sessions"))
        crawled_counts = "/".join(
            str(crawled[k]) for k in ("service_points", "connectors", "sessions")
        )
        print(
            f"  {result['client']:8} {n:>9} {after:>9.2f} KB {rest:>11.2f} KB   "
            f"{crawled_counts} -> {counts}   (crawl {result['seconds']:.1f} s, "
            f"{result['failures']} failed; objects {crawled['objects'] - base['objects']:+} "
            f"-> {rested['objects'] - base['objects']:+})"
        )


def report_bounded(results: list[dict[str, Any]]) -> None:
    print(f"\nRight after a crawl under max_service_points={BOUND} (Python allocations)")
    print(f"  {'':16} {'endpoints':>9} {'per endpoint':>12}   live points/connectors/sessions")
    for result in results:
        n = result["endpoints"]
        base, crawled = result["baseline"], result["crawled"]
        counts = "/".join(str(crawled[k]) for k in ("service_points", "connectors", "sessions"))
        print(
            f"  {result['client']:16} {n:>9} {(crawled['bytes'] - base['bytes']) / n / 1024:>9.2f}"
            f" KB   {counts}   (objects {crawled['objects'] - base['objects']:+}, "
            f"{result['failures']} failed)"
        )


# -- 3. new endpoints ---------------------------------------------------------------------


async def first_contacts(client: str, endpoints: list[tuple[str, int]]) -> float:
    """CPU µs per endpoint for one GET to each of *endpoints*, 20 at a time."""
    gate = asyncio.Semaphore(20)
    async with CLIENTS[client](LIMIT, 60.0) as get:

        async def one(host: str, port: int) -> None:
            async with gate:
                await get(f"http://{host}:{port}/")

        await get(f"http://{endpoints[0][0]}:{endpoints[0][1]}/")  # warm: imports, caches
        cpu = time.process_time()
        await asyncio.gather(*(one(host, port) for host, port in endpoints[1:]))
        return (time.process_time() - cpu) / (len(endpoints) - 1) * 1e6


async def run_first_contacts(endpoints: list[tuple[str, int]], args: argparse.Namespace) -> None:
    names = list(CLIENTS)
    cpu: dict[str, list[float]] = {name: [] for name in names}
    fresh = iter(range(0, len(endpoints), args.created + 1))
    for round_no in range(args.rounds):
        for name in names[round_no % len(names) :] + names[: round_no % len(names)]:
            start = next(fresh)  # a block of endpoints no client has contacted yet
            cpu[name].append(
                await first_contacts(name, endpoints[start : start + args.created + 1])
            )
    ratios = [a / b for a, b in zip(cpu["asyncsp"], cpu["aiohttp"], strict=True)]
    print(f"\nNew endpoints: one GET to each of {args.created} new ones, 20 at a time")
    print("  (CPU µs per endpoint, median over rounds, min-max)")
    for name in names:
        print(f"  {name:8} {_spread(cpu[name]):>18}")
    print(
        f"  asyncsp/aiohttp {statistics.median(ratios):.2f} "
        f"(per round {min(ratios):.2f}-{max(ratios):.2f})"
    )


# -- main ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--waiters", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--endpoints", type=int, default=2000, help="distinct ones to crawl")
    parser.add_argument("--idle", type=float, default=2.0, help="max_idle_time / keep-alive")
    parser.add_argument("--concurrency", type=int, default=50, help="crawl requests at once")
    parser.add_argument("--created", type=int, default=500, help="new endpoints per round")
    parser.add_argument(
        "--skip", nargs="+", choices=["waits", "crawl", "create"], default=[], help="parts to skip"
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--crawl-child", choices=list(BOUNDED), help=argparse.SUPPRESS)
    parser.add_argument("--bounded", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _more_descriptors()
    if args.serve is not None:
        asyncio.run(_serve(args.serve))
        return
    if args.crawl_child is not None:
        endpoints = [(host, int(port)) for host, port in json.load(sys.stdin)]
        asyncio.run(crawl(args.crawl_child, endpoints, args.idle, args.concurrency, args.bounded))
        return
    if args.rounds < 1 or args.endpoints < 2 or args.created < 1 or min(args.waiters) < 1:
        parser.error("--rounds >= 1, --endpoints >= 2, --created >= 1, every --waiters >= 1")
    created = 0 if "create" in args.skip else args.rounds * len(CLIENTS) * (args.created + 1)
    with server(args.endpoints + 1 + created) as endpoints:
        if "waits" not in args.skip:
            host, port = endpoints[0]
            print(f"Slot waits: {args.rounds} rounds of {args.waiters} waiters", flush=True)
            asyncio.run(run_slot_waits(f"http://{host}:{port}/", args))
        if "crawl" not in args.skip:
            print(f"\nCrawling {args.endpoints} endpoints, each client in a child process...")
            crawled = endpoints[1 : args.endpoints + 1]
            results = [run_crawl(client, crawled, args) for client in CLIENTS]
            report_crawl(results, args.idle)
            results = [run_crawl(client, crawled, args, bounded=True) for client in BOUNDED]
            report_bounded(results)
        if created:
            asyncio.run(run_first_contacts(endpoints[args.endpoints + 1 :], args))


if __name__ == "__main__":
    main()
