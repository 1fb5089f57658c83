"""The FTPS client (RFC 959, RFC 4217): pooled control sessions, honest passive transfers.

Every change to what an FTP user calls (``mgr.ftp``, `FtpClient` and its transfers) belongs
in this file; the protocol's rules belong in ``_ftp_protocol.py`` and the control and data
connections' I/O in ``_ftp_session.py``.

A session (`FtpSession`, one logged-in control connection) is made through its service
point (``ftp://`` for explicit ``AUTH TLS`` and for ``"none"``, ``ftps://`` for implicit TLS)
and pooled there per security mode and credentials; `FtpClient` lends it for one
``async with``. A transfer counts only when its data connection ended with TLS close_notify,
carried the announced byte count, and the server's ``226``/``250`` arrived; anything else
closes the session (its state is then unknown).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from ._credentials import credential_digest
from ._errors import (
    FtpArgumentError,
    FtpError,
    FtpProtocolError,
    FtpReplyError,
)
from ._ftp_protocol import FtpEntry, FtpReply, encode_command, parse_listing, parse_pwd, parse_size
from ._ftp_session import READ_SIZE, FtpSession, Transfer
from ._session_args import SessionKind
from ._streams import Stream

if TYPE_CHECKING:
    from ._registry import ServicePointRegistry
    from ._servicepoint import ServicePoint
    from ._tls import TlsInfo

__all__ = ["FtpClient", "FtpEntry", "open_ftp"]

IMPLICIT_TLS_PORT = 990
"""IANA's ``ftps`` port: implicit TLS (RFC 4217 defines only ``AUTH TLS``); other ports start
in clear."""
SESSIONS = SessionKind("ftp", "ftps", IMPLICIT_TLS_PORT)
DEFAULT_STEP_TIMEOUT = 300.0
"""Seconds each step may take when ``timeout`` is None: the connect and handshake, each
complete reply, each read or write of a data connection. RFC 959 names no limit, so this is
RFC 5321 §4.5.3.2's five minutes, what SMTP waits for most replies; it is also vsftpd's
default idle and data-connection timeout, so a slow but live server ends a step before we do."""
ANONYMOUS_USERS = frozenset({"anonymous", "ftp"})
"""The user names of anonymous FTP (RFC 1635 §2); their password is a courtesy, not a secret."""


class FtpClient:
    """A logged-in FTP(S) session, lent by `ConnectionManager.ftp` for one ``async with``.

    One operation at a time. A failed or cancelled transfer closes the session; so does
    any error that leaves the protocol state unknown, and a ``421`` (the server is closing
    the control connection, RFC 959 §4.2). Any other refused command (`FtpReplyError` from
    ``550`` and the like) leaves it usable.
    """

    def __init__(self, session: FtpSession, service_point: ServicePoint) -> None:
        self._session: FtpSession | None = session
        self._sp = service_point
        self._busy = False
        self._data_tls: TlsInfo | None = None
        self._tls = session.stream.tls
        self._features: Mapping[str, str] = MappingProxyType(dict(session.features))

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
        return self._features

    @property
    def service_point(self) -> ServicePoint:
        """The ``ftp://`` (or ``ftps://``) service point the session belongs to."""
        return self._sp

    # -- commands --------------------------------------------------------------------------

    async def pwd(self) -> str:
        """The current directory (``PWD``)."""
        return parse_pwd(await self._run(lambda s: s.expect("PWD")))

    async def cwd(self, path: str) -> None:
        """Change the current directory (``CWD``); the pooled session goes back home later."""
        encode_command("CWD", path)

        async def change(session: FtpSession) -> FtpReply:
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

        async def rename(session: FtpSession) -> FtpReply:
            await session.expect("RNFR", source, codes=(3,))
            return await session.expect("RNTO", destination)

        await self._run(rename)

    # -- transfers -------------------------------------------------------------------------

    async def list(self, path: str = ".") -> list[FtpEntry]:
        """The entries of *path*: MLSD when the server offers it (RFC 3659), else Unix LIST.

        Never ``.`` or ``..``; names are exactly what the server sent (see `FtpEntry.name`:
        check one before making a local path of it).
        """
        mlsd = "MLST" in self._features  # RFC 3659 §7.8: MLST in FEAT announces MLSD
        body = await self._read_all("MLSD" if mlsd else "LIST", path)
        # Names are bytes to the server: undecodable ones survive a round trip to a command.
        lines = body.decode("utf-8", "surrogateescape").split("\n")
        try:
            return parse_listing([line.removesuffix("\r") for line in lines], mlsd=mlsd)
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
            yield transfer
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
                for start in range(0, len(view), READ_SIZE):
                    stream.write(view[start : start + READ_SIZE])
                    await stream.drain()
            else:
                async for chunk in data:
                    stream.write(chunk)
                    await stream.drain()
            await transfer.finish(upload=True)
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
            async for chunk in transfer:
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

    async def _start(self, verb: str, path: str, *, offset: int = 0) -> Transfer:
        """Start *verb* with its data connection; the client stays busy until it ends."""
        line = encode_command(verb, path)  # refused before anything is sent
        session = self._acquire()
        try:
            self._sp.stats.requests += 1
            transfer = await session.start_transfer(self._sp, line, offset)
        except FtpReplyError:
            self._busy = False  # refused before any data: intact unless the session says not
            raise
        except BaseException:
            self._busy = False
            session.abort()
            raise
        self._data_tls = transfer.data.tls
        return transfer

    # -- the session guard -----------------------------------------------------------------

    def _live(self) -> FtpSession:
        session = self._session
        if session is None:
            raise FtpError("this FTP session was returned; use it inside `async with mgr.ftp()`")
        if session.broken or session.stream.closed:
            raise FtpError(
                f"the FTP session to {session.endpoint} was closed after a failed operation "
                "or by the server; open a new one",
                endpoint=session.endpoint,
            )
        return session

    def _acquire(self) -> FtpSession:
        session = self._live()
        if self._busy:
            raise FtpError("the FTP session is busy with another operation or transfer")
        self._busy = True
        return session

    async def _run(self, operation: Callable[[FtpSession], Awaitable[FtpReply]]) -> FtpReply:
        session = self._acquire()
        try:
            return await operation(session)
        except (FtpReplyError, FtpArgumentError):
            raise  # a complete exchange, or nothing sent: intact unless the session says not
        except BaseException:
            session.abort()
            raise
        finally:
            self._busy = False

    async def _release(self, reuse_key: tuple[object, ...], *, healthy: bool) -> None:
        """Give the session back: home directory restored and pooled, or closed."""
        session, self._session = self._session, None
        if session is None:
            return
        if not healthy or self._busy or not session.is_reusable():
            session.abort()
            return
        if session.home is not None:
            # The next borrower expects the login directory (as SMTP's RSET resets a session).
            try:
                await session.expect("CWD", session.home)
            except Exception:
                session.abort()  # not worth the caller's error: the session is just not reused
                return
            except BaseException:
                session.abort()
                raise
            session.home = None
        await self._sp.checkin(session, reuse_key)

    def __repr__(self) -> str:
        state = "returned" if self._session is None else "open"
        return f"<FtpClient {self._sp.address} {state}>"


