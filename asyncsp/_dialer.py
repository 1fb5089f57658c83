"""`Dialer`: how one service point's connections are made, upgraded and verified.

Each `ServicePoint` has one. It owns what making a connection needs and nothing else: the
endpoint's resolved addresses (`AddressCache`), its TLS sessions (`SessionCache`) and the
tasks connecting right now, which a manager close interrupts. The service point keeps the
limits, the pool and the shutdown; the dialer reads the endpoint and socket options from it,
records statistics and the peer's certificate there, and registers every stream it opens
with it (its active set and close callbacks).

It is one code path for every protocol, so that a policy means the same thing everywhere:
the same `ConnectAttempt` offers a cached session, counts the handshake and records the
peer's certificate, and the same errors come out of a failed connect or handshake.

- Raw streams and SMTP and FTP control connections come from `ServicePoint.obtain`
  (`open`, plain or with implicit TLS); ``STARTTLS`` and ``AUTH TLS`` upgrade them in place
  (`Stream.start_tls` -> `upgrade`). A stream's session is remembered when it closes
  (`remember_stream_session`).
- FTP data channels come from `ServicePoint.open_side_stream` (`open` with the control
  connection's session, which they must resume).
- HTTP, direct or through a ``CONNECT`` tunnel, lets aiohttp open the sockets; its connector
  runs every handshake under an `attempt` from here and calls `remember_session` after the
  first response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ._contexts import context_for_async
from ._endpoint import normalise_host
from ._errors import AsyncspError, ConnectError, ManagerClosedError, UnexpectedPlaintextError
from ._events import ConnectionOpened, HandshakeFailed, HandshakeFinished
from ._policy import TlsPolicy
from ._resolve import AddressCache, connect_socket, peer_address
from ._sessions import SessionCache
from ._stream_buffer import StreamProtocol
from ._streams import Stream
from ._tls import CURRENT_ATTEMPT, ConnectAttempt, TlsInfo, connect_attempt
from ._translate import raise_connect_error

if TYPE_CHECKING:
    from ._servicepoint import ServicePoint

__all__ = ["Dialer"]

TLS_LOG = logging.getLogger("asyncsp.tls")
POOL_LOG = logging.getLogger("asyncsp.pool")


class Dialer:
    """Opens the connections of one `ServicePoint`, runs their handshakes, resumes sessions."""

    def __init__(self, service_point: ServicePoint) -> None:
        endpoint = service_point.endpoint
        self._sp = service_point
        self.addresses = AddressCache(
            endpoint.host,
            endpoint.port,
            service_point.dns_refresh_timeout,
            endpoint=endpoint.address,
        )
        """The endpoint's resolved addresses, reused for the DNS refresh time."""
        self._session_cache: SessionCache | None = None  # made at the first TLS use
        self._connecting: set[asyncio.Task[Any]] = set()  # tasks in connect or handshake
        # ...that a manager close cancelled (``None`` until one did: no set kept).
        self._interrupted: set[asyncio.Task[Any]] | None = None
        self._settled: asyncio.Future[None] | None = None  # set when none is connecting

    def interrupt(self) -> None:
        """Cut every connect and handshake in progress short with `ManagerClosedError`."""
        if not self._connecting:
            return
        if self._interrupted is None:
            self._interrupted = set()
        for task in self._connecting:
            self._interrupted.add(task)
            task.cancel()

    async def settled(self) -> None:
        """Return once no connect or handshake is in progress (each has closed its socket).

        A manager close waits for this after `interrupt`, so that no socket of an interrupted
        connect outlives it.
        """
        if not self._connecting:
            return
        if self._settled is None:
            self._settled = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._settled)

    async def open(
        self,
        *,
        policy: TlsPolicy,
        tls: bool,
        server_hostname: str | None,
        timeout: float | None,
        line_limit: int,
        peer: tuple[str, int] | None = None,
        session: ssl.SSLSession | None = None,
    ) -> Stream:
        """A new `Stream`: connected, and with *tls* handshaken and verified under *policy*.

        *peer* (an IP address and port) makes it a side stream that takes no slot; *session*
        is then offered even when the policy does not resume sessions. *timeout* bounds the
        connect and the handshake, each; a manager close cuts either short with
        `ManagerClosedError` (without it a peer that never answers would hold the caller until
        its own timeout).
        """
        task = asyncio.current_task()
        assert task is not None
        self._connecting.add(task)
        try:
            sp = self._sp
            loop = asyncio.get_running_loop()
            hostname = normalise_host(server_hostname) if server_hostname else sp.host
            context = await context_for_async(policy) if tls else None
            sock: socket.socket | None = None
            try:
                # One timeout for both steps, re-armed when the handshake starts: each step has
                # the whole *timeout*, without a second timeout object and context.
                async with asyncio.timeout(timeout) as deadline:
                    sock = await self._connect_socket(peer)
                    sp.stats.connections_opened += 1
                    if sp.manager.tracer.wants(POOL_LOG):
                        self._report_opened(sock)
                    protocol = StreamProtocol(high_water=max(2 * line_limit, 256 * 1024))
                    if timeout is not None and context is not None:
                        deadline.reschedule(loop.time() + timeout)  # the handshake's own
                    if context is None:  # plain TCP: no handshake for an attempt to report
                        transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
                    else:
                        token = CURRENT_ATTEMPT.set(
                            self.attempt(policy, hostname, context, session)
                        )
                        try:
                            transport, _ = await loop.create_connection(
                                lambda: protocol,
                                sock=sock,
                                ssl=context,
                                server_hostname=hostname,
                                ssl_handshake_timeout=_backstop(timeout),
                            )
                        finally:
                            CURRENT_ATTEMPT.reset(token)
            except BaseException as exc:
                if sock is None:  # the connect failed
                    if isinstance(exc, OSError):  # builtins.TimeoutError included
                        raise_connect_error(exc, sp.address, during_tls=False, timeout=timeout)
                    raise
                sock.close()
                if isinstance(exc, Exception):
                    with self._reporting_refusal(policy):
                        raise_connect_error(
                            exc, sp.address, during_tls=True, timeout=timeout, policy=policy
                        )
                raise
            stream = Stream(
                service_point=sp,
                transport=transport,
                protocol=protocol,
                policy=policy,
                timeout=timeout,
                server_hostname=hostname,
                on_close=sp.stream_closed if peer is None else sp.side_stream_closed,
                line_limit=line_limit,
            )
            sp.stream_opened(stream)
            return stream
        except asyncio.CancelledError:
            if self._interrupted and task in self._interrupted:
                self._interrupted.discard(task)
                if task.uncancel() == 0:  # ours was the only cancellation
                    raise ManagerClosedError(
                        f"the connection manager was closed while connecting to {self._sp.address}",
                        endpoint=self._sp.address,
                    ) from None
            raise
        finally:
            self._connecting.discard(task)
            if self._interrupted:
                self._interrupted.discard(task)
            if not self._connecting and self._settled is not None:
                self._settled.set_result(None)
                self._settled = None

    async def _connect_socket(self, peer: tuple[str, int] | None) -> socket.socket:
        sp = self._sp
        if peer is not None:
            addresses = peer_address(peer)
        else:  # an IP literal or a fresh cache needs no coroutine of its own
            addresses = self.addresses.known() or await self.addresses.addresses()
        try:
            return await connect_socket(
                addresses,
                sp.manager.socket_options.create_socket,
                delay=sp.happy_eyeballs_delay,
                interleave=sp.interleave,
            )
        except OSError:
            if peer is None:
                self.addresses.invalidate()  # the addresses may have moved: resolve again
            raise

    async def upgrade(
        self,
        stream: Stream,
        server_hostname: str,
        transport: asyncio.Transport,
        protocol: asyncio.Protocol,
    ) -> asyncio.Transport:
        """STARTTLS: run a handshake on *stream*'s *transport* (its *protocol* reading) under
        the stream's policy snapshot; return the TLS transport that replaces it.
        *server_hostname* is normalised (`normalise_host`)."""
        address = self._sp.address
        loop = asyncio.get_running_loop()
        context = await context_for_async(stream.policy)
        # RFC 3207 §4.2: whatever arrived in clear after the peer's go-ahead is an injection.
        # Checked after the last await before the handshake, so no byte can slip in between.
        if stream.buffered:
            count = stream.buffered
            stream.abort()
            raise UnexpectedPlaintextError(
                f"{address} sent {count} unexpected byte(s) before the TLS handshake "
                "(possible injection); the connection was closed",
                endpoint=address,
            )
        try:
            with connect_attempt(self.attempt(stream.policy, server_hostname, context)):
                upgraded = await loop.start_tls(
                    transport,
                    protocol,
                    context,
                    server_hostname=server_hostname,
                    ssl_handshake_timeout=_backstop(stream.timeout),
                )
        except BaseException as exc:
            stream.abort()
            if stream.closed_by_manager:
                raise ManagerClosedError(
                    f"the connection manager was closed during the TLS handshake with {address}",
                    endpoint=address,
                ) from exc
            if isinstance(exc, Exception):
                with self._reporting_refusal(stream.policy):
                    raise_connect_error(
                        exc, address, during_tls=True, timeout=stream.timeout, policy=stream.policy
                    )
            raise
        if upgraded is None:  # pragma: no cover - start_tls returns None only when closing
            stream.abort()
            raise ConnectError(f"{address} closed the connection during STARTTLS")
        return upgraded

    def attempt(
        self,
        policy: TlsPolicy,
        hostname: str,
        context: ssl.SSLContext | None,
        session: ssl.SSLSession | None = None,
    ) -> ConnectAttempt:
        """What a handshake with *hostname* offers (*session*, or a cached one) and reports to.

        An explicit *session* is offered even when the policy does not resume sessions (an
        FTP data channel must resume its control connection's); without one the cache offers
        a session when the policy resumes.
        """
        offered = session
        if offered is None and context is not None and policy.resume_sessions:
            offered = self._sessions().offer(policy, hostname, context)
        return ConnectAttempt(
            endpoint=self._sp.address,
            session=offered,
            session_hostname=hostname,
            session_required=session is not None,
            on_established=self._on_established,
        )

    def _sessions(self) -> SessionCache:
        cache = self._session_cache
        if cache is None:
            cache = self._session_cache = SessionCache()
        return cache

    def _report_opened(self, sock: socket.socket) -> None:
        try:
            peer: tuple[str, int] | None = sock.getpeername()[:2]
        except OSError:
            peer = None
        event = ConnectionOpened(endpoint=self._sp.address, peer=peer)
        self._sp.manager.tracer.emit(event, POOL_LOG, f"connection opened to {peer}")

    @contextlib.contextmanager
    def _reporting_refusal(self, policy: TlsPolicy) -> Iterator[None]:
        """Report the asyncsp error raised inside as a refused handshake, and let it go on."""
        try:
            yield
        except AsyncspError as error:
            event = HandshakeFailed(endpoint=self._sp.address, error=error, policy=policy)
            self._sp.manager.tracer.emit(event, TLS_LOG, f"TLS refused under {policy!r}: {error}")
            raise

    def _on_established(self, ssl_object: ssl.SSLObject, info: TlsInfo, der: bytes | None) -> None:
        stats = self._sp.stats
        if info.session_reused:
            stats.session_resumptions += 1
        else:
            stats.tls_handshakes += 1
        stats.versions[info.version] = stats.versions.get(info.version, 0) + 1
        if der is not None:
            self._sp.certificate = der
        tracer = self._sp.manager.tracer
        if not tracer.wants(TLS_LOG):
            return  # no hook and no DEBUG log: no event to build
        policy = getattr(ssl_object.context, "policy", None)
        if isinstance(policy, TlsPolicy):
            event = HandshakeFinished(endpoint=self._sp.address, tls=info, policy=policy)
            # The message is for the DEBUG log only; a policy's repr costs more than the rest
            # of this bookkeeping, so it is built only when that log is on.
            message = (
                f"{info.version} {info.cipher}, "
                f"{'resumed' if info.session_reused else 'full handshake'}, under {policy!r}"
                if TLS_LOG.isEnabledFor(logging.DEBUG)
                else ""
            )
            tracer.emit(event, TLS_LOG, message)

    def remember_stream_session(self, stream: Stream) -> None:
        """Keep *stream*'s TLS session for the next connection under the same policy and name."""
        ssl_object = stream.get_extra_info("ssl_object")
        if ssl_object is None or not stream.policy.resume_sessions or stream.tls is None:
            return
        self.remember_session(ssl_object, stream.policy)

    def remember_session(self, ssl_object: Any, policy: TlsPolicy) -> bool:
        """Offer *ssl_object*'s session to later connections, when the cache needs it.

        The session is kept under the name its handshake verified (``server_hostname``),
        whichever name the connection was first opened with. Call it at most once per
        connection, after the first reply was read (a TLS 1.3 ticket arrives after the
        handshake). Returns whether the session was read (what the cache offers may have
        changed).
        """
        attempt = getattr(ssl_object, "asyncsp_attempt", None)
        offered = attempt is not None and attempt.session is not None
        return self._sessions().remember(ssl_object, policy, offered=offered)


def _backstop(timeout: float | None) -> float | None:
    """asyncio's own handshake limit, set past ours so ours fires first with a clear error."""
    return None if timeout is None else timeout + 5.0
