"""Loopback servers for the benchmarks, in their own process: nginx when installed, else Python."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import trustme

HERE = pathlib.Path(__file__).parent
_START_ATTEMPTS = 3
"""Fresh ports are tried this often when the server cannot bind the ones it was given."""
_MAX_REPLY = 64 * 1024


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


def _wait_serving(
    port: int, context: ssl.SSLContext | None, proc: subprocess.Popen[bytes], deadline: float
) -> None:
    """Wait until *port* gives our answer (over TLS with our certificate when *context* is set).

    A port found free by `free_port` can be taken by another process before the server binds
    it (nginx then retries its bind for a while): a bare TCP connect could reach that other
    listener, so only our "ok" under our own CA proves the port is ours.
    """
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _ServerExited(f"the server exited ({proc.returncode}) before port {port} served")
        reply = b""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                conn = context.wrap_socket(raw, server_hostname="localhost") if context else raw
                with conn:
                    conn.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
                    while len(reply) < _MAX_REPLY and (chunk := conn.recv(4096)):
                        reply += chunk
        except (OSError, ssl.SSLError):
            pass
        if reply.startswith(b"HTTP/1.") and reply.endswith(b"\r\n\r\nok\n"):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the server on port {port} did not start")


class _ServerExited(RuntimeError):
    """The server process ended while starting (a port it wanted was taken meanwhile)."""


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
        context = ssl.create_default_context(cafile=str(prefix / "ca.pem"))
        nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
        )
        for attempt in range(_START_ATTEMPTS):
            ports = {"port12": free_port(), "port13": free_port(), "port_plain": free_port()}
            if prefer_nginx and nginx:
                (prefix / "tmp").mkdir(exist_ok=True)
                template = (HERE / "nginx" / "nginx.conf.template").read_text()
                (prefix / "nginx.conf").write_text(template.format(prefix=prefix, **ports))
                conf = str(prefix / "nginx.conf")
                cmd = [nginx, "-p", str(prefix), "-c", conf, "-g", "daemon off;"]
                kind = "nginx"
            else:
                cmd = [
                    sys.executable,
                    str(HERE / "_https_server.py"),
                    str(prefix),
                    *map(str, ports.values()),
                ]
                kind = "python"
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + 15
                for name, port in ports.items():
                    _wait_serving(port, None if name == "port_plain" else context, proc, deadline)
                yield Servers(kind=kind, cafile=str(prefix / "ca.pem"), **ports)
                return
            except _ServerExited:
                if attempt == _START_ATTEMPTS - 1:
                    raise
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
