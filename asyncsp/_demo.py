"""``asyncsp demo``: an offline tour on loopback servers under a throwaway CA.

Each step prints what the policy decided and what the connection negotiated: SystemDefault
picking TLS 1.3; TLS12 reaching new connections only, while a stream opened before keeps its
version; a TLS 1.1-only server refused by default and reached through an explicit, warned
opt-out for that endpoint alone; a mail over STARTTLS; an FTPS download whose data
connection resumed the control session; an administrator's OpenSSL file tightening
SystemDefault (in a child process: OpenSSL reads its file once); and the service points'
statistics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.message
import os
import pathlib
import sys
import tempfile
import warnings
from typing import TextIO

from ._demo_servers import DEMO_FILE, FTP_USER, HOST_NAME, DemoServers, demo_servers
from ._errors import AsyncspError, PolicyError
from ._manager import ConnectionManager
from ._output import Output
from ._policy import TlsPolicy
from ._protocols import SecurityProtocol
from ._tls import TlsInfo

__all__ = ["run_demo"]

STEP_TIMEOUT = 5.0
"""Seconds each step of each exchange may take; everything is on loopback."""
SP = SecurityProtocol


async def run_demo(stream: TextIO) -> int:
    """Run the tour, printing to *stream*; return the exit code (0 when every step worked)."""
    out = Output(stream)
    out.line("asyncsp demo: loopback servers under a throwaway CA; nothing leaves this machine")
    async with demo_servers() as servers:
        _servers_table(out, servers)
        trust = TlsPolicy(cafile=servers.cafile)
        async with ConnectionManager(policy=trust) as mgr:
            await _versions(out, mgr, servers)
            await _legacy(out, mgr, servers)
            await _mail(out, mgr, servers)
            await _ftps(out, mgr, servers)
            await _system_word(out, servers)
            _service_points(out, mgr)
    return 0


def _servers_table(out: Output, servers: DemoServers) -> None:
    out.table(
        ["server", "address", "TLS"],
        [
            ["HTTPS", _url(servers.https_port), "TLSv1.2 to TLSv1.3"],
            ["legacy HTTPS", _url(servers.legacy_port), "TLSv1.1 only"],
            ["SMTP", f"smtp://{HOST_NAME}:{servers.smtp_port}", "STARTTLS required"],
            [
                "FTPS",
                f"ftp://{HOST_NAME}:{servers.ftp_port}",
                "AUTH TLS; data connections TLS too",
            ],
        ],
    )


async def _versions(out: Output, mgr: ConnectionManager, servers: DemoServers) -> None:
    url = _url(servers.https_port)
    out.line()
    out.line("1. SystemDefault lets OpenSSL choose", "head")
    resp = await mgr.get(url, timeout=STEP_TIMEOUT)
    out.line(f"   GET {url} -> {resp.status}, {_tls(resp.tls)}")

    out.line("2. Set security_protocol = TLS12: new connections only", "head")
    async with mgr.open_stream(
        HOST_NAME, servers.https_port, tls=True, timeout=STEP_TIMEOUT
    ) as before:
        out.line(f"   a raw TLS stream opened first negotiates {_tls(before.tls)}")
        mgr.security_protocol = SP.TLS12
        out.line("   mgr.security_protocol = SecurityProtocol.TLS12")
        resp = await mgr.get(url, timeout=STEP_TIMEOUT)
        out.line(f"   GET {url} -> {resp.status}, {_tls(resp.tls)}")
        before.write(f"GET / HTTP/1.1\r\nHost: {HOST_NAME}\r\nConnection: close\r\n\r\n".encode())
        await before.drain()
        status = (await before.readline()).decode("latin-1").strip()
        version = before.tls.version if before.tls else "plain"
        out.line(f"   the stream opened before the change still runs {version}: {status}")
    mgr.security_protocol = SP.SYSTEM_DEFAULT
    out.line("   mgr.security_protocol = SecurityProtocol.SYSTEM_DEFAULT (back to the default)")


async def _legacy(out: Output, mgr: ConnectionManager, servers: DemoServers) -> None:
    url = _url(servers.legacy_port)
    out.line("3. A TLS 1.1-only server: refused by default, reached by an explicit opt-out", "head")
    try:
        await mgr.get(url, timeout=STEP_TIMEOUT)
    except AsyncspError as exc:
        out.line(f"   GET {url} -> {type(exc).__name__}: {exc}", "warn")
    else:
        raise AsyncspError(f"{url} should have been refused under the default policy")
    try:
        TlsPolicy(protocols=SP.TLS11)
    except PolicyError as exc:
        out.line(f"   TlsPolicy(protocols=TLS11) -> PolicyError: {exc}", "dim")
    sp = mgr.find_service_point(url)
    legacy = dataclasses.replace(mgr.policy, protocols=SP.TLS11, strong_crypto=False)
    out.line(
        "   sp = mgr.find_service_point(url); "
        "sp.policy = TlsPolicy(protocols=TLS11, strong_crypto=False, ...)"
    )
    sp.policy = legacy  # this endpoint only: every other one keeps the secure default
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resp = await mgr.get(url, timeout=STEP_TIMEOUT)
    for warning in caught:
        out.line(f"   {warning.category.__name__}: {warning.message}", "warn")
    out.line(f"   GET {url} -> {resp.status}, {_tls(resp.tls)}")


async def _mail(out: Output, mgr: ConnectionManager, servers: DemoServers) -> None:
    out.line("4. A mail over STARTTLS (required: no silent fall-back to plain text)", "head")
    message = email.message.EmailMessage()
    message["From"] = "demo@localhost"
    message["To"] = "postmaster@localhost"
    message["Subject"] = "asyncsp demo"
    message.set_content("Sent over STARTTLS under the manager's policy.\n")
    async with mgr.smtp(HOST_NAME, servers.smtp_port, timeout=STEP_TIMEOUT) as client:
        result = await client.send_message(message)
        out.line(
            f"   STARTTLS {_tls(client.tls)}; accepted {', '.join(result.accepted)}: "
            f"{result.reply.code} {result.reply.message}"
        )
    out.line(f"   the server received {len(servers.mail)} message(s)")


async def _ftps(out: Output, mgr: ConnectionManager, servers: DemoServers) -> None:
    out.line("5. An FTPS download: the data connection resumes the control session", "head")
    async with mgr.ftp(
        HOST_NAME,
        servers.ftp_port,
        username=FTP_USER,
        password=servers.ftp_password,
        timeout=STEP_TIMEOUT,
    ) as client:
        data = await client.retrieve(DEMO_FILE)
        out.line(f"   RETR {DEMO_FILE}: {len(data)} bytes: {data.decode().strip()!r}")
        out.line(f"   control connection {_tls(client.tls)}")
        reused = client.data_tls.session_reused if client.data_tls else False
        out.line(f"   data connection {_tls(client.data_tls)}, session_reused={reused}")


_SYSTEM_FILE = """\
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MinProtocol = TLSv1.3
"""
_UNDER_THE_SYSTEM_FILE = """\
import asyncio, sys
from asyncsp import ConnectionManager, PolicyError, SecurityProtocol, TlsPolicy

