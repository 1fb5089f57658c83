"""FTP sessions against misbehaving peers: scripted asyncio servers in the test's loop."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import asyncsp._ftp
from asyncsp import ConnectionManager, FtpProtocolError, FtpReplyError, StartTlsUnavailableError
from asyncsp._errors import FtpArgumentError

from .servers import LOCAL, LineServer, wait_until


class Peer:
    """The server side of one control connection: lines in, replies out, all recorded."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.lines: list[bytes] = []

    async def line(self) -> bytes:
        """The next command line, or b"" once the client has gone."""
        try:
            line = await self.reader.readline()
        except ConnectionError:
            line = b""
        if line:
            self.lines.append(line.rstrip(b"\r\n"))
        return line

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


Script = Callable[[Peer], Awaitable[None]]


class ScriptedFtp(LineServer[Peer]):
    """A scripted server in the test's loop: each connection runs a `Script`."""

    @property
    def received(self) -> list[bytes]:
        """Every command line the clients sent."""
        return [line for peer in self.peers for line in peer.lines]


@contextlib.asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[tuple[ScriptedFtp, int]]:
    async with ScriptedFtp(Peer, script) as server:
        yield server, server.port


# -- closing a session ----------------------------------------------------------------------


async def test_cancelled_quit_closes_the_socket_and_frees_the_slot() -> None:
    quit_seen = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.send(b"220 ready\r\n")
        await peer.line()  # USER
        await peer.send(b"530 Login incorrect.\r\n")
        if (await peer.line()).startswith(b"QUIT"):
            if quit_seen.is_set():
                await peer.send(b"221 bye\r\n")
            quit_seen.set()  # the first QUIT is never answered

    async with scripted(script) as (server, port), ConnectionManager() as mgr:
        sp = mgr.find_service_point(f"ftp://{LOCAL}:{port}")
        sp.connection_limit = 1

        async def login() -> None:
            async with mgr.ftp(LOCAL, port, security="none", timeout=30):
                pass

        task = asyncio.create_task(login())
        await asyncio.wait_for(quit_seen.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sp.current_connections == 0
        await server.sockets.wait_closed(10)  # the server saw it close
        # The slot is free: a second session gets a connection (and the same refusal).
        with pytest.raises(FtpReplyError, match="530"):
            async with asyncio.timeout(10):
                await login()


# -- nothing in clear before TLS --------------------------------------------------------------


@pytest.mark.parametrize(
    ("greeting", "error", "sent"),
    [
        (b"220 ready\r\n", StartTlsUnavailableError, [b"AUTH TLS"]),  # AUTH TLS refused
        (b"421 too many users\r\n", FtpReplyError, []),  # no greeting: not even AUTH TLS
    ],
)
async def test_no_quit_in_clear_when_tls_never_started(
    greeting: bytes, error: type[Exception], sent: list[bytes]
) -> None:
    async def script(peer: Peer) -> None:
        await peer.send(greeting)
        while line := await peer.line():
            await peer.send(b"221 bye\r\n" if line.startswith(b"QUIT") else b"534 no TLS\r\n")

    async with scripted(script) as (server, port), ConnectionManager() as mgr:
        with pytest.raises(error):
            async with mgr.ftp(LOCAL, port, timeout=10):
                pass
        await server.sockets.wait_closed(10)
        assert mgr.find_service_point(f"ftp://{LOCAL}:{port}").current_connections == 0
    assert server.received == sent  # no USER, no password, not even QUIT


# -- credentials never in clear ---------------------------------------------------------------

PASSWORD = "s3cret-pw"


async def anonymous_login(peer: Peer) -> None:
    await peer.send(b"220 ready\r\n")
    for answer in (b"331 any password\r\n", b"230 in\r\n", b"200 binary\r\n", b"502 no FEAT\r\n"):
        await peer.line()
        await peer.send(answer)
    while line := await peer.line():
        await peer.send(b"221 bye\r\n" if line.startswith(b"QUIT") else b"200 ok\r\n")


async def test_security_none_refuses_credentials_before_connecting() -> None:
    async with scripted(anonymous_login) as (server, port), ConnectionManager() as mgr:
        with pytest.raises(FtpArgumentError, match="anonymous") as caught:
            async with mgr.ftp(LOCAL, port, security="none", username="alice", password=PASSWORD):
                pass
        message = str(caught.value)
        assert "security='starttls'" in message and "security='tls'" in message
        assert PASSWORD not in message and PASSWORD not in repr(caught.value)
        assert mgr.find_service_point(f"ftp://{LOCAL}:{port}").stats.connections_opened == 0
        # Anonymous FTP (either conventional name) may still run in plain text.
        for user in ("anonymous", "FTP"):
            async with mgr.ftp(LOCAL, port, security="none", username=user, password="me@x"):
                pass
    assert server.peers and not any(line.startswith(b"USER alice") for line in server.received)


# -- timeout=None still bounds every step -----------------------------------------------------


async def test_no_timeout_means_the_default_step_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncsp._ftp, "DEFAULT_STEP_TIMEOUT", 0.2)  # instead of minutes

    async def never_greet(peer: Peer) -> None:
        pass

    async def stall_pwd(peer: Peer) -> None:
        await peer.send(b"220 ready\r\n")
        for answer in (b"331 ok\r\n", b"230 in\r\n", b"200 binary\r\n", b"502 no FEAT\r\n"):
            await peer.line()
            await peer.send(answer)
        await peer.line()  # PWD: never answered

    async with scripted(never_greet) as (_, port), ConnectionManager() as mgr:
        sp = mgr.find_service_point(f"ftp://{LOCAL}:{port}")
        with pytest.raises(asyncsp.TimeoutError, match=r"0\.2 s"):
            async with asyncio.timeout(10), mgr.ftp(LOCAL, port, security="none"):
                pass
        assert sp.current_connections == 0
    async with scripted(stall_pwd) as (_, port), ConnectionManager() as mgr:
        async with asyncio.timeout(10), mgr.ftp(LOCAL, port, security="none") as ftp:
            with pytest.raises(asyncsp.TimeoutError, match=r"0\.2 s"):
                await ftp.pwd()
    with pytest.raises(ValueError, match="timeout"):
        async with ConnectionManager() as mgr, mgr.ftp(LOCAL, port, timeout=0):
            pass


