"""SMTP messages per second: asyncsp vs aiosmtplib (and smtplib in a thread), same run.

A loopback SMTP server runs in its own process (``smtp_server.py``: a small sink offering
PIPELINING, or aiosmtpd with ``--server aiosmtpd``). Each client sends small messages

- over one session, with 1 and with 3 recipients per message (asyncsp pipelines MAIL, every
  RCPT and DATA in one write; aiosmtplib and smtplib wait for each reply), and
- over a new session per message (connect, EHLO, STARTTLS when on, send, QUIT).

Plain text (``security="none"``) and STARTTLS each; clients take turns within each round and
the best round of each is compared (the median is shown too).

    python benchmarks/smtp_client.py [--messages 2000] [--rounds 3] [--server sink|aiosmtpd]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import pathlib
import smtplib
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator

import aiosmtplib
import trustme

import asyncsp
from asyncsp import ConnectionManager, TlsPolicy

HERE = pathlib.Path(__file__).parent
SENDER = "bench@example.org"
TIMEOUT = 30.0
Run = Callable[[int], Awaitable[None]]


def body(i: int) -> bytes:
    return (
        f"From: {SENDER}\r\nTo: r0@example.org\r\nSubject: benchmark {i}\r\n"
        f"Message-ID: <{i}@bench.example.org>\r\n\r\nHello, this is message {i}.\r\n"
    ).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def smtp_server(kind: str) -> Iterator[tuple[int, str]]:
    """Start the server process; yield its port and the CA file that trusts it."""
    with tempfile.TemporaryDirectory(prefix="asyncsp-smtp-bench-") as tmp:
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        cert, key, cafile = (str(pathlib.Path(tmp) / n) for n in ("c.pem", "k.pem", "ca.pem"))
        leaf.cert_chain_pems[0].write_to_path(cert)
        leaf.private_key_pem.write_to_path(key)
        ca.cert_pem.write_to_path(cafile)
        port = free_port()
        cmd = [sys.executable, str(HERE / "smtp_server.py"), str(port), "--cert", cert]
        proc = subprocess.Popen(
            [*cmd, "--key", key, "--impl", kind], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            yield port, cafile
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def recipients(n: int) -> list[str]:
    return [f"r{k}@example.org" for k in range(n)]


# -- the clients ----------------------------------------------------------------------------


def make_asyncsp(port: int, cafile: str, security: str, rcpts: int, new_sessions: bool) -> Run:
    to = recipients(rcpts)

    async def run(n: int) -> None:
        # A zero lease closes each session when it is given back (QUIT awaited): a new one
        # per message, like the other clients' connect-send-quit.
        lease = 0.0 if new_sessions else None
        async with ConnectionManager(
            policy=TlsPolicy(cafile=cafile), connection_lease_timeout=lease
        ) as mgr:
            if new_sessions:
                for i in range(n):
                    async with mgr.smtp("127.0.0.1", port, security=security, timeout=TIMEOUT) as c:
                        await c.sendmail(SENDER, to, body(i))
            else:
                async with mgr.smtp("127.0.0.1", port, security=security, timeout=TIMEOUT) as c:
                    for i in range(n):
                        await c.sendmail(SENDER, to, body(i))

    return run


def make_aiosmtplib(port: int, cafile: str, security: str, rcpts: int, new_sessions: bool) -> Run:
    to = recipients(rcpts)
    ctx = ssl.create_default_context(cafile=cafile)

    def client() -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=port,
            start_tls=security == "starttls",
            tls_context=ctx if security == "starttls" else None,
            timeout=TIMEOUT,
        )

    async def run(n: int) -> None:
        if new_sessions:
            for i in range(n):
                async with client() as smtp:
                    await smtp.sendmail(SENDER, to, body(i))
        else:
            async with client() as smtp:
                for i in range(n):
                    await smtp.sendmail(SENDER, to, body(i))

    return run


def make_smtplib(port: int, cafile: str, security: str, rcpts: int, new_sessions: bool) -> Run:
    to = recipients(rcpts)
    ctx = ssl.create_default_context(cafile=cafile)

    def connect() -> smtplib.SMTP:
        smtp = smtplib.SMTP("127.0.0.1", port, local_hostname="bench.example.org", timeout=TIMEOUT)
        if security == "starttls":
            smtp.starttls(context=ctx)
        return smtp

    def blocking(n: int) -> None:
        if new_sessions:
            for i in range(n):
                with connect() as smtp:
                    smtp.sendmail(SENDER, to, body(i))
        else:
            with connect() as smtp:
                for i in range(n):
                    smtp.sendmail(SENDER, to, body(i))

    async def run(n: int) -> None:
        await asyncio.to_thread(blocking, n)

    return run


CLIENTS = {"asyncsp": make_asyncsp, "aiosmtplib": make_aiosmtplib, "smtplib (thread)": make_smtplib}


def delivered(port: int) -> tuple[int, int]:
    """(messages, recipients) the server has taken so far, from its NOOP reply."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="bench.example.org", timeout=10) as s:
        text = s.noop()[1].decode()
    counts = dict(part.split("=") for part in text.split() if "=" in part)
    return int(counts["messages"]), int(counts["recipients"])


async def scenario(
    port: int, cafile: str, security: str, rcpts: int, new_sessions: bool, n: int, rounds: int
) -> dict[str, list[float]]:
    runs = {
        name: make(port, cafile, security, rcpts, new_sessions) for name, make in CLIENTS.items()
    }
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        await run(min(n, 50))  # warm up: imports, contexts, first connections
    for _ in range(rounds):
        for name, run in runs.items():
            before = delivered(port)
            start = time.perf_counter()
            await run(n)
            rates[name].append(n / (time.perf_counter() - start))
            after = delivered(port)
            assert after[0] - before[0] == n and after[1] - before[1] == n * rcpts, (
                f"{name}: the server did not take every message"
            )
    return rates


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--new-session-messages", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", choices=("sink", "aiosmtpd"), default="sink")
    parser.add_argument("--security", choices=("none", "starttls", "both"), default="both")
    args = parser.parse_args()
    securities = ("none", "starttls") if args.security == "both" else (args.security,)
    new_n = args.new_session_messages or args.messages
    print(
        f"asyncsp {asyncsp.__version__}, aiosmtplib {aiosmtplib.__version__}, Python "
        f"{sys.version.split()[0]}; server: {args.server} (separate process); best of "
        f"{args.rounds} rounds"
    )
    with smtp_server(args.server) as (port, cafile):
        header = f"  {'client':18} {'best msg/s':>11} {'median':>9} {'vs aiosmtplib':>14}"
        for security in securities:
            for label, rcpts, new_sessions, n in (
                ("one session, 1 recipient", 1, False, args.messages),
                ("one session, 3 recipients", 3, False, args.messages),
                ("new session per message, 1 recipient", 1, True, new_n),
            ):
                rates = await scenario(port, cafile, security, rcpts, new_sessions, n, args.rounds)
                base = max(rates["aiosmtplib"])
                print(f"\n{security}: {label} ({n} messages)\n{header}")
                for name, values in rates.items():
                    print(
                        f"  {name:18} {max(values):11.0f} {statistics.median(values):9.0f} "
                        f"{max(values) / base:13.2f}x"
                    )


if __name__ == "__main__":
    asyncio.run(main())
