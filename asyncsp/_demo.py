"""``asyncsp demo``: an offline tour on loopback servers under a throwaway CA."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import TextIO

from ._manager import ConnectionManager
from ._policy import TlsPolicy
from ._protocols import SecurityProtocol

__all__ = ["run_demo"]


@contextlib.asynccontextmanager
async def _echo_server(context: ssl.SSLContext) -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def run_demo(out: TextIO) -> int:
    """Open TLS streams to a loopback server under two policies and print what they negotiated."""
    import trustme

    ca = trustme.CA(organization_name="asyncsp demo CA")
    cert = ca.issue_cert("localhost", "127.0.0.1")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(server_ctx)
    trust = TlsPolicy(cadata=ca.cert_pem.bytes().decode())

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    async with _echo_server(server_ctx) as port, ConnectionManager(policy=trust) as mgr:
        say(f"TLS server on 127.0.0.1:{port} (TLS 1.2 and 1.3), trusted through a throwaway CA")
        async with mgr.open_stream("localhost", port, tls=True, timeout=5) as before:
            assert before.tls is not None
            say(f"1. SYSTEM_DEFAULT negotiates {before.tls.version} ({before.tls.cipher})")
            mgr.security_protocol = SecurityProtocol.TLS12
            say("2. security_protocol = TLS12")
            async with mgr.open_stream("localhost", port, tls=True, timeout=5) as after:
                assert after.tls is not None
                say(f"   a new stream negotiates {after.tls.version}")
                before.write(b"ping")
                reply = await before.readexactly(4)
                say(
                    f"   the stream opened before the change still runs {before.tls.version} "
                    f"and echoes {reply!r}"
                )
        sp = mgr.find_service_point(f"tls://localhost:{port}")
        say(
            f"3. {sp.address}: {sp.stats.connections_opened} connections, "
            f"versions {sp.stats.versions}"
        )
    return 0
