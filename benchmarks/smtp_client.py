"""SMTP messages per second: asyncsp vs aiosmtplib (and smtplib in a thread), same run.

A loopback SMTP server runs in its own process (``smtp_server.py``: a small sink offering
PIPELINING, or aiosmtpd with ``--server aiosmtpd``, or Postfix's ``smtp-sink`` with
``--server smtp-sink`` / ``smtp-sink-nopipe``: plain text only, the latter without
PIPELINING). Each client sends small messages

- over one session, with 1 and with 3 recipients per message (asyncsp pipelines MAIL, every
  RCPT and DATA in one write; aiosmtplib and smtplib wait for each reply), and
- over a new session per message (connect, EHLO, STARTTLS when on, send, QUIT).

Plain text (``security="none"``) and STARTTLS each; clients take turns within each round (in
a rotating order). Printed per client: the best and median rate, the paired ratio to
aiosmtplib (median over rounds of the two rates in the same round) and this process's CPU
time per message (the server is another process; smtplib's thread counts too), with its
paired ratio (aiosmtplib's CPU over the client's: above 1 is cheaper). "asyncio (bare)" is the
floor: the same commands over asyncio streams with nothing checked, kept or timed, so its
ratio is the most any asyncio client could reach against aiosmtplib here.

With ``--only new-session`` only the new-session scenario runs (more rounds for the same
time); ``--pin`` puts the server on CPU 0 and this process on CPU 1, so the two never compete
for one core and the scheduler moves every client alike.

    python benchmarks/smtp_client.py [--quick] [--messages 2000] [--rounds 3]
                                     [--server sink|aiosmtpd|smtp-sink|smtp-sink-nopipe]
                                     [--only one-session|new-session] [--pin]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
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


SMTP_SINK = "/usr/sbin/smtp-sink"
SERVER_CPU: list[str] = []
"""A ``taskset`` prefix for the server's command (``--pin``), else nothing."""


@contextlib.contextmanager
def smtp_server(kind: str) -> Iterator[tuple[int, str]]:
    """Start the server process; yield its port and the CA file that trusts it."""
    if kind.startswith("smtp-sink"):
        with postfix_sink(pipelining=kind == "smtp-sink") as port:
            yield port, ""
        return
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
            [*SERVER_CPU, *cmd, "--key", key, "--impl", kind], stdout=subprocess.PIPE, text=True
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


@contextlib.contextmanager
def postfix_sink(pipelining: bool) -> Iterator[int]:
    """Postfix's smtp-sink on a free port (it drops to ``nobody`` as root: ended by PID)."""
    port = free_port()
    options = ["-u", "nobody"] if os.geteuid() == 0 else []
    if not pipelining:
        options.append("-p")
    proc = subprocess.Popen([*SERVER_CPU, SMTP_SINK, *options, f"127.0.0.1:{port}", "1024"])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                    if probe.recv(64).startswith(b"220"):
                        break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("smtp-sink did not start") from None
                time.sleep(0.05)
        yield port
    finally:
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
            policy=TlsPolicy(cafile=cafile or None), connection_lease_timeout=lease
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
    ctx = ssl.create_default_context(cafile=cafile or None)

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
    ctx = ssl.create_default_context(cafile=cafile or None)

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


def make_bare(port: int, cafile: str, security: str, rcpts: int, new_sessions: bool) -> Run:
    """The least an asyncio client can do: the same commands over asyncio streams, each reply
    read line by line with only its first digit checked, MAIL/RCPT/DATA in one write when the
    server offers PIPELINING (as asyncsp sends them), no pool, no timeouts, no checks. What it
    reaches against aiosmtplib is the most any asyncio SMTP client could."""
    to = recipients(rcpts)
    ctx = ssl.create_default_context(cafile=cafile or None)
    envelope = [f"MAIL FROM:<{SENDER}>\r\n".encode()]
    envelope += [f"RCPT TO:<{rcpt}>\r\n".encode() for rcpt in to]
    envelope.append(b"DATA\r\n")

    async def reply(reader: asyncio.StreamReader, first_digit: bytes) -> bytes:
        text = b""
        while True:
            line = await reader.readline()
            if not line.startswith(first_digit):
                raise RuntimeError(f"unexpected reply line {line!r}")
            text += line
            if line[3:4] != b"-":
                return text

    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"EHLO bench.example.org\r\n")
        return b"PIPELINING" in await reply(reader, b"2")

    async def session() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reply(reader, b"2")
        pipelining = await hello(reader, writer)
        if security == "starttls":
            writer.write(b"STARTTLS\r\n")
            await reply(reader, b"2")
            await writer.start_tls(ctx, server_hostname="127.0.0.1")
            pipelining = await hello(reader, writer)
        return reader, writer, pipelining

    async def send(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pipelining: bool, i: int
    ) -> None:
        if pipelining:
            writer.write(b"".join(envelope))
            for command in envelope:
                await reply(reader, b"3" if command == b"DATA\r\n" else b"2")
        else:
            for command in envelope:
                writer.write(command)
                await reply(reader, b"3" if command == b"DATA\r\n" else b"2")
        writer.write(body(i) + b".\r\n")  # no line of body() starts with a dot
        await reply(reader, b"2")

    async def quit_(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"QUIT\r\n")
        await reply(reader, b"2")
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()

    async def run(n: int) -> None:
        if new_sessions:
            for i in range(n):
                reader, writer, pipelining = await session()
                await send(reader, writer, pipelining, i)
                await quit_(reader, writer)
        else:
            reader, writer, pipelining = await session()
            for i in range(n):
                await send(reader, writer, pipelining, i)
            await quit_(reader, writer)

    return run


