"""Raw streams: asyncsp's `Stream` against asyncio's own streams, in the same run.

Three measurements, each client in turn within every round (in a rotating order), against
loopback servers in a separate process, so this process's CPU time is the client's alone:

1. **Bytes through TLS** (TLS 1.3, ECDSA P-256). Writes: the client sends N bytes in 64 KiB
   or 16 KiB writes, each followed by ``drain()``, to a sink that answers ``ok`` after the
   last byte; reads: a source sends N bytes and the client reads them 64 KiB at a time.
   asyncsp's ``Stream`` against ``asyncio.open_connection(ssl=)``.
2. **Per-operation cost at C connections** (10, 100, 1,000, 5,000): each connection does
   round trips (write 64 bytes, drain, read 64 bytes back) against an echo server, all at
   once; printed per round trip. asyncsp with a per-operation timeout (every operation
   bounded), asyncsp with ``timeout=None``, and asyncio streams.
3. **Endpoint creation.** A first stream to each of E distinct endpoints (127.x.y.z, one
   server socket tied to the loopback device answers them all): connect, one round trip,
   close; plain TCP and TLS. asyncsp makes a service point per endpoint; asyncio has none.

Printed: the rate (median over rounds, min-max), the client's CPU per unit, and the paired
ratio (the median over rounds of asyncsp's figure over asyncio's in the same round).

    python benchmarks/streams.py [--quick] [--rounds 5] [--mib 64] [--conns 10 100 1000 5000]
                                 [--endpoints 1000] [--only bytes|ops|endpoints]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import trustme

from asyncsp import ConnectionManager, TlsPolicy

OK = b"ok\n"
PING = b"x" * 63 + b"\n"
TIMEOUT = 30.0
"""The per-operation timeout asyncsp runs under (never reached: it is the cost that counts)."""

# -- the servers, in a child process ------------------------------------------------------


class _SinkOrSource(asyncio.Protocol):
    """``SINK n``: swallow n bytes, then answer ``ok``. ``SOURCE n``: send n bytes."""

    def __init__(self) -> None:
        self._head = b""
        self._left = -1
        self._to_send = 0
        self._paused = False
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._left < 0:
            self._head += data
            line, found, rest = self._head.partition(b"\n")
            if not found:
                return
            command, _, size = line.partition(b" ")
            if command == b"SOURCE":
                self._to_send = int(size)
                self._left = 0
                self._send()
                return
            self._left = int(size)
            data = rest
        self._left -= len(data)
        if self._left == 0 and self._transport is not None:
            self._transport.write(OK)

    def _send(self) -> None:
        chunk = b"s" * 262144
        while self._to_send > 0 and not self._paused and self._transport is not None:
            n = min(self._to_send, len(chunk))
            self._transport.write(chunk[:n])
            self._to_send -= n

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._send()


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._transport.write(data)


def _any_loopback_socket() -> socket.socket:
    """A listening socket every 127.x.y.z reaches (tied to ``lo``), else one on 127.0.0.1."""
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
        sock.bind(("0.0.0.0", 0))
    except (OSError, AttributeError):
        sock.close()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


async def _serve(cert: str, key: str) -> None:
    loop = asyncio.get_running_loop()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    sink = await loop.create_server(_SinkOrSource, "127.0.0.1", 0, ssl=context, backlog=4096)
    echo_sock, tls_echo_sock = _any_loopback_socket(), _any_loopback_socket()
    echo = await loop.create_server(_Echo, sock=echo_sock)
    tls_echo = await loop.create_server(_Echo, sock=tls_echo_sock, ssl=context)
    ports = [s.sockets[0].getsockname() for s in (sink, echo, tls_echo)]
    any_host = ports[1][0] == "0.0.0.0"
    print("PORTS", ports[0][1], ports[1][1], ports[2][1], int(any_host), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)


@contextlib.contextmanager
def servers(cert: str, key: str) -> Iterator[tuple[int, int, int, bool]]:
    command = [sys.executable, __file__, "--serve", cert, key]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if not line or line[0] != "PORTS":
            raise RuntimeError(f"the benchmark server did not start: {line!r}")
        yield int(line[1]), int(line[2]), int(line[3]), line[4] == "1"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _more_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))


# -- the two clients, behind one small interface -------------------------------------------


class _Conn:
    """write / drain / readexactly / read / close, over either library."""

    write: Callable[[bytes], None]
    drain: Callable[[], Awaitable[None]]
    readexactly: Callable[[int], Awaitable[bytes]]
    read: Callable[[int], Awaitable[bytes]]
    close: Callable[[], Awaitable[None]]


Opener = Callable[[str, int, bool], contextlib.AbstractAsyncContextManager[_Conn]]


@contextlib.asynccontextmanager
async def asyncsp_client(ca_pem: str, limit: int, timeout: float | None) -> AsyncIterator[Opener]:
    policy = TlsPolicy(cadata=ca_pem, resume_sessions=False)
    async with ConnectionManager(
        policy=policy, default_connection_limit=limit, max_service_points=1_000_000
    ) as mgr:

        @contextlib.asynccontextmanager
        async def open_(host: str, port: int, tls: bool) -> AsyncIterator[_Conn]:
            async with mgr.open_stream(
                host,
                port,
                tls=tls,
                server_hostname="localhost" if tls else None,
                timeout=timeout,
            ) as stream:
                conn = _Conn()
                conn.write, conn.drain = stream.write, stream.drain
                conn.readexactly, conn.read = stream.readexactly, stream.read
                yield conn

        yield open_


@contextlib.asynccontextmanager
async def asyncio_client(ca_pem: str, limit: int, timeout: float | None) -> AsyncIterator[Opener]:
    context = ssl.create_default_context(cadata=ca_pem)

    @contextlib.asynccontextmanager
    async def open_(host: str, port: int, tls: bool) -> AsyncIterator[_Conn]:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context if tls else None, server_hostname="localhost" if tls else None
        )
        conn = _Conn()
        conn.write, conn.drain = writer.write, writer.drain
        conn.readexactly, conn.read = reader.readexactly, reader.read
        try:
            yield conn
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    yield open_


Client = Callable[[str, int, "float | None"], contextlib.AbstractAsyncContextManager[Opener]]
CLIENTS: dict[str, tuple[Client, float | None]] = {
    "asyncsp": (asyncsp_client, TIMEOUT),
    "asyncsp (timeout=None)": (asyncsp_client, None),
    "asyncio": (asyncio_client, None),
}


def _cpu() -> float:
    return time.process_time()


# -- 1. bytes through TLS -------------------------------------------------------------------


async def write_bytes(conn: _Conn, total: int, size: int) -> None:
    conn.write(f"SINK {total}\n".encode())
    chunk = b"w" * size
    for _ in range(total // size):
        conn.write(chunk)
        await conn.drain()
    assert await conn.readexactly(len(OK)) == OK


async def read_bytes(conn: _Conn, total: int, size: int) -> None:
    conn.write(f"SOURCE {total}\n".encode())
    await conn.drain()
    left = total
    while left:
        left -= len(await conn.read(min(size, left)))


async def run_bytes(ca_pem: str, port: int, args: argparse.Namespace) -> None:
    total = args.mib * 1024 * 1024
    names = ["asyncsp", "asyncio"]
    cases: list[tuple[str, Callable[[_Conn, int, int], Awaitable[None]], int]] = [
        ("write 64 KiB", write_bytes, 65536),
        ("write 16 KiB", write_bytes, 16384),
        ("read 64 KiB", read_bytes, 65536),
    ]
    rates: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    for round_no in range(args.rounds):
        order = names[round_no % 2 :] + names[: round_no % 2]
        for label, body, size in cases:
            for name in order:
                client, timeout = CLIENTS[name]
                async with client(ca_pem, 10, timeout) as open_:
                    async with open_("127.0.0.1", port, True) as conn:
                        wall, cpu = time.perf_counter(), _cpu()
                        await body(conn, total, size)
                        wall, cpu = time.perf_counter() - wall, _cpu() - cpu
                rates.setdefault((label, name), []).append(total / wall / 2**20)
                cpus.setdefault((label, name), []).append(cpu / total * 1e9)
        print(f"  bytes: round {round_no + 1} of {args.rounds} done", flush=True)
    print(f"\nTLS 1.3 stream, {args.mib} MiB per run (MiB/s and client CPU ns/B; median, min-max)")
    for label, _, _ in cases:
        _report(label, names, rates, cpus, "MiB/s", "ns/B", key=label)


# -- 2. per-operation cost at C connections --------------------------------------------------


async def run_ops(ca_pem: str, port: int, args: argparse.Namespace) -> None:
    names = list(CLIENTS)
    for conns in args.conns:
        trips = max(3, args.trips // conns)
        rates: dict[tuple[str, str], list[float]] = {}
        cpus: dict[tuple[str, str], list[float]] = {}
        for round_no in range(args.rounds):
            order = names[round_no % len(names) :] + names[: round_no % len(names)]
            for name in order:
                client, timeout = CLIENTS[name]
                wall, cpu = await _ops_round(client, timeout, ca_pem, port, conns, trips)
                done = conns * trips
                rates.setdefault((str(conns), name), []).append(wall / done * 1e6)
                cpus.setdefault((str(conns), name), []).append(cpu / done * 1e6)
        print(
            f"\n{conns} connections, {trips} round trips each (µs per round trip: wall and"
            " client CPU; median, min-max)",
            flush=True,
        )
        _report(str(conns), names, rates, cpus, "µs", "µs CPU", key=str(conns), lower=True)


async def _ops_round(
    client: Client, timeout: float | None, ca_pem: str, port: int, conns: int, trips: int
) -> tuple[float, float]:
    async with client(ca_pem, conns, timeout) as open_, contextlib.AsyncExitStack() as stack:
        opened: list[_Conn] = []
        for start in range(0, conns, 250):
            batch = range(start, min(conns, start + 250))
            opened += await asyncio.gather(
                *(stack.enter_async_context(open_("127.0.0.1", port, False)) for _ in batch)
            )

        async def ping(conn: _Conn) -> None:
            for _ in range(trips):
                conn.write(PING)
                await conn.drain()
                await conn.readexactly(len(PING))

        wall, cpu = time.perf_counter(), _cpu()
        await asyncio.gather(*(ping(c) for c in opened))
        return time.perf_counter() - wall, _cpu() - cpu


# -- 3. endpoint creation --------------------------------------------------------------------


async def run_endpoints(
    ca_pem: str, ports: tuple[int, int], any_host: bool, args: argparse.Namespace
) -> None:
    names = ["asyncsp", "asyncio"]
    rates: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    count = args.endpoints
    for round_no in range(args.rounds):
        order = names[round_no % 2 :] + names[: round_no % 2]
        for label, port, tls in (("TCP", ports[0], False), ("TLS", ports[1], True)):
            # A fresh block of addresses per round and client: each is a first contact.
            for index, name in enumerate(order):
                base = (round_no * 2 + index) * count
                hosts = [_host(base + i) if any_host else "127.0.0.1" for i in range(count)]
                client, timeout = CLIENTS[name]
                wall, cpu = await _first_contacts(client, timeout, ca_pem, hosts, port, tls)
                rates.setdefault((label, name), []).append(wall / count * 1e6)
                cpus.setdefault((label, name), []).append(cpu / count * 1e6)
    where = "distinct 127.x.y.z hosts" if any_host else "127.0.0.1 (one host: not first contacts)"
    print(f"\nEndpoint creation: {count} {where}, 20 at a time (µs per endpoint; median, min-max)")
    for label in ("TCP", "TLS"):
        _report(label, names, rates, cpus, "µs", "µs CPU", key=label, lower=True)


def _host(index: int) -> str:
    return f"127.{1 + index // 62500}.{index // 250 % 250 + 1}.{index % 250 + 1}"


async def _first_contacts(
    client: Client, timeout: float | None, ca_pem: str, hosts: list[str], port: int, tls: bool
) -> tuple[float, float]:
    """Wall and CPU seconds for one stream (one round trip) to each of *hosts*, 20 at once."""
    async with client(ca_pem, 10, timeout) as open_:
        sem = asyncio.Semaphore(20)

        async def one(host: str) -> None:
            async with sem, open_(host, port, tls) as conn:
                conn.write(PING)
                await conn.drain()
                await conn.readexactly(len(PING))

        wall, cpu = time.perf_counter(), _cpu()
        await asyncio.gather(*(one(h) for h in hosts))
        return time.perf_counter() - wall, _cpu() - cpu


# -- report ------------------------------------------------------------------------------------


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} ({min(values):.1f}-{max(values):.1f})"


def _report(
    label: str,
    names: list[str],
    rates: dict[tuple[str, str], list[float]],
    cpus: dict[tuple[str, str], list[float]],
    rate_unit: str,
    cpu_unit: str,
    *,
    key: str,
    lower: bool = False,
) -> None:
    print(f"  {label}")
    base_rate, base_cpu = rates[(key, "asyncio")], cpus[(key, "asyncio")]
    for name in names:
        rate, cpu = rates[(key, name)], cpus[(key, name)]
        # Paired: this client against asyncio in the same round; above 1 means asyncsp leads.
        if lower:
            paired = statistics.median(b / a for a, b in zip(rate, base_rate, strict=True))
        else:
            paired = statistics.median(a / b for a, b in zip(rate, base_rate, strict=True))
        paired_cpu = statistics.median(b / a for a, b in zip(cpu, base_cpu, strict=True))
        print(
            f"    {name:24} {_spread(rate):>26} {rate_unit:5}  CPU {_spread(cpu):>24} {cpu_unit:6}"
            f"  paired: rate {paired:.2f}x, CPU {paired_cpu:.2f}x"
        )


# -- main ---------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, ca_pem: str, cert: str, key: str) -> None:
    with servers(cert, key) as (sink, echo, tls_echo, any_host):
        if args.only in (None, "bytes"):
            await run_bytes(ca_pem, sink, args)
        if args.only in (None, "ops"):
            await run_ops(ca_pem, echo, args)
        if args.only in (None, "endpoints"):
            await run_endpoints(ca_pem, (echo, tls_echo), any_host, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 rounds")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--mib", type=int, help="MiB per byte-stream run (default 64)")
    parser.add_argument("--conns", type=int, nargs="+", default=[10, 100, 1000, 5000])
    parser.add_argument("--trips", type=int, help="round trips per run (default 50,000)")
    parser.add_argument("--endpoints", type=int, help="distinct endpoints per run (default 1000)")
    parser.add_argument("--only", choices=["bytes", "ops", "endpoints"])
    parser.add_argument("--uvloop", action="store_true", help="run the clients under uvloop")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    _more_descriptors()
    if args.serve:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(_serve(*args.serve))
        return
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.mib = args.mib or (16 if args.quick else 64)
    args.trips = args.trips or (15_000 if args.quick else 50_000)
    args.endpoints = args.endpoints or (200 if args.quick else 1000)
    if args.uvloop:
        import uvloop

        uvloop.install()
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    leaf = ca.issue_cert("localhost")
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        leaf.private_key_pem.write_to_path(str(key))
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        asyncio.run(run(args, ca.cert_pem.bytes().decode(), str(cert), str(key)))


if __name__ == "__main__":
    main()
