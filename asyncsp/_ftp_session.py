"""One FTP control connection (`FtpSession`) and its data connections (`Transfer`).

The session reads complete replies within the stream's timeout (one final reply per
command: a reply nobody asked for closes it, as does a ``421``), logs in (``AUTH TLS`` first
when explicit), and starts transfers: passive port (EPSV, else PASV), the command, and the
data connection to the control connection's peer, made by the service point under the
control connection's policy snapshot and offering its TLS session (RFC 4217 §10.2; vsftpd's
``require_ssl_reuse``). A `Transfer` succeeds only when it ended honestly.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from typing import TYPE_CHECKING, Any, NoReturn

from ._errors import (
    AsyncspError,
    ConnectionClosedError,
    FtpProtocolError,
    FtpReplyError,
    StartTlsUnavailableError,
    TimeoutError,
    UnexpectedPlaintextError,
)
from ._ftp_protocol import (
    DATA_CONNECTION_FAILURES,
    SESSION_ENDING,
    FtpReply,
    ReplyParser,
    announced_size,
    check_preliminary,
    check_transfer_end,
    encode_command,
    parse_epsv,
    parse_feat,
    parse_pasv,
)
from ._pool import OnStream

if TYPE_CHECKING:
    import ssl

    from ._servicepoint import ServicePoint
    from ._streams import Stream

__all__ = ["FtpSession", "Transfer"]

READ_SIZE = 64 * 1024
"""Bytes asked of a stream per read (control replies and data chunks alike)."""
_QUIT_TIMEOUT = 2.0
"""Seconds a polite QUIT may take when a session is closed."""
_MAX_PRELIMINARY = 10
"""``120 service ready in nnn minutes`` replies tolerated before the greeting (RFC 959 §4.2)."""
_NOT_UNDERSTOOD = frozenset({500, 501, 502, 504})
"""Replies meaning "command not implemented": EPSV falls back to PASV, FEAT to none."""
_SECRET_VERBS = frozenset({b"PASS", b"ACCT"})
"""Commands whose argument is a credential: logged by verb alone."""
FTP_LOG = logging.getLogger("asyncsp.ftp")


class FtpSession(OnStream):
    """One logged-in control connection: what the service point pools.

    *security* is ``"starttls"`` (explicit ``AUTH TLS``), ``"tls"`` (the stream already runs
    TLS) or ``"none"``.
    """

    def __init__(self, stream: Stream, security: str) -> None:
        self.stream = stream
        self.security = security
        self.parser = ReplyParser()
        self.features: dict[str, str] = {}
        self.tls_session: ssl.SSLSession | None = None
        self.epsv = True  # until the server says it does not implement EPSV
        self.home: str | None = None  # the login directory, once cwd() moved away from it
        self.broken = False
        self.ended_by: FtpReply | None = None  # the 421 (or 221) that ended the session

    @property
    def endpoint(self) -> str:
        return self.stream.endpoint

    def is_reusable(self) -> bool:
        return (
            not self.broken
            and not self.parser.buffered
            and not self.parser.waiting
            and self.stream.is_reusable()
        )

    def abort(self) -> None:
        """Drop the connection at once: its protocol state is unknown."""
        self.broken = True
        self.stream.abort()

    async def aclose(self) -> None:
        """Say QUIT (briefly) when the session is healthy, then close the connection.

        Cancelled while waiting for QUIT's reply, it aborts: the socket and its slot are
        never left behind.
        """
        try:
            if self.is_reusable():
                with contextlib.suppress(AsyncspError, builtins.TimeoutError):
                    async with asyncio.timeout(_QUIT_TIMEOUT):
                        await self.command("QUIT")
        except BaseException:
            self.abort()
            raise
        await self.stream.aclose()

    # -- one exchange ----------------------------------------------------------------------

    async def send(self, line: bytes) -> None:
        """Write one command line, once every reply asked for so far has been read."""
        if self.ended_by is not None:
            raise FtpReplyError(self.ended_by.code, self.ended_by.message, endpoint=self.endpoint)
        if self.parser.waiting or self.parser.buffered or self.stream.buffered:
            await self._refuse_unasked()
        if FTP_LOG.isEnabledFor(logging.DEBUG):
            command = line.rstrip(b"\r\n")
            verb = command.partition(b" ")[0]
            shown = verb if verb.upper() in _SECRET_VERBS else command[:200]
            FTP_LOG.debug("%s C: %s", self.endpoint, shown.decode("utf-8", "replace"))
        self.stream.write(line)
        await self.stream.drain()

    async def _refuse_unasked(self) -> NoReturn:
        """Close the session over a reply that arrived before any command asked for it.

        RFC 959 pairs replies with commands by order alone: a stray reply would answer the
        next command (a refused DELE read as done) and every later one would read the
        previous command's answer. A ``421`` may come unasked (RFC 959 §4.2): it is the
        server's own word that the session is over.
        """
        try:
            if self.stream.buffered:
                with contextlib.suppress(AsyncspError):  # read at once: the bytes are here
                    self.parser.feed(await self.stream.read(self.stream.buffered))
        finally:
            self.abort()
        stray = self.parser.next_reply()
        if stray is not None and stray.code in SESSION_ENDING:
            raise FtpReplyError(stray.code, stray.message, endpoint=self.endpoint)
        raise self._unasked(stray, "before the next command")

    def _unasked(self, stray: FtpReply | None, when: str) -> FtpProtocolError:
        shown = "an incomplete reply" if stray is None else f"{stray.code} {stray.message[:80]!r}"
        return FtpProtocolError(
            f"{self.endpoint} sent a reply nobody asked for ({shown}) {when}; it would be "
            "taken for the answer to another command (a confused server, or injection), so "
            "the session was closed",
            endpoint=self.endpoint,
        )

    async def reply(self) -> FtpReply:
        """The next complete reply, within the stream's timeout for the whole reply."""
        reply = self.parser.next_reply()
        if reply is not None:
            return self._received(reply)
        deadline = asyncio.timeout(self.stream.timeout)
        try:
            async with deadline:
                while (reply := self.parser.next_reply()) is None:
                    data = await self.stream.read(READ_SIZE)
                    if not data:
                        raise ConnectionClosedError(
                            f"{self.endpoint} closed the control connection",
                            endpoint=self.endpoint,
                        )
                    self.parser.feed(data)
        except FtpProtocolError as exc:
            self.abort()
            raise FtpProtocolError(f"{self.endpoint}: {exc}", endpoint=self.endpoint) from exc
        except builtins.TimeoutError as exc:
            self.abort()
            if isinstance(exc, AsyncspError) or not deadline.expired():
                raise
            raise TimeoutError(
                f"{self.endpoint} did not complete a reply within {self.stream.timeout} s "
                "(a reply trickled or flooded); the connection was closed",
                endpoint=self.endpoint,
            ) from exc
        return self._received(reply)

    def _received(self, reply: FtpReply) -> FtpReply:
        """Bookkeeping every reply passes through before its caller sees it.

        A command has one final reply (after any ``1xx``): another complete reply already
        behind it was asked for by nobody, and leaves the command's outcome in doubt.
        """
        if FTP_LOG.isEnabledFor(logging.DEBUG):
            FTP_LOG.debug("%s S: %d %s", self.endpoint, reply.code, reply.message[:200])
        if reply.code in SESSION_ENDING:
            self._ended(reply)
        stray = self.parser.next_reply() if reply.kind != 1 else None
        if stray is not None:
            if stray.code not in SESSION_ENDING:
                self.abort()
                raise self._unasked(stray, f"after {reply.code}")
            self._ended(stray)  # RFC 959 §4.2: 421 at any time; the answer before it stands
        return reply

    def _ended(self, reply: FtpReply) -> None:
        """The server is closing the control connection: nothing more is sent, never pooled."""
        self.broken = True
        self.ended_by = self.ended_by or reply

    async def command(self, verb: str, *args: str) -> FtpReply:
        """Send one command (refused before sending if unsafe) and read its reply."""
        await self.send(encode_command(verb, *args))
        return await self.reply()

    async def expect(self, verb: str, *args: str, codes: tuple[int, ...] = (2,)) -> FtpReply:
        """`command`, raising `FtpReplyError` unless the reply's first digit is in *codes*."""
        reply = await self.command(verb, *args)
        if reply.kind not in codes:
            raise FtpReplyError(reply.code, reply.message, endpoint=self.endpoint)
        return reply

    # -- login -----------------------------------------------------------------------------

    async def login(self, username: str, password: str) -> None:
        """Greeting, ``AUTH TLS`` (explicit), USER/PASS, PBSZ/PROT, TYPE I, FEAT."""
        greeting = await self.reply()
        for _ in range(_MAX_PRELIMINARY):
            if greeting.code != 120:
                break
            greeting = await self.reply()
        if greeting.code != 220:
            raise FtpReplyError(greeting.code, greeting.message, endpoint=self.endpoint)
        if self.security == "starttls":
            await self._auth_tls()
        reply = await self.command("USER", username)
        if reply.code == 331:
            reply = await self.command("PASS", password)
        if reply.code not in (202, 230):
            raise FtpReplyError(reply.code, reply.message, endpoint=self.endpoint)
        if self.security != "none":
            # RFC 4217 §8-9: a zero-size buffer, then a private (TLS) data channel.
            await self.expect("PBSZ", "0")
            await self.expect("PROT", "P")
        await self.expect("TYPE", "I")
        feat = await self.command("FEAT")
        if feat.code == 211:
            self.features = parse_feat(feat)
        elif feat.code not in _NOT_UNDERSTOOD:
            raise FtpReplyError(feat.code, feat.message, endpoint=self.endpoint)
        # Under TLS 1.3 the resumable ticket arrives after the handshake: by now it was read.
        self.tls_session = self.stream.tls_session()

    async def _auth_tls(self) -> None:
        reply = await self.command("AUTH", "TLS")
        if reply.code != 234:
            self.abort()  # nothing else is sent in clear: not even QUIT
            raise StartTlsUnavailableError(
                f"{self.endpoint} refused AUTH TLS ({reply.code} {reply.message.strip()}); "
                "nothing was sent in clear. Use security='tls' for an implicit-TLS server, or "
                "security='none' (anonymous login only) where plain text is acceptable",
                endpoint=self.endpoint,
            )
        if self.parser.buffered or self.parser.waiting or self.stream.buffered:
            # RFC 4217 §6 (as RFC 3207 §4.2): bytes before the handshake could be taken for
            # replies under TLS; they are refused and the connection closed.
            self.abort()
            raise FtpProtocolError(
                f"{self.endpoint} sent data after 234 and before the TLS handshake (possible "
                "injection); the connection was closed",
                endpoint=self.endpoint,
            )
        try:
            await self.stream.start_tls()
        except UnexpectedPlaintextError as exc:  # the same, arrived a moment later
            raise FtpProtocolError(
                f"{self.endpoint} sent plain text after 234 instead of a TLS handshake "
                "(possible injection); the connection was closed",
                endpoint=self.endpoint,
            ) from exc

    # -- transfers -------------------------------------------------------------------------

    async def start_transfer(self, sp: ServicePoint, line: bytes, offset: int = 0) -> Transfer:
        """Passive port, ``REST`` for an offset, then *line* with its data connection.

        A refusal of the command (`FtpReplyError`) leaves the session usable unless it was
        about the data connection or ended the session (``421``); any other failure leaves it
        in an unknown state: the caller closes it.
        """
        port = await self._passive_port()
        if offset:
            await self.expect("REST", str(offset), codes=(3,))
        await self.send(line)
        return await self._connect_during_reply(sp, port, offset)

    async def _passive_port(self) -> int:
        """EPSV (RFC 2428), else PASV; the port only, the host is always the control peer."""
        if self.epsv:
            reply = await self.command("EPSV")
            if reply.code == 229:
                return parse_epsv(reply, self.endpoint)
            if reply.code not in _NOT_UNDERSTOOD:
                raise FtpReplyError(reply.code, reply.message, endpoint=self.endpoint)
            self.epsv = False
        reply = await self.command("PASV")
        if reply.code != 227:
            raise FtpReplyError(reply.code, reply.message, endpoint=self.endpoint)
        return parse_pasv(reply, self.endpoint)

    async def _open_data(self, sp: ServicePoint, port: int) -> Stream:
        """Connect to the control peer's *port*; under TLS offer the control session."""
        tls = self.stream.tls is not None
        if tls and self.tls_session is None:
            self.tls_session = self.stream.tls_session()
        data = await sp.open_side_stream(
            (self.stream.peer_address[0], port),
            policy=self.stream.policy,
            tls=tls,
            server_hostname=self.stream.server_hostname,
            session=self.tls_session if tls else None,
            timeout=self.stream.timeout,
        )
        if FTP_LOG.isEnabledFor(logging.DEBUG):
            how = (
                "plain"
                if data.tls is None
                else f"{data.tls.version}, "
                + ("resumed the control session" if data.tls.session_reused else "full handshake")
            )
            FTP_LOG.debug("%s: data connection to port %d (%s)", self.endpoint, port, how)
        return data

    async def _connect_during_reply(self, sp: ServicePoint, port: int, offset: int) -> Transfer:
        """Connect (and handshake) while the server answers the transfer command.

        Servers such as vsftpd start the data handshake only after that command, and never
        when they refuse it: a refusal cancels the connect instead of waiting it out.
        """
        reply_task = asyncio.ensure_future(self.reply())
        connect_task = asyncio.ensure_future(self._open_data(sp, port))
        tasks: tuple[asyncio.Future[Any], ...] = (reply_task, connect_task)
        handed_out = False
        try:
            while not all(task.done() for task in tasks):
                await asyncio.wait(
                    [task for task in tasks if not task.done()],
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if (
                    _failed(connect_task)
                    or _failed(reply_task)
                    or (reply_task.done() and reply_task.result().kind != 1)
                ):
                    break
            if reply_task.done():
                reply = reply_task.result()
                if reply.kind in (2, 3) or reply.code in DATA_CONNECTION_FAILURES:
                    self.abort()  # nonsense, or the data connection failed: state unknown
                check_preliminary(reply, self.endpoint)
            data = connect_task.result()  # raises the connect or handshake error
            tls = data.tls
            if tls is not None and not tls.session_reused:
                # Not resumed (the ticket expired or was used up): take a fresh one for the
                # next data connection. Copying a session parses its certificate: not per file.
                self.tls_session = None
            handed_out = True
            return Transfer(self, data, announced_size(reply_task.result()), offset)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if not handed_out and not _failed(connect_task) and not connect_task.cancelled():
                connect_task.result().abort()


class Transfer:
    """One data connection in use; iterating it yields the chunks of a download."""

    def __init__(self, session: FtpSession, data: Stream, announced: int | None, offset: int):
        self.session = session
        self.data = data
        self.announced = announced
        self.offset = offset
        self.count = 0
        self.finished = False

    def abort(self) -> None:
        """Drop the data and the control connection (a transfer left half-done)."""
        self.data.abort()
        self.session.abort()

    async def finish(self, *, upload: bool = False) -> None:
        """Close the data connection and accept the transfer only if it ended honestly."""
        data = self.data
        clean = upload or (data.ended_with_close_notify if data.tls else data.at_eof())
        # The service point keeps the sessions of closing streams for later connections; a
        # data connection's is never needed, and copying it costs a certificate parse.
        data.mark_broken()
        try:
            await data.aclose()  # for an upload: close_notify, so the server knows it is all
        except builtins.TimeoutError as exc:
            if isinstance(exc, AsyncspError):
                raise
            raise TimeoutError(
                f"{data.endpoint}: the data connection did not close", endpoint=data.endpoint
            ) from exc
        check_transfer_end(
            await self.session.reply(),
            clean=clean,
            announced=self.announced,
            count=None if upload else self.count,
            offset=self.offset,
            endpoint=self.session.endpoint,
        )
        self.finished = True

    def __aiter__(self) -> Transfer:
        return self

    async def __anext__(self) -> bytes:
        if self.finished:
            raise StopAsyncIteration
        try:
            chunk = await self.data.read(READ_SIZE)
            if chunk:
                self.count += len(chunk)
                return chunk
            await self.finish()
        except BaseException:
            self.abort()
            raise
        raise StopAsyncIteration


def _failed(task: asyncio.Future[Any]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is not None