async def main(cafile, url):
    policy = TlsPolicy(cafile=cafile)
    offered = ", ".join(m.name for m in policy.offered_versions().members)
    print("   SystemDefault now offers:", offered)
    async with ConnectionManager(policy=policy) as mgr:
        resp = await mgr.get(url, timeout=5)
        print(f"   GET {url} -> {resp.status}, {resp.tls.version}")
    try:
        TlsPolicy(cafile=cafile, protocols=SecurityProtocol.TLS12).ssl_context()
    except PolicyError as exc:
        print(f"   TlsPolicy(protocols=TLS12) -> PolicyError: {exc}")

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def _system_word(out: Output, servers: DemoServers) -> None:
    out.line("6. The system's word: an administrator's OpenSSL file tightens SystemDefault", "head")
    out.line("   a new process whose OPENSSL_CONF says MinProtocol = TLSv1.3:", "dim")
    with tempfile.TemporaryDirectory() as folder:
        config = os.path.join(folder, "openssl.cnf")
        await asyncio.to_thread(pathlib.Path(config).write_text, _SYSTEM_FILE, "utf-8")
        environ = {**os.environ, "OPENSSL_CONF": config}
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _UNDER_THE_SYSTEM_FILE,
            servers.cafile,
            _url(servers.https_port),
            env=environ,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(30):
                printed, _ = await child.communicate()
        finally:
            if child.returncode is None:
                child.kill()  # our own child, by its PID
                await child.wait()
    for line in printed.decode(errors="replace").splitlines():
        out.line(line.replace(folder, "$TMP"))
    if child.returncode != 0:
        raise AsyncspError("the step under the system file failed (see above)")


def _service_points(out: Output, mgr: ConnectionManager) -> None:
    out.line("7. Service points", "head")
    rows = []
    for sp in mgr.service_points:
        versions = ", ".join(f"{v} x{n}" for v, n in sorted(sp.stats.versions.items()))
        rows.append(
            [
                sp.address,
                str(sp.current_connections),
                str(sp.stats.connections_opened),
                str(sp.stats.requests),
                versions or "-",
            ]
        )
    out.table(["address", "open now", "connections", "requests", "negotiated versions"], rows)


def _url(port: int) -> str:
    return f"https://{HOST_NAME}:{port}/"


def _tls(info: TlsInfo | None) -> str:
    if info is None:
        return "no TLS"
    return f"{info.version} ({info.cipher})"
