"""Loopback servers for the benchmarks, in their own process: nginx when installed, else Python."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import trustme

HERE = pathlib.Path(__file__).parent


@dataclass
class Servers:
    kind: str  # "nginx" or "python"
    cafile: str
    port12: int  # HTTPS, TLS 1.2 only
    port13: int  # HTTPS, TLS 1.3 only
    port_plain: int  # HTTP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


@contextlib.contextmanager
def https_servers(prefer_nginx: bool = True, key_type: str = "ecdsa") -> Iterator[Servers]:
    """Start HTTPS (TLS 1.2 and 1.3 on separate ports) and HTTP servers answering "ok".

    *key_type* is the certificates' key: ``"ecdsa"`` (P-256) or ``"rsa"`` (2048 bits).
    """
    with tempfile.TemporaryDirectory(prefix="asyncsp-bench-") as tmp:
        prefix = pathlib.Path(tmp)
        ca = trustme.CA(key_type=trustme.KeyType[key_type.upper()])
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        leaf.cert_chain_pems[0].write_to_path(str(prefix / "cert.pem"))
        leaf.private_key_pem.write_to_path(str(prefix / "key.pem"))
        ca.cert_pem.write_to_path(str(prefix / "ca.pem"))
        ports = {"port12": free_port(), "port13": free_port(), "port_plain": free_port()}
        nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
        )
        if prefer_nginx and nginx:
            (prefix / "tmp").mkdir()
            template = (HERE / "nginx" / "nginx.conf.template").read_text()
            (prefix / "nginx.conf").write_text(template.format(prefix=prefix, **ports))
            cmd = [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]
            kind = "nginx"
        else:
            cmd = [
                sys.executable,
                str(HERE / "_https_server.py"),
                str(prefix),
                *map(str, ports.values()),
            ]
            kind = "python"
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 15
            for port in ports.values():
                _wait_listening(port, deadline)
            yield Servers(kind=kind, cafile=str(prefix / "ca.pem"), **ports)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
