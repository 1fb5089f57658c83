"""A minimal keep-alive HTTP/1.1 server for the HTTP client benchmark (loopback only).

It answers every request with the same small response, as fast as asyncio allows, so that
the client under test, not the server, sets the pace. Run by ``benchmarks/http_client.py`` in
a separate process; prints ``PORT <n>`` once it listens and serves until stdin closes.

    python benchmarks/http_server.py [--tls CERT KEY] [--body-size N] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys

_END_OF_HEAD = b"\r\n\r\n"
_MAX_HEAD = 64 * 1024
"""A request head longer than this closes the connection (the benchmark never sends one)."""


class _Handler(asyncio.Protocol):
    """Answers each request head with the canned response; requests have no body (GET)."""

    def __init__(self, response: bytes) -> None:
        self._response = response
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        buffer = self._buffer + data
        answers = buffer.count(_END_OF_HEAD)
        if answers:
            self._transport.write(self._response * answers)
            buffer = buffer[buffer.rindex(_END_OF_HEAD) + len(_END_OF_HEAD) :]
        if len(buffer) > _MAX_HEAD:
            self._transport.close()
        self._buffer = buffer


def _response(body_size: int) -> bytes:
    body = b"x" * body_size
    head = (
        "HTTP/1.1 200 OK\r\n"
        "Content-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: keep-alive\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


async def _serve(args: argparse.Namespace) -> None:
    context = None
    if args.tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*args.tls)
    response = _response(args.body_size)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Handler(response), "127.0.0.1", args.port, ssl=context, backlog=1024
    )
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    # Serve until the parent closes our stdin (or dies).
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--body-size", type=int, default=256)
    parser.add_argument("--uvloop", action="store_true", help="serve with uvloop if installed")
    args = parser.parse_args()
    if args.uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(_serve(args))
            return
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