# -- pool keys --------------------------------------------------------------------------------


async def test_pool_keys_hold_a_keyed_digest_of_the_password() -> None:
    password = "me@example.org"  # an anonymous password: the one kind "none" may carry
    async with scripted(anonymous_login) as (server, port), ConnectionManager() as mgr:
        sp = mgr.find_service_point(f"ftp://{LOCAL}:{port}")
        for _ in range(2):  # the second session is the pooled first one
            async with mgr.ftp(LOCAL, port, security="none", password=password):
                pass
        assert sp.stats.connections_opened == 1
        keys = [idle.key for idle in sp._pool._idle]
        assert len(keys) == 1
        plain = hashlib.sha256(password.encode())
        shown = repr(keys)
        assert password not in shown and plain.hexdigest() not in shown
        assert plain.digest() not in keys[0] and plain.hexdigest() not in keys[0]
        async with mgr.ftp(LOCAL, port, security="none", password="other@example.org"):
            assert sp.stats.connections_opened == 2  # another password: another session
    assert len(server.peers) == 2


# -- replies that end the session -------------------------------------------------------------


async def test_a_421_closes_the_session_instead_of_pooling_it() -> None:
    # RFC 959 §4.2: 421 may answer any command; the server is closing the control connection.
    async def script(peer: Peer) -> None:
        first = not server.peers[:-1]
        await peer.send(b"220 ready\r\n")
        for answer in (b"331 ok\r\n", b"230 in\r\n", b"200 binary\r\n", b"502 no FEAT\r\n"):
            await peer.line()
            await peer.send(answer)
        while line := await peer.line():
            if line.startswith(b"QUIT"):
                await peer.send(b"221 bye\r\n")
            elif first:
                await peer.send(b"421 Timeout.\r\n")  # and keeps the socket open a while
            else:
                await peer.send(b'257 "/" is the directory\r\n')

    async with ScriptedFtp(Peer, script) as server, ConnectionManager() as mgr:
        sp = mgr.find_service_point(f"ftp://{LOCAL}:{server.port}")
        async with mgr.ftp(LOCAL, server.port, security="none", timeout=10) as ftp:
            with pytest.raises(FtpReplyError) as caught:
                await ftp.delete("f")
            assert caught.value.code == 421
            with pytest.raises(asyncsp.FtpError, match="closed"):
                await ftp.pwd()  # nothing more is sent on a session the server ended
        assert sp.current_connections == 0  # closed, not pooled
        async with mgr.ftp(LOCAL, server.port, security="none", timeout=10) as ftp:
            assert await ftp.pwd() == "/"  # the next borrower gets a session of its own
        assert sp.stats.connections_opened == 2
    first_session = server.peers[0].lines
    assert first_session[-1] == b"DELE f"  # no PWD and no QUIT after the 421


