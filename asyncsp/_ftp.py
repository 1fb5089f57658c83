"""The FTPS client (RFC 959, RFC 4217): pooled control sessions, honest passive transfers.

A session is one logged-in control connection, made through its service point
(``ftp://`` for explicit ``AUTH TLS`` and for ``"none"``, ``ftps://`` for implicit TLS) and
pooled there per credentials. Every data connection goes to the control connection's peer,
runs the same handshake and verification under the control connection's policy snapshot, and
offers the control connection's TLS session, which servers such as vsftpd require
(RFC 4217 §10.2). A transfer counts only when its data connection ended with TLS
close_notify, carried the announced byte count, and the server's ``226``/``250`` arrived;
anything else closes the session (its state is then unknown).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ._endpoint import normalise_host
from ._errors import (
    AsyncspError,
    ConnectionClosedError,
    FtpCommandError,
    FtpError,
    FtpProtocolError,
    FtpReplyError,
    StartTlsUnavailableError,
    TimeoutError,
)
from ._ftp_protocol import (
    FtpEntry,
    FtpReply,
    ReplyParser,
    announced_size,
    encode_command,
    parse_epsv,
    parse_feat,
    parse_listing,
    parse_pasv,
    parse_pwd,
    parse_size,
)
from ._streams import Stream

if TYPE_CHECKING:
    import ssl

    from ._manager import ConnectionManager
    from ._policy import TlsPolicy
    from ._servicepoint import ServicePoint
    from ._tls import TlsInfo

__all__ = ["FtpClient", "FtpEntry", "open_ftp"]

SECURITY_MODES = ("starttls", "tls", "none")
IMPLICIT_TLS_PORT = 990
_READ_SIZE = 64 * 1024
"""Bytes asked of a stream per read (control replies and data chunks alike)."""
_QUIT_TIMEOUT = 2.0
"""Seconds a polite QUIT may take when a session is closed."""
_MAX_PRELIMINARY = 10
"""``120 service ready in nnn minutes`` replies tolerated before the greeting (RFC 959 §4.2)."""
_NOT_UNDERSTOOD = frozenset({500, 501, 502, 504})
"""Replies meaning "command not implemented": EPSV falls back to PASV, FEAT to none."""
_TRANSFER_DONE = frozenset({226, 250})
_DATA_FAILURES = frozenset({425, 426, 522})
"""Refusals that concern the data connection itself (RFC 959, RFC 4217 §10.2): fatal."""


class _Session:
    """One logged-in control connection: what the service point pools."""

    def __init__(self, stream: Stream, security: str) -> None:
        self.stream = stream
        self.security = security
        self.parser = ReplyParser()
        self.features: dict[str, str] = {}
        self.tls_session: ssl.SSLSession | None = None
        self.epsv = True  # until the server says it does not implement EPSV
        self.home: str | None = None  # the login directory, once cwd() moved away from it
        self.broken = False

    @property
    def policy(self) -> TlsPolicy:
        return self.stream.policy

    @property
    def opened_at(self) -> float:
        return self.stream.opened_at

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
        """Say QUIT (briefly) when the session is healthy, then close the connection."""
        if self.is_reusable():
            with contextlib.suppress(AsyncspError, builtins.TimeoutError):
                async with asyncio.timeout(_QUIT_TIMEOUT):
                    await self.command("QUIT")
        await self.stream.aclose()

    # -- one exchange ----------------------------------------------------------------------

    async def send(self, line: bytes) -> None:
        self.stream.write(line)
        await self.stream.drain()

    async def reply(self) -> FtpReply:
        """The next complete reply, within the stream's timeout for the whole reply."""
        reply = self.parser.next_reply()
        if reply is not None:
            return reply
        deadline = asyncio.timeout(self.stream.timeout)
        try:
            async with deadline:
                while (reply := self.parser.next_reply()) is None:
                    data = await self.stream.read(_READ_SIZE)
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
                f"{self.endpoint} did not complete a reply within {self.stream.timeout} s; "
                "the connection was closed",
                endpoint=self.endpoint,
            ) from exc
        return reply

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
            raise StartTlsUnavailableError(
                f"{self.endpoint} refused AUTH TLS ({reply.code} {reply.message.strip()}); "
                "nothing was sent in clear. Use security='tls' for an implicit-TLS server, or "
                "security='none' only where plain text is acceptable",
                endpoint=self.endpoint,
            )
        injected = self.parser.buffered + self.parser.waiting + self.stream.buffered
        if injected:
            # RFC 4217 §6 (as RFC 3207 §4.2): bytes before the handshake could be taken for
            # replies under TLS; they are refused and the connection closed.
            self.abort()
            raise FtpProtocolError(
                f"{self.endpoint} sent data after 234 and before the TLS handshake (possible "
                "injection); the connection was closed",
                endpoint=self.endpoint,
            )
        await self.stream.start_tls()

    # -- data connections ------------------------------------------------------------------

    async def passive_port(self) -> int:
        """EPSV (RFC 2428), else PASV; the port only, the host is always the control peer."""
        if self.epsv:
            reply = await self.command("EPSV")
            if reply.code == 229:
                return parse_epsv(reply)
            if reply.code not in _NOT_UNDERSTOOD:
                raise FtpReplyError(reply.code, reply.message, endpoint=self.endpoint)
            self.epsv = False
        reply = await self.command("PASV")
        if reply.code != 227:
            raise FtpReplyError(reply.code, reply.message, endpoint=self.endpoint)
        try:
            return parse_pasv(reply)
        except FtpProtocolError:
            self.abort()
            raise

    async def open_data(self, sp: ServicePoint, port: int) -> Stream:
        """Connect to the control peer's *port*; under TLS offer the control session."""
        tls = self.stream.tls is not None
        if tls:
            self.tls_session = self.stream.tls_session() or self.tls_session
        return await sp.open_side_stream(
            (self.stream.peer_address[0], port),
            policy=self.stream.policy,
            tls=tls,
            server_hostname=self.stream.server_hostname,
            session=self.tls_session if tls else None,
            timeout=self.stream.timeout,
        )


