"""FTPS servers for benchmarks/ftp_client.py, each in its own process, on loopback.

- vsftpd 3.0.3 (when /usr/sbin/vsftpd exists and we run as root), from the tests' template
  ``tests/vsftpd/vsftpd.conf.in``, with ``require_ssl_reuse`` YES or NO.
- pyftpdlib's TLS handler, started by running this file (``python ftp_server.py ROOT PEM``),
  which prints ``PORT <n>`` once it listens.
"""

from __future__ import annotations

import logging
import os
import pathlib
import socket
import subprocess
import sys
import time

VSFTPD = "/usr/sbin/vsftpd"
TEMPLATE = pathlib.Path(__file__).resolve().parent.parent / "tests" / "vsftpd" / "vsftpd.conf.in"
SECURE_CHROOT_DIR = "/var/run/vsftpd/empty"
START_TIMEOUT = 10.0


class Server:
    """A running server process: its kind, port and how to stop it."""

    def __init__(self, kind: str, port: int, process: subprocess.Popen[bytes]) -> None:
        self.kind = kind
        self.port = port
        self.process = process

    def stop(self) -> None:
        self.process.terminate()  # by PID
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def vsftpd_available() -> bool:
    return os.path.exists(VSFTPD) and os.geteuid() == 0


def start_vsftpd(
    workdir: pathlib.Path, root: pathlib.Path, certfile: str, keyfile: str, *, reuse: bool
) -> Server:
    """vsftpd serving *root* (not writable) anonymously over explicit TLS."""
    os.makedirs(SECURE_CHROOT_DIR, exist_ok=True)
    port = _free_port()
    name = f"vsftpd-reuse-{'yes' if reuse else 'no'}.conf"
    (workdir / name).write_text(
        TEMPLATE.read_text().format(
            port=port,
            root=root,
            empty=SECURE_CHROOT_DIR,
            require_ssl_reuse="YES" if reuse else "NO",
            certfile=certfile,
            keyfile=keyfile,
        )
    )
    process = subprocess.Popen([VSFTPD, str(workdir / name)], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vsftpd exited with status {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return Server(f"vsftpd require_ssl_reuse={'YES' if reuse else 'NO'}", port, process)
        except OSError:
            time.sleep(0.02)  # another process: its port is all we can watch
    process.kill()
    raise RuntimeError("vsftpd did not start listening")


def start_pyftpdlib(root: pathlib.Path, pem: str) -> Server:
    """pyftpdlib's TLS handler serving *root*, in a child process running this file."""
    process = subprocess.Popen(
        [sys.executable, __file__, str(root), pem], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode().split()
    if len(line) != 2 or line[0] != "PORT":
        process.kill()
        raise RuntimeError(f"pyftpdlib did not start: {line!r}")
    return Server("pyftpdlib (TLS_FTPHandler, no reuse required)", int(line[1]), process)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_pyftpdlib(root: str, pem: str) -> None:
    from OpenSSL import SSL
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import TLS_FTPHandler
    from pyftpdlib.servers import FTPServer

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.use_certificate_chain_file(pem)
    context.use_privatekey_file(pem)
    authorizer = DummyAuthorizer()
    authorizer.add_anonymous(root)
    handler = type(
        "Handler",
        (TLS_FTPHandler,),
        {
            "ssl_context": context,
            "authorizer": authorizer,
            "tls_control_required": True,
            "tls_data_required": True,
        },
    )
    server = FTPServer(("127.0.0.1", 0), handler)
    print("PORT", server.socket.getsockname()[1], flush=True)
    server.serve_forever(timeout=1.0)


if __name__ == "__main__":
    _serve_pyftpdlib(sys.argv[1], sys.argv[2])