@contextlib.asynccontextmanager
async def open_ftp(
    manager: ServicePointRegistry,
    host: str,
    port: int = 21,
    *,
    security: str | None = None,
    username: str = "anonymous",
    password: str = "",
    timeout: float | None = None,
) -> AsyncIterator[FtpClient]:
    """``async with mgr.ftp(host) as client:`` a pooled FTPS session (see `FtpClient`).

    *security* is ``"starttls"`` (explicit ``AUTH TLS``; the default on every port but
    990), ``"tls"`` (implicit; the default for 990) or ``"none"`` (anonymous login only:
    credentials never cross in clear). *timeout* bounds every step (``None``:
    `DEFAULT_STEP_TIMEOUT`, 300 s each). Explicit TLS and ``"none"`` use the ``ftp://host:port``
    service point, implicit TLS ``ftps://host:port``; sessions are pooled there per security
    mode and credentials.
    """
    target = SESSIONS.target(host, port, security=security, timeout=timeout)
    security, address = target.security, target.address
    step_timeout = DEFAULT_STEP_TIMEOUT if target.timeout is None else target.timeout
    for name, value in (("username", username), ("password", password)):
        if not isinstance(value, str) or "\r" in value or "\n" in value or "\0" in value:
            raise ValueError(f"{name} must be a str without CR, LF or NUL")
    if security == "none" and username.lower() not in ANONYMOUS_USERS:
        # Credentials never cross an unencrypted connection (RFC 4217 §1: USER/PASS in clear
        # are readable by anyone on the path); only anonymous FTP may run in plain text.
        raise FtpArgumentError(
            f"{address}: security='none' allows only anonymous login (username 'anonymous' or "
            "'ftp'); to log in with credentials use security='starttls' (AUTH TLS) or "
            "security='tls' (implicit TLS, usually port 990). Nothing was sent",
            endpoint=address,
        )
    sp = manager.find_service_point(address)
    # The password enters the key only as a keyed digest, so no pool structure reveals it.
    reuse_key = ("ftp", security, username, credential_digest(password))
    conn = await sp.obtain(reuse_key=reuse_key, tls=security == "tls", timeout=step_timeout)
    if isinstance(conn, Stream):
        session = FtpSession(conn, security)
        try:
            await session.login(username, password)
        except FtpReplyError:
            if security != "none" and conn.tls is None:
                session.abort()  # before TLS is up nothing more goes out in clear, not even QUIT
            else:
                await session.aclose()  # a refusal (530 and the like): say goodbye
            raise
        except BaseException:
            session.abort()
            raise
    else:
        session = conn
        session.stream.timeout = step_timeout
    client = FtpClient(session, sp)
    try:
        yield client
    except BaseException as exc:
        await client._release(reuse_key, healthy=isinstance(exc, Exception))
        raise
    else:
        await client._release(reuse_key, healthy=True)