class _Transfer:
    """One data connection in use: its stream, what was announced, what was carried."""

    def __init__(self, session: _Session, data: Stream, announced: int | None) -> None:
        self.session = session
        self.data = data
        self.announced = announced
        self.count = 0
        self.finished = False

    def abort(self) -> None:
        self.data.abort()
        self.session.abort()

    async def finish(self, *, offset: int = 0, check_count: bool = True) -> None:
        """Close the data connection and accept the transfer only if it ended honestly."""
        data, endpoint = self.data, self.session.endpoint
        clean = data.ended_with_close_notify if data.tls is not None else data.at_eof()
        await data.aclose()
        reply = await self.session.reply()
        if reply.code not in _TRANSFER_DONE:
            raise FtpReplyError(reply.code, reply.message, endpoint=endpoint)
        if not clean:
            raise FtpProtocolError(
                f"{endpoint}: the data connection ended without TLS close_notify; the "
                "transfer may be truncated",
                endpoint=endpoint,
            )
        expected = self.announced
        if (
            check_count
            and expected is not None
            and self.count != expected
            and self.count != expected - offset
        ):
            raise FtpProtocolError(
                f"{endpoint}: the server announced {expected} bytes and sent {self.count}",
                endpoint=endpoint,
            )
        self.finished = True


class _Download:
    """The chunks of one download, verified when the data connection ends."""

    def __init__(self, transfer: _Transfer, offset: int) -> None:
        self._transfer = transfer
        self._offset = offset

    def __aiter__(self) -> _Download:
        return self

    async def __anext__(self) -> bytes:
        transfer = self._transfer
        if transfer.finished:
            raise StopAsyncIteration
        try:
            chunk = await transfer.data.read(_READ_SIZE)
            if chunk:
                transfer.count += len(chunk)
                return chunk
            await transfer.finish(offset=self._offset)
        except BaseException:
            transfer.abort()
            raise
        raise StopAsyncIteration