# -- replies nobody asked for -----------------------------------------------------------------


async def test_a_command_answered_twice_never_answers_the_next() -> None:
    # RFC 959 pairs replies with commands only by order: a second answer to DELE a would be
    # taken for the answer to DELE b, and a refused delete would report success.
    async def script(peer: Peer) -> None:
        await anonymous_greeting(peer)
        while line := (await peer.line()).rstrip(b"\r\n"):
            if line == b"DELE a":
                await peer.send(b"250 deleted\r\n250 deleted\r\n")
            elif line == b"DELE b":
                await peer.send(b"550 permission denied\r\n")
            else:
                await peer.send(b"221 bye\r\n" if line.startswith(b"QUIT") else b"200 ok\r\n")

    async with scripted(script) as (server, port), ConnectionManager() as mgr:
        sp = mgr.find_service_point(f"ftp://{LOCAL}:{port}")
        async with mgr.ftp(LOCAL, port, security="none", timeout=10) as ftp:
            with pytest.raises(FtpProtocolError, match="nobody asked for") as caught:
                await ftp.delete("a")
                await ftp.delete("b")
            assert caught.value.endpoint == f"ftp://{LOCAL}:{port}"
        assert sp.current_connections == 0  # closed, not pooled
        await server.sockets.wait_closed(10)  # every line the client sent has been read
    assert b"DELE b" not in server.received


@pytest.mark.parametrize(
    ("stray", "error", "match"),
    [
        (b"250 stray\r\n", FtpProtocolError, "nobody asked for"),
        (b"250-stray\r\n", FtpProtocolError, "nobody asked for"),  # not even complete
        (b"421 Timeout.\r\n", FtpReplyError, "421"),  # the server ends an idle session
    ],
)
async def test_a_reply_before_a_command_is_refused(
    stray: bytes, error: type[Exception], match: str
) -> None:
    answered = asyncio.Event()

    async def script(peer: Peer) -> None:
        await anonymous_greeting(peer)
        await peer.line()  # PWD
        await peer.send(b'257 "/"\r\n')
        await answered.wait()
        await peer.send(stray)  # after the answer was read, before anything else is asked

    async with scripted(script) as (server, port), ConnectionManager() as mgr:
        sp = mgr.find_service_point(f"ftp://{LOCAL}:{port}")
        async with mgr.ftp(LOCAL, port, security="none", timeout=5) as ftp:
            assert await ftp.pwd() == "/"
            answered.set()
            session = ftp._session
            assert session is not None
            await wait_until(lambda: session.stream.buffered > 0)  # the stray reply is here
            with pytest.raises(error, match=match):
                await ftp.delete("b")
        assert sp.current_connections == 0
        await server.sockets.wait_closed(10)  # every line the client sent has been read
    assert b"DELE b" not in server.received


async def anonymous_greeting(peer: Peer) -> None:
    """Greet and log in an anonymous client without TLS (no FEAT)."""
    await peer.send(b"220 ready\r\n")
    for answer in (b"331 any password\r\n", b"230 in\r\n", b"200 binary\r\n", b"502 no\r\n"):
        await peer.line()
        await peer.send(answer)


# -- passive replies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epsv", "pasv", "match"),
    [
        (b"229 Entering Extended Passive Mode (|||0|)\r\n", None, "port 0"),
        (b"229 Entering Extended Passive Mode\r\n", None, "EPSV"),
        (b"502 no EPSV\r\n", b"227 Entering Passive Mode (127,0,0,1,300,1)\r\n", "above 255"),
        (b"502 no EPSV\r\n", b"227 Entering Passive Mode\r\n", "PASV"),
    ],
)
async def test_a_malformed_passive_reply_names_the_server_and_what_to_do(
    epsv: bytes, pasv: bytes | None, match: str
) -> None:
    async def script(peer: Peer) -> None:
        await anonymous_greeting(peer)
        await peer.line()
        await peer.send(epsv)
        if pasv is not None:
            await peer.line()
            await peer.send(pasv)

    async with scripted(script) as (server, port), ConnectionManager() as mgr:
        endpoint = f"ftp://{LOCAL}:{port}"
        with pytest.raises(FtpProtocolError, match=match) as caught:
            async with mgr.ftp(LOCAL, port, security="none", timeout=5) as ftp:
                await ftp.retrieve("f")
        assert caught.value.endpoint == endpoint
        message = str(caught.value)
        assert message.startswith(f"{endpoint}: ") and "operator" in message
        assert mgr.find_service_point(endpoint).current_connections == 0
    assert not any(line.startswith(b"RETR") for line in server.received)
