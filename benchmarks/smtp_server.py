"""A loopback SMTP sink for the benchmarks, run in its own process.

    python benchmarks/smtp_server.py PORT [--cert C --key K] [--impl sink|aiosmtpd]

``sink`` (the default) is a small asyncio protocol (uvloop when installed) that offers
PIPELINING, SIZE, 8BITMIME and, given a certificate, STARTTLS; it answers every complete
command in a received chunk with one write, as real MTAs do, and throws messages away. NOOP
answers with the number of messages and recipients taken, so a client can check that
nothing went missing. ``aiosmtpd`` runs aiosmtpd instead (PIPELINING added to its EHLO), a
slower server that shows how much of a gap survives a heavier peer. Prints ``ready`` once
listening; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys

MAX_SIZE = 10 * 2**20


class Counters:
    messages = 0
    recipients = 0


class SinkProtocol(asyncio.Protocol):
    """One SMTP connection; enough of RFC 5321 for a client benchmark, nothing kept."""

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.in_data = False
        self.upgrading = False
        self.secure = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as such.
        self.transport = transport  # type: ignore[assignment]
        if not self.secure and not self.upgrading:
            self.transport.write(b"220 sink.test ESMTP\r\n")

    def ehlo(self) -> bytes:
        lines = ["sink.test", "PIPELINING", f"SIZE {MAX_SIZE}", "8BITMIME", "SMTPUTF8"]
        if self.tls is not None and not self.secure:
            lines.append("STARTTLS")
        lines.append("HELP")
        return b"".join(
            f"250{'-' if i < len(lines) - 1 else ' '}{line}\r\n".encode()
            for i, line in enumerate(lines)
        )

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgrading:  # during an upgrade only TLS data arrives, kept for after it
            self.process()

    def process(self) -> None:
        out: list[bytes] = []
        while True:
            if self.in_data:
                if self.buffer.startswith(b".\r\n"):
                    end, skip = 0, 3
                else:
                    end, skip = self.buffer.find(b"\r\n.\r\n"), 5
                if end < 0:
                    break
                self.buffer = self.buffer[end + skip :]
                self.in_data = False
                Counters.messages += 1
                out.append(b"250 2.0.0 queued\r\n")
                continue
            index = self.buffer.find(b"\n")
            if index < 0:
                break
            line, self.buffer = self.buffer[:index].rstrip(b"\r"), self.buffer[index + 1 :]
            verb = line[:4].upper()
            if verb == b"EHLO":
                out.append(self.ehlo())
            elif verb == b"HELO":
                out.append(b"250 sink.test\r\n")
            elif verb == b"MAIL":
                out.append(b"250 2.1.0 ok\r\n")
            elif verb == b"RCPT":
                Counters.recipients += 1
                out.append(b"250 2.1.5 ok\r\n")
            elif verb == b"DATA":
                self.in_data = True
                out.append(b"354 go ahead\r\n")
            elif verb in (b"RSET", b"NOOP"):
                counts = f"messages={Counters.messages} recipients={Counters.recipients}"
                out.append(
                    f"250 2.0.0 ok {counts}\r\n".encode() if verb == b"NOOP" else b"250 ok\r\n"
                )
            elif verb == b"QUIT":
                out.append(b"221 2.0.0 bye\r\n")
                self.flush(out)
                assert self.transport is not None
                self.transport.close()
                return
            elif verb == b"STAR" and self.tls is not None and not self.secure:
                out.append(b"220 2.0.0 ready for TLS\r\n")
                self.flush(out)
                # RFC 3207 §4.2: nothing sent before the handshake counts; and no byte more
                # is read in clear (the ClientHello is for start_tls, which resumes reading).
                assert self.transport is not None
                self.transport.pause_reading()
                self.buffer = b""
                self.upgrading = True
                asyncio.get_running_loop().create_task(self.upgrade())
                return
            else:
                out.append(b"502 5.5.2 not implemented\r\n")
        self.flush(out)

    def flush(self, out: list[bytes]) -> None:
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))
            out.clear()

    async def upgrade(self) -> None:
        assert self.transport is not None and self.tls is not None
        try:
            transport = await asyncio.get_running_loop().start_tls(
                self.transport, self, self.tls, server_side=True
            )
        except (OSError, ssl.SSLError, ConnectionError):
            self.transport.close()
            return
        self.secure = True
        self.upgrading = False
        if transport is not None:
            self.transport = transport
        self.process()  # commands that arrived with, or right after, the handshake's end


async def serve_sink(port: int, tls: ssl.SSLContext | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SinkProtocol(tls), "127.0.0.1", port, backlog=512)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    print("ready", flush=True)
    async with server:
        await stop


def serve_aiosmtpd(port: int, tls: ssl.SSLContext | None) -> None:
    from aiosmtpd.controller import Controller

    class Handler:
        async def handle_EHLO(self, server, session, envelope, hostname, responses):  # type: ignore[no-untyped-def]
            session.host_name = hostname
            return [*responses[:-1], "250-PIPELINING", responses[-1]]

        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
            Counters.messages += 1
            Counters.recipients += len(envelope.rcpt_tos)
            return "250 2.0.0 queued"

        async def handle_NOOP(self, server, session, envelope, arg):  # type: ignore[no-untyped-def]
            return f"250 2.0.0 ok messages={Counters.messages} recipients={Counters.recipients}"

    kwargs = {"tls_context": tls} if tls is not None else {}
    controller = Controller(
        Handler(), hostname="127.0.0.1", server_hostname="127.0.0.1", port=port, **kwargs
    )
    controller.start()
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM})  # blocked in every thread, so it waits here
    controller.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--impl", choices=("sink", "aiosmtpd"), default="sink")
    args = parser.parse_args()
    tls = None
    if args.cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.cert, args.key)
    if args.impl == "aiosmtpd":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # before its thread starts
        serve_aiosmtpd(args.port, tls)
        return
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve_sink(args.port, tls))
    else:
        uvloop.run(serve_sink(args.port, tls))


if __name__ == "__main__":
    sys.exit(main())