class FtpClient:
    """A logged-in FTP(S) session, lent by `ConnectionManager.ftp` for one ``async with``.

    One operation at a time. A failed or cancelled transfer closes the session; so does
    any error that leaves the protocol state unknown. A refused command (`FtpReplyError`
    from ``550`` and the like) leaves it usable.
    """

    def __init__(self, session: _Session, service_point: ServicePoint) -> None:
        self._session: _Session | None = session
        self._sp = service_point
        self._busy = False
        self._data_tls: TlsInfo | None = None
        self._tls = session.stream.tls

    # -- facts -----------------------------------------------------------------------------

    @property
    def tls(self) -> TlsInfo | None:
        """The control connection's TLS facts (``None`` for ``security="none"``)."""
        return self._tls

    @property
    def data_tls(self) -> TlsInfo | None:
        """The last data connection's TLS facts; ``session_reused`` tells if it resumed."""
        return self._data_tls

    @property
    def features(self) -> Mapping[str, str]:
        """FEAT's answer: upper-case keyword -> parameters (RFC 2389)."""
        return MappingProxyType(self._live().features)

    @property
    def service_point(self) -> ServicePoint:
        return self._sp

    # -- commands --------------------------------------------------------------------------

    async def pwd(self) -> str:
        """The current directory (``PWD``)."""
        return parse_pwd(await self._run(lambda s: s.expect("PWD")))

    async def cwd(self, path: str) -> None:
        """Change the current directory (``CWD``); the pooled session goes back home later."""
        encode_command("CWD", path)

        async def change(session: _Session) -> FtpReply:
            if session.home is None:
                session.home = parse_pwd(await session.expect("PWD"))
            return await session.expect("CWD", path)

        await self._run(change)

    async def size(self, path: str) -> int:
        """The size of a file in bytes (``SIZE``, RFC 3659 §4)."""
        return parse_size(await self._run(lambda s: s.expect("SIZE", path)))

    async def delete(self, path: str) -> None:
        """Delete a file (``DELE``)."""
        await self._run(lambda s: s.expect("DELE", path))

    async def mkdir(self, path: str) -> None:
        """Make a directory (``MKD``)."""
        await self._run(lambda s: s.expect("MKD", path))

    async def rmdir(self, path: str) -> None:
        """Remove an empty directory (``RMD``)."""
        await self._run(lambda s: s.expect("RMD", path))

    async def rename(self, source: str, destination: str) -> None:
        """Rename *source* to *destination* (``RNFR`` then ``RNTO``)."""
        encode_command("RNTO", destination)

        async def rename(session: _Session) -> FtpReply:
            await session.expect("RNFR", source, codes=(3,))
            return await session.expect("RNTO", destination)

        await self._run(rename)

    # -- transfers -------------------------------------------------------------------------

    async def list(self, path: str = ".") -> list[FtpEntry]:
        """The entries of *path*: MLSD when the server offers it (RFC 3659), else Unix LIST."""
        session = self._live()
        mlsd = "MLST" in session.features
        body = await self._read_all("MLSD" if mlsd else "LIST", path)
        text = body.decode("utf-8", "surrogateescape")
        try:
            return parse_listing(text.splitlines(), mlsd=mlsd)
        except FtpProtocolError as exc:
            raise FtpProtocolError(f"{self._sp.address}: {exc}", endpoint=self._sp.address) from exc

    async def retrieve(self, path: str) -> bytes:
        """The whole file, at most the manager's ``max_body_size`` bytes (`download` streams)."""
        return await self._read_all("RETR", path)

    @contextlib.asynccontextmanager
    async def download(self, path: str, offset: int = 0) -> AsyncIterator[AsyncIterator[bytes]]:
        """``async with client.download(path) as chunks: async for chunk in chunks: ...``.

        Streams in bounded memory; *offset* resumes with ``REST`` (RFC 3659 §5). The last
        iteration raises if the transfer did not end honestly; leaving early closes the session.
        """
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be an int >= 0, not {offset!r}")
        transfer = await self._start("RETR", path, offset=offset)
        try:
            yield _Download(transfer, offset)
        finally:
            self._busy = False
            if not transfer.finished:
                transfer.abort()

    async def upload(self, path: str, data: bytes | AsyncIterable[bytes]) -> None:
        """Store *data* (bytes, or an async iterable of bytes) at *path* (``STOR``)."""
        if not isinstance(data, bytes | bytearray | memoryview | AsyncIterable):
            raise TypeError(f"data must be bytes or an async iterable of bytes, not {data!r}")
        transfer = await self._start("STOR", path)
        try:
            stream = transfer.data
            if isinstance(data, bytes | bytearray | memoryview):
                view = memoryview(data)
                for start in range(0, len(view), _READ_SIZE):
                    stream.write(view[start : start + _READ_SIZE])
                    await stream.drain()
            else:
                async for chunk in data:
                    stream.write(chunk)
                    await stream.drain()
            await stream.aclose()  # close_notify: the server knows the upload is complete
            await transfer.finish(check_count=False)
        except BaseException:
            transfer.abort()
            raise
        finally:
            self._busy = False

    async def _read_all(self, verb: str, path: str) -> bytes:
        limit = self._sp.manager.max_body_size
        transfer = await self._start(verb, path)
        chunks: list[bytes] = []
        try:
            async for chunk in _Download(transfer, 0):
                chunks.append(chunk)
                if limit is not None and transfer.count > limit:
                    raise FtpError(
                        f"{self._sp.address}: {path!r} is larger than max_body_size ({limit} "
                        "bytes); use download() to stream it",
                        endpoint=self._sp.address,
                    )
        except BaseException:
            transfer.abort()
            raise
        finally:
            self._busy = False
        return b"".join(chunks)

    async def _start(self, verb: str, path: str, *, offset: int = 0) -> _Transfer:
        """Open a data connection and start *verb*; the client stays busy until it ends."""
        line = encode_command(verb, path)  # refused before anything is sent
        session = self._acquire()
        try:
            port = await session.passive_port()
            if offset:
                await session.expect("REST", str(offset), codes=(3,))
            self._sp.stats.requests += 1
            await session.send(line)
            transfer = await self._connect_during(session, port)
        except FtpReplyError:
            self._busy = False  # the server refused before any data: the session is intact
            raise
        except BaseException:
            self._busy = False
            session.abort()
            raise
        self._data_tls = transfer.data.tls
        return transfer

    async def _connect_during(self, session: _Session, port: int) -> _Transfer:
        """Connect (and handshake) while the server answers the transfer command.

        Servers such as vsftpd start the data handshake only after that command, and never
        when they refuse it: a refusal cancels the connect instead of waiting it out.
        """
        reply_task = asyncio.ensure_future(session.reply())
        connect_task = asyncio.ensure_future(session.open_data(self._sp, port))
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
                _check_preliminary(session, reply_task.result())
            data = connect_task.result()  # raises the connect or handshake error
            handed_out = True
            return _Transfer(session, data, announced_size(reply_task.result()))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if not handed_out and not _failed(connect_task) and not connect_task.cancelled():
                connect_task.result().abort()

    # -- the session guard -----------------------------------------------------------------

    def _live(self) -> _Session:
        session = self._session
        if session is None:
            raise FtpError("this FTP session was returned; use it inside `async with mgr.ftp()`")
        if session.broken or session.stream.closed:
            raise FtpError(
                f"the FTP session to {session.endpoint} was closed after a failed operation; "
                "open a new one",
                endpoint=session.endpoint,
            )
        return session

    def _acquire(self) -> _Session:
        session = self._live()
        if self._busy:
            raise FtpError("the FTP session is busy with another operation or transfer")
        self._busy = True
        return session

    async def _run(self, operation: Callable[[_Session], Awaitable[FtpReply]]) -> FtpReply:
        session = self._acquire()
        try:
            return await operation(session)
        except (FtpReplyError, FtpCommandError):
            raise  # a complete exchange, or nothing sent: the session is intact
        except BaseException:
            session.abort()
            raise
        finally:
            self._busy = False

    async def _release(self, reuse_key: tuple[str, ...], *, healthy: bool) -> None:
        """Give the session back: home directory restored and pooled, or closed."""
        session, self._session = self._session, None
        if session is None:
            return
        if not healthy or self._busy or not session.is_reusable():
            session.abort()
            return
        if session.home is not None:
            try:
                await session.expect("CWD", session.home)
            except BaseException:
                session.abort()
                raise
            session.home = None
        await self._sp.checkin(session, reuse_key)

    def __repr__(self) -> str:
        state = "returned" if self._session is None else "open"
        return f"<FtpClient {self._sp.address} {state}>"


