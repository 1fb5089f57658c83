"""HTTPS through an HTTP proxy: a ``CONNECT`` tunnel we open ourselves, then TLS to the origin.

aiohttp can tunnel too, but it reads the proxy's answer with its HTTP parser and lets bytes
the proxy sends after its ``200`` and before our ClientHello vanish into that answer's body,
so nothing notices them. Here the answer is read from a buffer we own (`StreamProtocol`); a
single byte left in it, or waiting in the socket, refuses the tunnel, before the handshake and
before any request byte. Then ``start_tls`` runs *our* context on the tunnel, with the
service point's `ConnectAttempt` in force: the version check, pins, validator and session
cache are those of the origin, exactly as on a direct connection.

aiohttp gets the result through the hook its own Unix-socket and named-pipe connectors
override (``_create_connection``, present in every aiohttp that pyproject allows): the
tunnelled connection is an ordinary ``ResponseHandler`` it pools and reuses.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.client_proto import ResponseHandler

from ._errors import AsyncspError, ProxyError, TimeoutError
from ._http_sockets import CountingHandler
from ._proxy import (
    MAX_CONNECT_REPLY,
    ConnectReply,
    ProxyRoute,
    connect_request,
    parse_connect_reply,
)
from ._resolve import HAPPY_EYEBALLS_DELAY, Address, AddressCache, connect_socket
from ._sockets import reset_on_close
from ._stream_buffer import StreamProtocol
from ._translate import raise_connect_error

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest

__all__ = ["Tunnel", "TunnelConnector", "TunnelFailed"]

_END_OF_HEAD = b"\r\n\r\n"
_HANDSHAKE_BACKSTOP = 5.0
"""Seconds asyncio's own handshake limit sits past ours, so ours fires first and names the step."""

SocketFactory = Callable[[Any], socket.socket]
PROXY_LOG = logging.getLogger("asyncsp.proxy")


