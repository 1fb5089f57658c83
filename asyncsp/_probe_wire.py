"""The probe's own connections to one target: a bare ClientHello and its answer, or a whole
handshake under a context of the probe's choosing, both over asyncsp streams.

Raw connections run the target's plain-text dialogue first (SMTP STARTTLS, FTP AUTH TLS), so
every fact the probe reports comes from the same place a client's TLS would start. They all
belong to one `ConnectionManager` whose connection limit bounds how many are open at once.
The contexts made here never verify: they serve to see what a server *accepts* (the legacy
opt-out's suites, session IDs without tickets, one ALPN protocol at a time); trust is judged
by the policy's own handshakes in `_probe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import ssl
import time
import warnings
from collections.abc import AsyncIterator

from ._dialogues import until_tls
from ._manager import ConnectionManager
from ._probe_hello import FlightError, ServerFlight
from ._probe_target import Target
from ._streams import Stream

__all__ = ["NotTls", "Silent", "Wire", "probe_context"]

READ_SIZE = 16 * 1024
TICKET_WAIT = 0.3
"""Seconds to wait for a TLS 1.3 ticket after the handshake (it comes one round trip later)."""
_TICKET_POLL = 0.005
_SHOWN_BYTES = 60
"""How much of a plain-text answer a report quotes."""
_TLS_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
ALL_SUITES = "ALL:COMPLEMENTOFALL:@SECLEVEL=0"
"""Every suite this OpenSSL can offer, at security level 0 (inside the probe only)."""


class NotTls(Exception):
    """The server answered a ClientHello with something other than TLS."""

    def __init__(self, answer: bytes) -> None:
        super().__init__(answer)
        self.answer = answer

    def describe(self) -> str:
        """``answers in plain text ("HTTP/1.1 400 Bad Request")``."""
        text = self.answer[:_SHOWN_BYTES].decode("ascii", "replace").splitlines()
        shown = text[0] if text else ""
        return f"the port answers in plain text, not TLS ({shown!r})"


class Silent(Exception):
    """The server accepted the connection and said nothing to a ClientHello."""


class Wire:
    """Raw connections to *target*, at most *concurrency* at once."""

    def __init__(self, target: Target, *, timeout: float, concurrency: int) -> None:
        self.target = target
        self.timeout = timeout
        self._manager = ConnectionManager(default_connection_limit=concurrency)
        name = target.host
        try:
            ipaddress.ip_address(name)
        except ValueError:
            self.server_name: str | None = name
        else:
            self.server_name = None  # RFC 6066 §3: no IP literals in SNI

    async def aclose(self) -> None:
        await self._manager.aclose()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Stream]:
        """A connection where the next byte is the ClientHello; dropped afterwards."""
        target = self.target
        async with self._manager.open_stream(
            target.host, target.port, timeout=self.timeout
        ) as stream:
            try:
                if target.starttls is not None:
                    await until_tls(stream, target.starttls, target.host)
                yield stream
            finally:
                stream.abort()  # nothing more to say: no close_notify after a bare hello

    async def exchange(self, hello: bytes) -> ServerFlight:
        """Send one ClientHello; return the server's first flight (to its end, an alert or
        the connection's end). `NotTls` and `Silent` say what else the port did; connection
        failures are asyncsp's errors."""
        flight = ServerFlight()
        received = bytearray()
        async with self.connection() as stream:
            stream.write(hello)
            await stream.drain()
            try:
                async with asyncio.timeout(self.timeout):
                    while not flight.done:
                        data = await stream.read(READ_SIZE)
                        if not data:
                            break
                        if len(received) < _SHOWN_BYTES:
                            received += data
                        flight.feed(data)
            except FlightError:
                raise NotTls(bytes(received)) from None
            except TimeoutError:
                if not received:
                    raise Silent() from None
                raise
        return flight

    async def handshake(
        self, stream: Stream, context: ssl.SSLContext, session: ssl.SSLSession | None = None
    ) -> tuple[ssl.SSLObject, float]:
        """A whole handshake under *context* over *stream*; the SSL object and its duration
        (from the ClientHello to the server's Finished). Waits briefly for a TLS 1.3 ticket.
        `ssl.SSLError` when the server refuses."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(
            incoming, outgoing, server_hostname=self.server_name, session=session
        )
        started = time.perf_counter()
        async with asyncio.timeout(self.timeout):
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await _flush(stream, outgoing)
                    data = await stream.read(READ_SIZE)
                    if not data:
                        raise ConnectionResetError("the server closed the connection") from None
                    incoming.write(data)
        elapsed = time.perf_counter() - started
        await _flush(stream, outgoing)  # our Finished
        if tls.version() == "TLSv1.3":
            await _await_ticket(stream, tls, incoming)
        return tls, elapsed


async def _flush(stream: Stream, outgoing: ssl.MemoryBIO) -> None:
    data = outgoing.read()
    if data:
        stream.write(data)
        await stream.drain()


async def _await_ticket(stream: Stream, tls: ssl.SSLObject, incoming: ssl.MemoryBIO) -> None:
    """Let a NewSessionTicket (RFC 8446 §4.6.1) that follows the handshake reach *tls*."""
    deadline = time.monotonic() + TICKET_WAIT
    while time.monotonic() < deadline:
        if stream.buffered:
            incoming.write(await stream.read(READ_SIZE))
            with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                tls.read(READ_SIZE)
            session = tls.session
            if session is not None and session.has_ticket:
                return
        await asyncio.sleep(_TICKET_POLL)


@functools.lru_cache(maxsize=32)
def probe_context(version: str, *, tickets: bool = True, alpn: str | None = None) -> ssl.SSLContext:
    """An unverified client context pinned to *version* with every suite at level 0."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 on purpose
        context.minimum_version = context.maximum_version = _TLS_VERSIONS[version]
    context.set_ciphers(ALL_SUITES)
    if not tickets:
        context.options |= ssl.OP_NO_TICKET
    if alpn is not None:
        context.set_alpn_protocols([alpn])
    return context
