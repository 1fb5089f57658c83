"""The demo's loopback peers: HTTPS, a TLS 1.1-only legacy HTTPS, SMTP with STARTTLS, FTPS.

All of them listen on 127.0.0.1 only and present certificates from one throwaway CA made
for this run (trustme). They are real servers: aiohttp's web server, aiosmtpd and
pyftpdlib (with pyOpenSSL), the same peers the test suite uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import logging
import os
import socket
import ssl
import tempfile
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

__all__ = ["DEMO_FILE", "DemoServers", "demo_servers"]

LOOPBACK = "127.0.0.1"
HOST_NAME = "localhost"
"""The name clients use; the certificate names it (and 127.0.0.1)."""
DEMO_FILE = "hello.txt"
DEMO_FILE_CONTENT = b"Hello over FTPS: the data connection resumed the control session.\n"
FTP_USER = "demo"
SERVER_POLL = 0.05
"""Seconds the threaded servers wait for events before checking whether to stop."""
SERVER_IDLE_TIMEOUT = 10.0
"""Seconds the legacy server waits on a quiet connection before dropping it."""
_QUIET_LOGGERS = ("aiohttp.access", "aiohttp.server", "mail.log", "pyftpdlib")


@dataclasses.dataclass(slots=True, kw_only=True)
class DemoServers:
    """Where the demo's servers listen, and what they received."""

    cafile: str
    """The throwaway CA's certificate (PEM), valid while the servers run."""
    https_port: int
    legacy_port: int
    smtp_port: int
    ftp_port: int
    ftp_password: str
    mail: list[bytes] = dataclasses.field(default_factory=list)


@contextlib.asynccontextmanager
async def demo_servers(*, quiet: bool = True) -> AsyncIterator[DemoServers]:
    """Start every demo server; stop them all on exit."""
    import trustme

    ca = trustme.CA(organization_name="asyncsp demo CA")
    leaf = ca.issue_cert(HOST_NAME, LOOPBACK)
    if quiet:
        _silence_servers()
    with contextlib.ExitStack() as files, tempfile.TemporaryDirectory() as root:
        key_and_cert, served = _write_files(root, leaf)
        cafile = os.path.join(root, "ca.pem")
        ca.cert_pem.write_to_path(cafile)
        password = os.urandom(12).hex()
        mail: list[bytes] = []
        async with (
            _https_server(_server_context(leaf, "TLSv1.2", "TLSv1.3")) as https_port,
            _smtp_server(_server_context(leaf, "TLSv1.2", "TLSv1.3"), mail) as smtp_port,
        ):
            legacy = _server_context(leaf, "TLSv1.1", "TLSv1.1")
            legacy_port = files.enter_context(_legacy_https_server(legacy))
            ftp_port = files.enter_context(_ftp_server(key_and_cert, served, password))
            yield DemoServers(
                cafile=cafile,
                https_port=https_port,
                legacy_port=legacy_port,
                smtp_port=smtp_port,
                ftp_port=ftp_port,
                ftp_password=password,
                mail=mail,
            )


def _write_files(root: str, leaf: Any) -> tuple[str, str]:
    """The FTPS server's key and certificate file, and the directory it serves."""
    key_and_cert = os.path.join(root, "server.pem")
    leaf.private_key_and_cert_chain_pem.write_to_path(key_and_cert)
    served = os.path.join(root, "files")
    os.mkdir(served)
    with open(os.path.join(served, DEMO_FILE), "wb") as file:
        file.write(DEMO_FILE_CONTENT)
    return key_and_cert, served


def _silence_servers() -> None:
    # The servers log every connection (and a client refusing their legacy handshake) to
    # stderr; the demo narrates what happens itself.
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


_TLS_VERSIONS = {
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


def _server_context(leaf: Any, minimum: str, maximum: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(ctx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is the point here
        ctx.minimum_version = _TLS_VERSIONS[minimum]
        ctx.maximum_version = _TLS_VERSIONS[maximum]
    if _TLS_VERSIONS[minimum] < ssl.TLSVersion.TLSv1_2:
        # OpenSSL 3 signs TLS 1.0/1.1 handshakes with SHA-1, allowed at security level 0 only.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    sock.listen(64)
    return sock


@contextlib.asynccontextmanager
async def _https_server(context: ssl.SSLContext) -> AsyncIterator[int]:
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        version = ssl_object.version() if ssl_object else "plain"
        return web.Response(text=f"hello from the demo server over {version}\n")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = _listening_socket()
    try:
        site = web.SockSite(runner, sock, ssl_context=context)
        await site.start()
        yield sock.getsockname()[1]
    finally:
        await runner.cleanup()
        sock.close()


class _LegacyHttpsServer(http.server.ThreadingHTTPServer):
    """The standard library's HTTP server over blocking TLS sockets, one thread each.

    Blocking sockets send OpenSSL's alert when a handshake fails, so a client offering only
    versions this server refuses hears ``protocol_version`` rather than a bare reset.
    """

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__((LOOPBACK, 0), _LegacyHandler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(SERVER_IDLE_TIMEOUT)
        try:
            conn = self.context.wrap_socket(request, server_side=True)
        except OSError:
            return  # a refused handshake: the alert told the client why
        with conn:
            super().finish_request(conn, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-request: nothing to report, the demo narrates."""


class _LegacyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        version = getattr(self.connection, "version", lambda: "plain")()
        body = f"hello from the legacy server over {version}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the demo prints what matters."""


@contextlib.contextmanager
def _legacy_https_server(context: ssl.SSLContext) -> Iterator[int]:
    server = _LegacyHttpsServer(context)
    thread = threading.Thread(
        target=server.serve_forever, args=(SERVER_POLL,), name="demo-legacy", daemon=True
    )
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.asynccontextmanager
async def _smtp_server(context: ssl.SSLContext, mail: list[bytes]) -> AsyncIterator[int]:
    import asyncio

    from aiosmtpd.smtp import SMTP

    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            mail.append(bytes(envelope.content))
            return "250 2.0.0 OK: queued"

    loop = asyncio.get_running_loop()
    sock = _listening_socket()
    server = await loop.create_server(
        lambda: SMTP(Sink(), hostname=HOST_NAME, tls_context=context, require_starttls=True),
        sock=sock,
    )
    try:
        yield sock.getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@contextlib.contextmanager
def _ftp_server(key_and_cert: str, root: str, password: str) -> Iterator[int]:
    from pyftpdlib.authorizers import DummyAuthorizer  # type: ignore[import-untyped]
    from pyftpdlib.handlers import TLS_FTPHandler  # type: ignore[import-untyped]
    from pyftpdlib.servers import FTPServer  # type: ignore[import-untyped]

    authorizer = DummyAuthorizer()
    authorizer.add_user(FTP_USER, password, root, perm="elr")

    class Handler(TLS_FTPHandler):  # type: ignore[misc]
        certfile = key_and_cert
        tls_control_required = True
        tls_data_required = True

    Handler.authorizer = authorizer
    server = FTPServer((LOOPBACK, 0), Handler)
    stop = threading.Event()

    def serve() -> None:
        try:
            while not stop.is_set():
                server.serve_forever(timeout=SERVER_POLL, blocking=False, handle_exit=False)
        finally:
            server.close_all()

    thread = threading.Thread(target=serve, name="demo-ftps", daemon=True)
    thread.start()
    try:
        yield server.address[1]
    finally:
        stop.set()
        thread.join(5)