class Tunnel:
    """Opens CONNECT tunnels to one origin through one proxy, under one SSL context."""

    def __init__(
        self,
        *,
        route: ProxyRoute,
        endpoint: str,
        context: ssl.SSLContext,
        make_socket: SocketFactory,
        dns_refresh_timeout: float,
        happy_eyeballs_delay: float | None = HAPPY_EYEBALLS_DELAY,
        interleave: int | None = None,
    ) -> None:
        self.route = route
        self.endpoint = endpoint
        self.context = context
        self._make_socket = make_socket
        self._happy_eyeballs_delay = happy_eyeballs_delay
        self._interleave = interleave
        self._addresses = AddressCache(
            route.host, route.port, dns_refresh_timeout, endpoint=endpoint
        )

    async def open(self, host: str, port: int, step_timeout: float | None) -> ResponseHandler:
        """A TLS connection to *host*:*port* through the proxy, ready for aiohttp.

        *step_timeout* bounds the proxy connect, the CONNECT exchange and the handshake, each
        (aiohttp's ``sock_connect``); the request's total timeout bounds them all.
        """
        loop = asyncio.get_running_loop()
        sock = await self._connect(step_timeout)
        buffer = StreamProtocol(high_water=2 * MAX_CONNECT_REPLY)
        try:
            transport, _ = await loop.create_connection(lambda: buffer, sock=sock)
        except BaseException:
            sock.close()
            raise
        try:
            async with self._bounded(step_timeout, "did not answer CONNECT"):
                transport.write(connect_request(host, port, self.route.authorization))
                reply = await self._read_reply(buffer)
            if PROXY_LOG.isEnabledFor(logging.DEBUG):
                PROXY_LOG.debug(
                    "%s: CONNECT %s:%d through the proxy %s%s: %d %s",
                    self.endpoint,
                    host,
                    port,
                    self.route.url,
                    " with credentials" if self.route.authorization else "",
                    reply.status,
                    reply.reason,
                )
            handler = CountingHandler(loop=loop)
            async with self._bounded(step_timeout, "did not finish the TLS handshake", tls=True):
                # No await between this check and start_tls, which takes the transport over
                # before it first yields: nothing can slip in unseen. Bytes the proxy sends
                # later reach OpenSSL ahead of the ServerHello and fail the handshake.
                self._check(reply, buffer, sock)
                tls_transport = await loop.start_tls(
                    transport,
                    handler,
                    self.context,
                    server_hostname=host,
                    ssl_handshake_timeout=(
                        None if step_timeout is None else step_timeout + _HANDSHAKE_BACKSTOP
                    ),
                )
        except BaseException as exc:
            reset_on_close(sock)  # a tunnel cut off mid-setup: neither end may take it as whole
            transport.abort()
            if isinstance(exc, Exception) and not isinstance(exc, AsyncspError):
                # The handshake with the origin failed: the same errors as a direct connection
                # (a validator's exception stays the cause).
                raise_connect_error(exc, self.endpoint, during_tls=True)
            raise
        if tls_transport is None:  # pragma: no cover - only when the loop is closing
            reset_on_close(sock)
            transport.abort()
            raise self._error("closed the tunnel during the TLS handshake")
        handler.connection_made(tls_transport)  # start_tls leaves this to us, as in aiohttp
        return handler

    # -- the steps -------------------------------------------------------------------------

    async def _connect(self, step_timeout: float | None) -> socket.socket:
        """A connected socket to the proxy (from the connector's factory: counted, optioned)."""
        async with self._bounded(step_timeout, "did not accept the connection"):
            addresses = await self._resolve()
            try:
                return await connect_socket(
                    addresses,
                    self._new_socket,
                    delay=self._happy_eyeballs_delay,
                    interleave=self._interleave,
                )
            except OSError as exc:
                failure = exc
        self._addresses.invalidate()  # the proxy may have moved: resolve again next time
        raise ProxyError(
            f"{self.endpoint}: cannot connect to the proxy {self.route.url}: "
            f"{failure.strerror or failure}",
            endpoint=self.endpoint,
            proxy=self.route.url,
        ) from failure

    async def _resolve(self) -> list[Address]:
        try:
            return await self._addresses.resolve()
        except OSError as exc:
            raise ProxyError(
                f"{self.endpoint}: cannot resolve the proxy {self.route.url}: "
                f"{exc.strerror or exc}",
                endpoint=self.endpoint,
                proxy=self.route.url,
            ) from exc

    def _new_socket(self, family: int) -> socket.socket:
        """A socket of *family* from the connector's factory (which takes aiohttp's addrinfo)."""
        return self._make_socket((family, socket.SOCK_STREAM, 0, "", ()))

    async def _read_reply(self, buffer: StreamProtocol) -> ConnectReply:
        """Read the reply head; only the head is taken from the buffer."""
        searched = 0
        while True:
            end = buffer.find(_END_OF_HEAD, max(0, searched - len(_END_OF_HEAD) + 1))
            if end >= 0 or buffer.buffered > MAX_CONNECT_REPLY:
                if not 0 <= end <= MAX_CONNECT_REPLY:
                    raise self._error(
                        f"answered CONNECT with more than {MAX_CONNECT_REPLY} bytes of headers"
                    )
                break
            searched = buffer.buffered
            if buffer.eof:
                raise self._error("closed the connection before answering CONNECT")
            await buffer.wait_data()
        head = buffer.take(end + len(_END_OF_HEAD))
        try:
            return parse_connect_reply(head)
        except ValueError as exc:
            raise self._error(f"answered CONNECT with something other than HTTP ({exc})") from None

    def _check(self, reply: ConnectReply, buffer: StreamProtocol, sock: socket.socket) -> None:
        if not reply.established:
            hint = ""
            if reply.status in (401, 407):  # 407 is the standard; tinyproxy says 401 too
                hint = (
                    "; check the user and password in the proxy URL"
                    if self.route.authorization
                    else "; it wants credentials: give them in the proxy URL (http://user:pw@...)"
                )
            raise self._error(
                f"refused the tunnel: CONNECT answered {reply.status} {reply.reason}".rstrip()
                + hint,
                status=reply.status,
            )
        if buffer.buffered or _bytes_waiting(sock):
            # In TLS the client speaks first, and the origin has not seen our ClientHello yet:
            # these bytes come from the proxy (or from whoever sits in front of it).
            raise self._error(
                f"sent data after its {reply.status} to CONNECT and before the TLS handshake "
                f"({buffer.buffered or 'unread'} bytes); the tunnel was refused",
                status=reply.status,
            )

    # -- errors ----------------------------------------------------------------------------

    def _error(self, what: str, *, status: int | None = None) -> ProxyError:
        return ProxyError(
            f"{self.endpoint}: the proxy {self.route.url} {what}",
            endpoint=self.endpoint,
            proxy=self.route.url,
            status=status,
        )

    @contextlib.asynccontextmanager
    async def _bounded(
        self, limit: float | None, what: str, *, tls: bool = False
    ) -> AsyncIterator[None]:
        """Bound one step by *limit* (aiohttp's ``sock_connect``): a `TimeoutError` naming it."""
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                yield
        except builtins.TimeoutError as exc:
            if not deadline.expired():
                raise
            who = (
                f"{self.endpoint} (through the proxy {self.route.url})"
                if tls
                else f"the proxy {self.route.url}"
            )
            raise TimeoutError(
                f"{self.endpoint}: {who} {what} within {limit} s", endpoint=self.endpoint
            ) from exc


def _bytes_waiting(sock: socket.socket) -> bool:
    """Whether bytes wait in the socket's receive queue, read by nobody yet (peeked, not taken)."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing waiting (EAGAIN), or the connection is gone: the handshake tells
        return False


class TunnelFailed(aiohttp.ClientConnectionError):
    """Carries our verdict on a tunnel through aiohttp, which would turn it into its own error.

    Our errors are ``ConnectionError``s (so ``OSError``s), and aiohttp rewraps every
    ``OSError`` from a connect as a ``ClientOSError``, which also reads as a stale pooled
    connection worth a retry. Its own ``ClientError`` family passes through untouched; the
    error boundary (`asyncsp._http_errors`) unwraps ``error``.
    """

    def __init__(self, error: AsyncspError) -> None:
        super().__init__(str(error))
        self.error = error


class TunnelConnector(aiohttp.TCPConnector):
    """aiohttp's TCP connector whose new connections are CONNECT tunnels (see the module)."""

    asyncsp_tunnel: Tunnel

    async def _create_connection(
        self, req: ClientRequest, traces: list[Any], timeout: aiohttp.ClientTimeout
    ) -> ResponseHandler:
        host = req.url.raw_host
        port = req.port
        assert host is not None and port is not None
        try:
            # Certificates name hosts without the trailing dot of a fully qualified name.
            return await self.asyncsp_tunnel.open(host.rstrip("."), port, timeout.sock_connect)
        except AsyncspError as exc:
            raise TunnelFailed(exc) from None  # exc keeps its own cause
