"""What trace hooks cost: HTTP GETs with no hook, with one no-op hook, and with an older asyncsp.

Three variants, each in a fresh process per round (so none warms another's caches and two
versions of asyncsp never share an interpreter), against ``benchmarks/http_server.py`` in a
process of its own:

- ``none``: this checkout, no hook (what every user who registers none runs);
- ``noop``: this checkout, ``trace=[lambda event: None]`` (the hook machinery, and nothing else);
- ``before``: the asyncsp of ``--before`` (a git revision, default the parent of the commit that
  added the hooks), extracted with ``git archive`` into a temporary directory.

Two workloads: ``keep-alive`` (connections reused; per request no event is due, so the cost of
the hooks is what an idle check costs) and ``new`` (``connection_lease_timeout=0``, so every
request opens and closes a connection, and emits its events). Rounds are interleaved in a
rotating order, so load from elsewhere on the machine hits the variants alike. Printed per
variant: requests/s and the client's CPU µs per request (the worker's own user and system
time), median and spread over the rounds, and each ratio to ``none``.

    python benchmarks/trace_hooks.py [--rounds 7] [--requests 4000] [--before REV] [--pin]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VARIANTS = ("none", "noop", "before")
WORKLOADS = ("keep-alive", "new")
DEFAULT_BEFORE = "98999f3^"
"""The parent of the commit that added trace hooks and their DEBUG logs."""


# -- the worker: one variant, one workload, one process ---------------------------------------


async def work(
    url: str, workload: str, requests: int, concurrency: int, hook: bool
) -> dict[str, object]:
    """Requests/s and CPU µs per request for *requests* GETs over *concurrency* tasks, and
    where asyncsp was imported from."""
    import asyncsp
    from asyncsp import ConnectionManager

    kwargs: dict[str, object] = {"default_connection_limit": concurrency}
    if hook:
        kwargs["trace"] = [lambda event: None]
    if workload == "new":
        kwargs["connection_lease_timeout"] = 0  # every connection closes after one request
    async with ConnectionManager(**kwargs) as mgr:  # type: ignore[arg-type]

        async def get() -> None:
            response = await mgr.get(url)
            await response.read()

        await asyncio.gather(*(get() for _ in range(concurrency)))  # warm up
        share = requests // concurrency

        async def worker() -> None:
            for _ in range(share):
                await get()

        sp = mgr.find_service_point(url)
        opened = sp.stats.connections_opened
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        done = share * concurrency
        if (sp.stats.connections_opened - opened >= done) != (workload == "new"):
            raise RuntimeError(f"{workload}: {sp.stats.connections_opened - opened} connections")
        return {
            "rate": done / (time.perf_counter() - start),
            "cpu_us": (time.process_time() - cpu) / done * 1e6,
            "asyncsp": asyncsp.__file__,
        }


def worker_main(args: argparse.Namespace) -> None:
    if args.pin:
        os.sched_setaffinity(0, {1})  # the server keeps CPU 0
    result = asyncio.run(
        work(args.url, args.workload, args.requests, args.concurrency, args.variant == "noop")
    )
    print(json.dumps(result), flush=True)


# -- the driver -------------------------------------------------------------------------------


def extract(revision: str, into: Path) -> Path:
    """The ``asyncsp`` package of *revision*, unpacked under *into* (the repository is read
    only)."""
    archive = into / "before.tar"
    with archive.open("wb") as out:
        subprocess.run(
            ["git", "-C", str(REPO), "archive", revision, "asyncsp"], stdout=out, check=True
        )
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def run_worker(
    variant: str, path: Path, url: str, workload: str, args: argparse.Namespace
) -> dict[str, float]:
    """One round of *variant* in a fresh process that imports asyncsp from *path*."""
    command = [
        sys.executable, __file__, "--worker",
        "--variant", variant,
        "--url", url,
        "--workload", workload,
        "--requests", str(args.requests),
        "--concurrency", str(args.concurrency),
        *(["--pin"] if args.pin else []),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(path)}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{variant} worker failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if Path(result.pop("asyncsp")).resolve().parent.parent != path.resolve():
        raise RuntimeError(f"{variant} worker imported asyncsp from elsewhere")
    return {key: float(value) for key, value in result.items()}


def report(workload: str, results: dict[str, list[dict[str, float]]]) -> None:
    print(f"\n{workload}: requests/s and client CPU µs per request (median, min-max over rounds)")
    base_rate = statistics.median(r["rate"] for r in results["none"])
    base_cpu = statistics.median(r["cpu_us"] for r in results["none"])
    for variant, rounds in results.items():
        rates = [r["rate"] for r in rounds]
        cpus = [r["cpu_us"] for r in rounds]
        rate, cpu = statistics.median(rates), statistics.median(cpus)
        spread = f"({min(rates):.0f}-{max(rates):.0f})"
        print(
            f"  {variant:7} {rate:8.0f}/s {spread:13} x{rate / base_rate:.3f}"
            f"   {cpu:6.1f} µs ({min(cpus):.1f}-{max(cpus):.1f})  x{cpu / base_cpu:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=4000, help="per variant per round")
    parser.add_argument("--concurrency", type=int, default=10, help="tasks = connection limit")
    parser.add_argument("--before", default=DEFAULT_BEFORE, help="git revision to compare with")
    parser.add_argument("--workload", choices=[*WORKLOADS, "both"], default="both")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="server on CPU 0, each worker on CPU 1 (steadier figures on a 2-core machine)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return
    sys.path.insert(0, str(HERE))
    from http_client import server

    workloads = list(WORKLOADS) if args.workload == "both" else [args.workload]
    if args.pin:
        os.sched_setaffinity(0, {0})  # inherited by the server started next
    with tempfile.TemporaryDirectory() as tmp, server(None) as port:
        paths = {"none": REPO, "noop": REPO, "before": extract(args.before, Path(tmp))}
        url = f"http://127.0.0.1:{port}/"
        print(f"server on 127.0.0.1:{port} (separate process); before = {args.before}", flush=True)
        for workload in workloads:
            results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
            for round_no in range(args.rounds):
                shift = round_no % len(VARIANTS)
                for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                    results[variant].append(
                        run_worker(variant, paths[variant], url, workload, args)
                    )
                print(
                    f"  {workload} round {round_no + 1}: "
                    + "  ".join(
                        f"{v} {results[v][-1]['rate']:.0f}/s {results[v][-1]['cpu_us']:.1f} µs"
                        for v in VARIANTS
                    ),
                    flush=True,
                )
            report(workload, results)


if __name__ == "__main__":
    main()
