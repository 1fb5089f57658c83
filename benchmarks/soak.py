"""A bounded soak: HTTP, SMTP and raw streams under injected faults, on loopback.

    python benchmarks/soak.py [--seconds 60] [--concurrency 50] [--limit 10] [--seed 1]
                              [--flip-every 0]

The servers run in a second process (``_soak_servers.py``): an aiohttp HTTPS server, an SMTP
server requiring STARTTLS, echo servers (TCP and TLS), and scripted servers that reset
connections mid-body, stall, trickle, truncate TLS without close_notify, close idle keep-alive
connections and refuse mail; one port has no server at all. Each listener counts its sockets:
the most at once whose client had not hung up.

Workers pick operations at random (seeded) until the time is up: most should succeed, the
injected faults must end in a named asyncsp error, some requests are cancelled at random
points, and ``--flip-every`` flips the manager's ``security_protocol`` between TLS 1.2 and 1.3.
Every operation is bounded by its own timeout; one that outlives `HANG_LIMIT` is a hang.

Prints operations, successes, errors by class, unexpected outcomes, the peak sockets of each
service point (our count and the server's) against its limit, and the process's file
descriptors and RSS before and after. Exits 1 if an invariant failed (a hang, an unexpected
outcome, a peak over a limit, descriptors not back at their baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import gc
import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

HERE = pathlib.Path(__file__).parent
HANG_LIMIT = 30.0
"""Seconds after which an operation that has not ended counts as a hang."""
STEP_TIMEOUT = 5.0
"""The timeout of operations that should succeed."""
FAULT_TIMEOUT = 0.5
"""The timeout of operations against stalling or trickling peers."""
FD_SLACK = 2
SAMPLE_INTERVAL = 0.01
RSS_SAMPLES = 10


# == the client: operations ================================================================


@dataclasses.dataclass
class Op:
    """One kind of operation: *expect* is "ok", "error" (an injected fault) or "cancel"."""

    name: str
    expect: str
    weight: int
    run: Callable[[], Awaitable[object]]


@dataclasses.dataclass
class Tally:
    count: int = 0
    ok: int = 0
    cancelled: int = 0
    errors: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    unexpected: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)


def operations(mgr: Any, ports: dict[str, int], refused: int, rng: random.Random) -> list[Op]:
    """The mix: (name, expected outcome, weight, coroutine)."""
    host = "127.0.0.1"
    https = f"https://{host}:{ports['https']}"
    faulty = f"https://{host}:{ports['https_faulty']}"

    async def get(url: str, expect: bytes | None = b"ok", timeout: float = STEP_TIMEOUT) -> None:
        response = await mgr.get(url, timeout=timeout)
        body = await response.read()
        assert response.status == 200 and (expect is None or body == expect), body[:40]

    async def post() -> None:
        payload = rng.randbytes(rng.randrange(1, 20_000))
        response = await mgr.post(f"{https}/echo", data=payload, timeout=STEP_TIMEOUT)
        assert await response.read() == payload

    async def cancelled_get() -> str | None:
        """A request cancelled at a random point (it may finish first)."""
        task = asyncio.ensure_future(get(f"{https}/slow"))
        await asyncio.sleep(rng.uniform(0, 0.25))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return "cancelled" if task.cancelled() else None

    async def smtp(port: int, recipient: str, security: str, timeout: float) -> None:
        async with mgr.smtp(host, port, security=security, timeout=timeout) as client:
            message = b"Subject: soak\r\n\r\n" + rng.randbytes(200).hex().encode() + b"\r\n"
            result = await client.sendmail("soak@example.org", [recipient], message)
            assert result.accepted == [recipient]

    async def stream(port: int, tls: bool, line: bytes, timeout: float = STEP_TIMEOUT) -> None:
        async with mgr.open_stream(host, port, tls=tls, timeout=timeout) as s:
            s.write(line)
            if line.startswith(b"hello"):
                assert await s.readline() == b"echo:" + line
            else:
                await s.readexactly(100)  # a fault ends it first

    good, fault = "ok", "error"
    return [
        Op("http get", good, 25, lambda: get(f"{https}/ok")),
        Op("http 64 KiB body", good, 8, lambda: get(f"{https}/body", None)),
        Op("http post echo", good, 8, post),
        Op("http idle close", good, 3, lambda: get(f"{faulty}/idle-close")),
        Op("http cancelled", "cancel", 3, cancelled_get),
        Op("http reset mid-body", fault, 3, lambda: get(f"{faulty}/reset")),
        Op("http tls truncated", fault, 3, lambda: get(f"{faulty}/truncate")),
        Op("http stall", fault, 2, lambda: get(f"{faulty}/stall", timeout=FAULT_TIMEOUT)),
        Op("http trickle", fault, 1, lambda: get(f"{faulty}/trickle", timeout=FAULT_TIMEOUT)),
        Op("http refused", fault, 1, lambda: get(f"https://{host}:{refused}/")),
        Op("smtp starttls send", good, 10, lambda: smtp(ports["smtp"], "r@x.test", "starttls", 5)),
        Op("smtp 451", fault, 2, lambda: smtp(ports["smtp_faulty"], "tempfail@x.test", "none", 5)),
        Op("smtp reset", fault, 2, lambda: smtp(ports["smtp_faulty"], "reset@x.test", "none", 5)),
        Op(
            "smtp stall",
            fault,
            1,
            lambda: smtp(ports["smtp_faulty"], "stall@x.test", "none", FAULT_TIMEOUT),
        ),
        Op("smtp refused", fault, 1, lambda: smtp(refused, "r@x.test", "starttls", 5)),
        Op("stream echo", good, 8, lambda: stream(ports["tcp"], False, b"hello\n")),
        Op("stream tls echo", good, 5, lambda: stream(ports["tls"], True, b"hello tls\n")),
        Op("stream reset", fault, 2, lambda: stream(ports["tls_faulty"], True, b"reset\n")),
        Op("stream truncated", fault, 2, lambda: stream(ports["tls_faulty"], True, b"truncate\n")),
        Op(
            "stream stall",
            fault,
            1,
            lambda: stream(ports["tls_faulty"], True, b"stall\n", FAULT_TIMEOUT),
        ),
        Op("stream refused", fault, 1, lambda: stream(refused, False, b"hello\n")),
    ]


# == the client: the run ===================================================================


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def soak(args: argparse.Namespace, ports: dict[str, int], cafile: str) -> dict[str, Any]:
    import asyncsp
    from asyncsp import AsyncspError, ConnectionManager, SecurityProtocol, TlsPolicy

    gc.collect()
    fds_before, rss_before = open_fds(), rss_mib()
    rng = random.Random(args.seed)
    refused = free_port()  # nothing listens there
    mgr = ConnectionManager(policy=TlsPolicy(cafile=cafile), default_connection_limit=args.limit)
    mix = set(args.mix.split(","))
    ops = [op for op in operations(mgr, ports, refused, rng) if op.name.split()[0] in mix]
    tallies = {op.name: Tally() for op in ops}
    peaks: collections.Counter[str] = collections.Counter()
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + args.seconds
    done = asyncio.Event()
    rss_timeline: list[float] = []  # at each tenth of the run
    flips = 0

    def sample() -> None:
        for sp in mgr.service_points:
            peaks[sp.address] = max(peaks[sp.address], sp.current_connections)

    async def sampler() -> None:
        while not done.is_set():
            sample()
            if loop.time() - started >= (len(rss_timeline) + 1) * args.seconds / RSS_SAMPLES:
                rss_timeline.append(rss_mib())
            await asyncio.sleep(SAMPLE_INTERVAL)

    async def flipper() -> None:
        nonlocal flips
        while args.flip_every and not done.is_set():
            await asyncio.sleep(args.flip_every)
            mgr.security_protocol = (
                SecurityProtocol.TLS13
                if mgr.security_protocol is SecurityProtocol.TLS12
                else SecurityProtocol.TLS12
            )
            flips += 1

    async def worker() -> None:
        while loop.time() < deadline:
            op = rng.choices(ops, weights=[o.weight for o in ops])[0]
            tally = tallies[op.name]
            tally.count += 1
            # asyncio.timeout, not wait_for: wait_for's task would tie each exception to a
            # reference cycle, and every TLS object it holds would wait for the cyclic GC.
            guard = asyncio.timeout(HANG_LIMIT)
            try:
                async with guard:
                    outcome = await op.run()
            except AsyncspError as exc:
                tally.errors[type(exc).__name__] += 1
                if op.expect == "ok":
                    tally.unexpected[f"failed: {type(exc).__name__}: {str(exc)[:120]}"] += 1
            except TimeoutError as exc:
                what = "hang" if guard.expired() else f"foreign {exc!r}"
                tally.unexpected[what] += 1
            except Exception as exc:
                tally.unexpected[f"foreign {type(exc).__name__}: {str(exc)[:120]}"] += 1
            else:
                if outcome == "cancelled":
                    tally.cancelled += 1
                    continue
                tally.ok += 1
                if op.expect == "error":
                    tally.unexpected["succeeded despite the fault"] += 1
            sample()

    background = [asyncio.create_task(sampler()), asyncio.create_task(flipper())]
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = loop.time() - started
    done.set()
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    limits = {sp.address: sp.connection_limit for sp in mgr.service_points}
    stats = {sp.address: dataclasses.asdict(sp.stats) for sp in mgr.service_points}
    rss_end = rss_mib()
    await mgr.aclose()
    settle = time.monotonic() + 2.0
    while True:
        gc.collect()
        fds_after = open_fds()
        if fds_after <= fds_before + FD_SLACK or time.monotonic() > settle:
            break
        await asyncio.sleep(0.02)
    return {
        "version": asyncsp.__version__,
        "elapsed": elapsed,
        "tallies": tallies,
        "peaks": dict(peaks),
        "limits": limits,
        "stats": stats,
        "fds": (fds_before, fds_after),
        "rss": (rss_before, rss_timeline or [rss_end], rss_end, rss_mib()),
        "flips": flips,
        "refused": refused,
    }


def report(args: argparse.Namespace, result: dict[str, Any], server: dict[str, Any]) -> bool:
    """Print the figures; return whether every invariant held."""
    tallies: dict[str, Tally] = result["tallies"]
    total = sum(t.count for t in tallies.values())
    ok = sum(t.ok for t in tallies.values())
    errors: collections.Counter[str] = collections.Counter()
    for tally in tallies.values():
        errors.update(tally.errors)
    unexpected = {
        f"{name}: {what}": n for name, t in tallies.items() for what, n in t.unexpected.items()
    }
    cancelled = sum(t.cancelled for t in tallies.values())
    elapsed = result["elapsed"]
    print(
        f"asyncsp {result['version']} soak: {elapsed:.1f} s, concurrency {args.concurrency}, "
        f"connection_limit {args.limit}, seed {args.seed}, policy flips {result['flips']}"
    )
    print(
        f"operations {total} ({total / elapsed:.0f}/s): succeeded {ok}, "
        f"failed with an asyncsp error {sum(errors.values())}, "
        f"cancelled by the soak {cancelled}"
    )
    print(f"\n{'operation':<22}{'count':>8}{'ok':>8}  errors by class")
    for name, tally in tallies.items():
        shown = ", ".join(f"{k} {v}" for k, v in tally.errors.most_common()) or "-"
        if tally.cancelled:
            shown = f"cancelled {tally.cancelled}" + ("" if shown == "-" else f", {shown}")
        print(f"{name:<22}{tally.count:>8}{tally.ok:>8}  {shown}")
    print("\nerrors by class: " + (", ".join(f"{k} {v}" for k, v in errors.most_common()) or "-"))
    print(
        f"\n{'service point':<32}{'limit':>6}{'peak ours':>11}{'peak server':>13}"
        f"{'opened':>9}{'full/resumed TLS':>18}"
    )
    by_port = {port: name for name, port in server["ports"].items()}
    within = True
    for address, limit in sorted(result["limits"].items()):
        port = int(address.rsplit(":", 1)[1])
        name = by_port.get(port)
        server_peak = server["peaks"].get(name, {}).get("peak") if name else None
        ours = result["peaks"].get(address, 0)
        stats = result["stats"][address]
        within &= ours <= limit and (server_peak is None or server_peak <= limit)
        shown_server = "-" if server_peak is None else str(server_peak)
        tls = f"{stats['tls_handshakes']}/{stats['session_resumptions']}"
        print(
            f"{address:<32}{limit:>6}{ours:>11}{shown_server:>13}"
            f"{stats['connections_opened']:>9}{tls:>18}"
        )
    fds_before, fds_after = result["fds"]
    rss_before, rss_timeline, rss_end, rss_closed = result["rss"]
    print(
        f"\nfile descriptors: before {fds_before}, after {fds_after} ({fds_after - fds_before:+d})"
    )
    print(
        f"RSS: before {rss_before:.1f} MiB, after the first tenth {rss_timeline[0]:.1f} MiB, "
        f"at the end {rss_end:.1f} MiB, after close {rss_closed:.1f} MiB"
    )
    print("RSS by tenth of the run (MiB): " + " ".join(f"{r:.0f}" for r in rss_timeline))
    fds_back = fds_after <= fds_before + FD_SLACK
    if unexpected:
        print("\nUNEXPECTED outcomes:")
        for what, n in sorted(unexpected.items(), key=lambda kv: -kv[1]):
            print(f"  {n:>6}  {what}")
    verdict = not unexpected and within and fds_back
    checks = {
        "no hang or unexpected outcome": not unexpected,
        "peaks within limits": within,
        "descriptors back at baseline": fds_back,
    }
    print("\ninvariants: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()))
    return verdict


def run_client(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="asyncsp-soak-") as tmp:
        import trustme

        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        leaf.cert_chain_pems[0].write_to_path(f"{tmp}/cert.pem")
        leaf.private_key_pem.write_to_path(f"{tmp}/key.pem")
        ca.cert_pem.write_to_path(f"{tmp}/ca.pem")
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "_soak_servers.py"), tmp],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            ports = json.loads(proc.stdout.readline())["ports"]
            result = asyncio.run(soak(args, ports, f"{tmp}/ca.pem"))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                out, _ = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
        peaks = json.loads(out.strip().splitlines()[-1])["peaks"] if out.strip() else {}
    return 0 if report(args, result, {"ports": ports, "peaks": peaks}) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--limit", type=int, default=10, help="connection_limit per endpoint")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--flip-every",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="flip security_protocol between TLS 1.2 and 1.3 this often",
    )
    parser.add_argument(
        "--mix",
        default="http,smtp,stream",
        help="which protocols to run (comma-separated: http, smtp, stream)",
    )
    return run_client(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