CLIENTS = {
    "asyncsp": make_asyncsp,
    "aiosmtplib": make_aiosmtplib,
    "smtplib (thread)": make_smtplib,
    "asyncio (bare)": make_bare,
}


def delivered(port: int, kind: str) -> tuple[int, int]:
    """(messages, recipients) the server has taken so far, from its NOOP reply."""
    if kind.startswith("smtp-sink"):
        return (0, 0)  # it keeps no count we can read
    with smtplib.SMTP("127.0.0.1", port, local_hostname="bench.example.org", timeout=10) as s:
        text = s.noop()[1].decode()
    counts = dict(part.split("=") for part in text.split() if "=" in part)
    return int(counts["messages"]), int(counts["recipients"])


Rounds = dict[str, list[tuple[float, float]]]


async def scenario(
    port: int,
    cafile: str,
    security: str,
    rcpts: int,
    new_sessions: bool,
    n: int,
    rounds: int,
    kind: str,
) -> Rounds:
    """Each client's rounds as (messages per second, CPU µs per message)."""
    runs = {
        name: make(port, cafile, security, rcpts, new_sessions) for name, make in CLIENTS.items()
    }
    results: Rounds = {name: [] for name in runs}
    for run in runs.values():
        await run(min(n, 50))  # warm up: imports, contexts, first connections
    names = list(runs)
    for round_no in range(rounds):
        for name in names[round_no % len(names) :] + names[: round_no % len(names)]:
            before = delivered(port, kind)
            start, cpu = time.perf_counter(), time.process_time()
            await runs[name](n)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            results[name].append((n / wall, cpu / n * 1e6))
            after = delivered(port, kind)
            assert after[0] - before[0] == n * (not kind.startswith("smtp-sink")), (
                f"{name}: the server did not take every message"
            )
            assert after[1] - before[1] == n * rcpts * (not kind.startswith("smtp-sink"))
    return results


def report(results: Rounds) -> None:
    base = results["aiosmtplib"]
    print(
        f"  {'client':18} {'best msg/s':>11} {'median':>9} {'paired':>7}"
        f" {'CPU µs/msg':>11} {'paired':>7}"
    )
    for name, values in results.items():
        rates = [rate for rate, _ in values]
        paired = statistics.median(a / b for (a, _), (b, _) in zip(values, base, strict=True))
        paired_cpu = statistics.median(b / a for (_, a), (_, b) in zip(values, base, strict=True))
        cpu = statistics.median(c for _, c in values)
        print(
            f"  {name:18} {max(rates):11.0f} {statistics.median(rates):9.0f} {paired:6.2f}x"
            f" {cpu:11.0f} {paired_cpu:6.2f}x"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 messages, 3 rounds")
    parser.add_argument("--messages", type=int, default=None, help="default 2000")
    parser.add_argument("--new-session-messages", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--server", choices=("sink", "aiosmtpd", "smtp-sink", "smtp-sink-nopipe"), default="sink"
    )
    parser.add_argument("--security", choices=("none", "starttls", "both"), default="both")
    parser.add_argument("--only", choices=("one-session", "new-session"), default=None)
    parser.add_argument("--pin", action="store_true", help="server on CPU 0, clients on CPU 1")
    args = parser.parse_args()
    if args.pin:
        SERVER_CPU[:] = ["taskset", "-c", "0"]
        os.sched_setaffinity(0, {1})
    messages = args.messages or (500 if args.quick else 2000)
    securities = ("none", "starttls") if args.security == "both" else (args.security,)
    if args.server.startswith("smtp-sink"):
        securities = ("none",)  # smtp-sink offers no STARTTLS
    new_n = args.new_session_messages or messages
    pinned = "; server on CPU 0, clients on CPU 1" if args.pin else ""
    print(
        f"asyncsp {asyncsp.__version__}, aiosmtplib {aiosmtplib.__version__}, Python "
        f"{sys.version.split()[0]}; server: {args.server} (separate process); "
        f"{args.rounds} rounds interleaved{pinned}"
    )
    with smtp_server(args.server) as (port, cafile):
        for security in securities:
            for label, rcpts, new_sessions, n in (
                ("one session, 1 recipient", 1, False, messages),
                ("one session, 3 recipients", 3, False, messages),
                ("new session per message, 1 recipient", 1, True, new_n),
            ):
                if args.only is not None and new_sessions != (args.only == "new-session"):
                    continue
                results = await scenario(
                    port, cafile, security, rcpts, new_sessions, n, args.rounds, args.server
                )
                print(f"\n{security}: {label} ({n} messages)")
                report(results)


if __name__ == "__main__":
    asyncio.run(main())