def _failed(task: asyncio.Future[Any]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is not None


def _check_preliminary(session: _Session, reply: FtpReply) -> None:
    """A transfer command's first reply must be 1xx; a refusal leaves the session usable."""
    if reply.kind == 1:
        return
    if reply.kind < 4 or reply.code in _DATA_FAILURES:
        session.abort()  # a data connection problem or nonsense: the state is unknown
    if reply.kind < 4:
        raise FtpProtocolError(
            f"{session.endpoint} answered a transfer command with {reply.code} instead of 1xx",
            endpoint=session.endpoint,
        )
    raise FtpReplyError(reply.code, reply.message, endpoint=session.endpoint)


@contextlib.asynccontextmanager
async def open_ftp(
    manager: ConnectionManager,
    host: str,
    port: int = 21,
    *,
    security: str | None = None,
    username: str = "anonymous",
    password: str = "",
    timeout: float | None = None,
) -> AsyncIterator[FtpClient]:
    """A pooled FTP session for ``async with``; see `ConnectionManager.ftp`.

    Explicit TLS and ``"none"`` use the ``ftp://host:port`` service point, implicit TLS
    ``ftps://host:port``. Sessions are pooled there per security mode and credentials.
    """
    if isinstance(port, bool) or not isinstance(port, int):
        raise ValueError(f"port must be an int, not {port!r}")
    if security is None:
        security = "tls" if port == IMPLICIT_TLS_PORT else "starttls"
    if security not in SECURITY_MODES:
        raise ValueError(f"security must be one of {', '.join(SECURITY_MODES)}, not {security!r}")
    for name, value in (("username", username), ("password", password)):
        if not isinstance(value, str) or "\r" in value or "\n" in value or "\0" in value:
            raise ValueError(f"{name} must be a str without CR, LF or NUL")
    host = normalise_host(host)
    netloc = f"[{host}]" if ":" in host else host
    sp = manager.find_service_point(f"{'ftps' if security == 'tls' else 'ftp'}://{netloc}:{port}")
    # The password enters the key only as a digest, so no pool structure holds it.
    digest = hashlib.sha256(password.encode("utf-8", "surrogateescape")).hexdigest()
    reuse_key = ("ftp", security, username, digest)
    conn = await sp.obtain(reuse_key=reuse_key, tls=security == "tls", timeout=timeout)
    if isinstance(conn, Stream):
        session = _Session(conn, security)
        try:
            await session.login(username, password)
        except (FtpReplyError, StartTlsUnavailableError):
            await session.aclose()
            raise
        except BaseException:
            session.abort()
            raise
    else:
        session = conn
        session.stream.timeout = timeout
    client = FtpClient(session, sp)
    try:
        yield client
    except BaseException as exc:
        await client._release(reuse_key, healthy=isinstance(exc, Exception))
        raise
    else:
        await client._release(reuse_key, healthy=True)
