"""One aiohttp connector and session per policy snapshot, and the sockets it opens.

A `Connector` is made from one policy snapshot (its ``SSLContext``) and one set of limits; its
sockets come from our factory, so each is counted (a `SocketTicket`, in `_http_sockets`) from
creation until it is closed, and each connection is recorded on its first response
(`ConnectionState`: its age, its TLS facts), before aiohttp may release it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import time
import weakref
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.client_proto import ResponseHandler

from ._events import ConnectionClosed, ConnectionOpened
from ._http_pool_connector import PoolConnector, TunnelPoolConnector
from ._http_sockets import CLAIM, CountingHandler, NagleSocket, SocketTicket, TrackedSocket
from ._http_tunnel import Tunnel
from ._sockets import reset_on_close
from ._tls import ConnectAttempt, TlsInfo, established_info

if TYPE_CHECKING:
    import ssl

    from ._http_pool import HttpEndpoint
    from ._policy import TlsPolicy
    from ._servicepoint import ServicePoint

__all__ = ["ConnectionState", "Connector", "TrackedResponse"]

HTTP_LOG = logging.getLogger("asyncsp.http")
PROXY_LOG = logging.getLogger("asyncsp.proxy")

LEASE_JITTER = 0.1
"""Up to this fraction of the lease timeout is added per connection, so a fleet of clients
does not reconnect in lock-step."""


class ConnectionState:
    """What we learn about one connection the first time a response arrives on it."""

    __slots__ = ("jitter", "opened_at", "response", "ssl_object", "ticket", "tls", "tls_object")

    def __init__(
        self,
        opened_at: float,
        tls: TlsInfo | None,
        ticket: SocketTicket | None,
        tls_object: ssl.SSLObject | None,
        *,
        remember: bool,
    ) -> None:
        self.opened_at = opened_at
        self.tls = tls
        self.ticket = ticket
        self.tls_object = tls_object  # asks, at a close-delimited body's end, for close_notify
        self.ssl_object = tls_object if remember else None  # until its session is remembered
        self.jitter = 0.0  # drawn when a lease first applies to it
        # The latest response on it (weak: no cycle with the response, which holds this).
        self.response: weakref.ref[TrackedResponse] | None = None


class TrackedResponse(aiohttp.ClientResponse):
    """aiohttp's response, noting the connection before aiohttp may release it.

    aiohttp releases the connection inside `start` when the body is empty, and a released
    response no longer knows its connection (nor its TLS facts); so they are read here first.
    Subclassed once per `Connector` (``response_class`` is a public ClientSession option).
    """

    asyncsp_connector: Connector
    asyncsp_protocol: ResponseHandler | None = None
    asyncsp_state: ConnectionState | None = None

    def start(  # a plain def returning the awaitable saves a coroutine frame per request
        self, connection: aiohttp.connector.Connection
    ) -> Coroutine[Any, Any, aiohttp.ClientResponse]:
        owner = self.asyncsp_connector
        protocol = connection.protocol
        if protocol is None:
            return super().start(connection)
        state = owner.states.get(protocol)
        if state is None:
            state = owner.first_use(protocol, connection)
        self.asyncsp_protocol, self.asyncsp_state = protocol, state
        state.response = weakref.ref(self)
        if owner.retired or (owner.endpoint.lease is not None and owner.must_close(state)):
            protocol.force_close()  # closed when this response releases it, never pooled
        return super().start(connection)


class Connector:
    """One aiohttp connector and session, made from one policy snapshot and one set of limits."""

    def __init__(
        self, endpoint: HttpEndpoint, policy: TlsPolicy, context: ssl.SSLContext | None
    ) -> None:
        sp = endpoint.sp
        self.endpoint = endpoint
        self.policy = policy
        self.context = context
        self.limit = sp.connection_limit
        self.max_idle_time = sp.max_idle_time
        self.dns_refresh_timeout = sp.dns_refresh_timeout
        self.happy_eyeballs_delay = sp.happy_eyeballs_delay
        self.interleave = sp.interleave
        self.retired = False
        self.closing = False
        # Trace hooks run (and may wait) before aiohttp's pool lookup: see `PoolConnector._get`.
        self.traced = bool(endpoint.layer.manager.trace_configs)
        self.in_flight = 0
        self.open_sockets = 0
        # What we know of each connection, dropped when its socket closes.
        self.states: dict[ResponseHandler, ConnectionState] = {}
        self._tickets: dict[int, SocketTicket] = {}
        # The manager's close waits for these sockets to be gone (see `_end_closes`).
        self._closing_sockets: set[SocketTicket] = set()
        self._closing_gone: asyncio.Future[None] | None = None
        self._socket_options = endpoint.layer.manager.socket_options
        self.attempt = self._new_attempt()
        dns = self.dns_refresh_timeout
        route = endpoint.route
        # HTTPS through a proxy: our own CONNECT tunnel (asyncsp._http_tunnel says why).
        tunnel = route is not None and context is not None
        connector_class = TunnelPoolConnector if tunnel else PoolConnector
        self.aiohttp_connector = connector_class(
            self,
            ssl=context if context is not None else False,
            limit=self.limit,
            # One endpoint per connector, already bounded by the gate: a per-host count in
            # aiohttp would only repeat the total's bookkeeping on every connection.
            limit_per_host=0,
            keepalive_timeout=self.max_idle_time,
            use_dns_cache=dns > 0,
            ttl_dns_cache=max(1, math.ceil(dns)),
            # Every attempt's socket comes from our factory, so each is counted while it
            # exists; the attempts that lose are closed as soon as one connects.
            happy_eyeballs_delay=self.happy_eyeballs_delay,
            interleave=self.interleave,
            socket_factory=self._make_socket,
        )
        proxied: dict[str, Any] = {}
        if tunnel:
            assert route is not None and context is not None
            assert isinstance(self.aiohttp_connector, TunnelPoolConnector)
            self.aiohttp_connector.asyncsp_tunnel = Tunnel(
                route=route,
                endpoint=endpoint.sp.address,
                context=context,
                make_socket=self._make_socket,
                dns_refresh_timeout=dns,
                happy_eyeballs_delay=self.happy_eyeballs_delay,
                interleave=self.interleave,
            )
        elif route is not None:
            # Plain HTTP through a proxy: aiohttp sends absolute-form requests to it (RFC 9112
            # §3.2.2); the credentials travel in a header, never in a URL aiohttp could quote.
            proxied["proxy"] = route.url
            if route.authorization is not None:
                proxied["headers"] = {"Proxy-Authorization": route.authorization}
        response_class = type("TrackedResponse", (TrackedResponse,), {"asyncsp_connector": self})
        self.session = aiohttp.ClientSession(
            connector=self.aiohttp_connector,
            connector_owner=True,
            # No cookie store: a service point is shared by unrelated callers, and cookies
            # would silently follow one caller's requests into another's.
            cookie_jar=aiohttp.DummyCookieJar(),
            response_class=response_class,
            trust_env=False,
            trace_configs=list(endpoint.layer.manager.trace_configs) or None,
            **proxied,
        )
        # We retry stale pooled connections ourselves (asyncsp._http._may_retry): aiohttp's own
        # retry would reconnect through a connector the manager is closing. aiohttp's test
        # client turns it off the same way; the attribute exists in the pinned 3.12-3.14.
        self.session._retry_connection = False

    def matches(self, sp: ServicePoint, policy: TlsPolicy) -> bool:
        """Whether requests may still use this connector under the service point's settings."""
        return (
            (self.context is None or self.policy is policy or self.policy == policy)
            and self.limit == sp.connection_limit
            and self.max_idle_time == sp.max_idle_time
            and self.dns_refresh_timeout == sp.dns_refresh_timeout
            and self.happy_eyeballs_delay == sp.happy_eyeballs_delay
            and self.interleave == sp.interleave
        )

    # -- sockets ---------------------------------------------------------------------------

    def _make_socket(self, addr_info: Any) -> socket.socket:
        # Protocol 0 (TCP is implied), as the manager's streams do: asyncio forces TCP_NODELAY
        # on sockets that name IPPROTO_TCP, which would override tcp_nodelay=False.
        options = self._socket_options
        sock = options.create_socket(
            addr_info[0], socket_class=TrackedSocket if options.tcp_nodelay else NagleSocket
        )
        assert isinstance(sock, TrackedSocket)
        ticket = SocketTicket(self, sock)
        sock.ticket = ticket
        self._tickets[ticket.fd] = ticket
        self.open_sockets += 1
        self.endpoint.sp.socket_opened()
        claim = CLAIM.get()
        if claim is not None:
            claim.opened(ticket)  # aiohttp connects in the request's own task
        return sock

    def socket_gone(self, ticket: SocketTicket) -> None:
        """Account for one of this connector's sockets closing (its ticket calls this once)."""
        if ticket.reported:
            self._report_closed(ticket)
        if self._tickets.get(ticket.fd) is ticket:
            del self._tickets[ticket.fd]
        if ticket.protocol is not None:
            self.states.pop(ticket.protocol, None)
            ticket.protocol = None
        self.open_sockets -= 1
        self.endpoint.socket_closed(ticket)
        if self._closing_sockets:
            self._closing_sockets.discard(ticket)
            gone = self._closing_gone
            if not self._closing_sockets and gone is not None and not gone.done():
                gone.set_result(None)

    # -- what operators see ----------------------------------------------------------------

    def connected(self, protocol: ResponseHandler) -> None:
        """Report the connection aiohttp just made (after its TLS handshake, if any): a
        `ConnectionOpened` event, and the proxy it goes through in the asyncsp.proxy log."""
        transport = protocol.transport
        if transport is None:
            return
        # The request's claim knows the socket it opened (`_make_socket`), unless it raced
        # several; else the socket's descriptor finds its ticket.
        claim = CLAIM.get()
        ticket = claim.sole_socket() if claim is not None else None
        if ticket is None or ticket.connector is not self:
            raw = transport.get_extra_info("socket")
            ticket = self._tickets.get(raw.fileno()) if raw is not None else None
            if ticket is None:
                return
        ticket.reported = True
        if isinstance(protocol, CountingHandler):
            protocol.asyncsp_ticket = ticket  # for `first_use`
        sp = self.endpoint.sp
        route = self.endpoint.route
        if route is not None and PROXY_LOG.isEnabledFor(logging.DEBUG):
            how = "a CONNECT tunnel" if self.context is not None else "absolute-form requests"
            PROXY_LOG.debug("%s: through the proxy %s (%s)", sp.address, route.url, how)
        tracer = sp.manager.tracer
        if not tracer.wants(HTTP_LOG):
            return
        peername = transport.get_extra_info("peername")
        peer = (peername[0], peername[1]) if peername else None
        tracer.emit(
            ConnectionOpened(endpoint=sp.address, peer=peer),
            HTTP_LOG,
            f"connection opened to {peer}",
        )

    def _report_closed(self, ticket: SocketTicket) -> None:
        sp = self.endpoint.sp
        tracer = sp.manager.tracer
        if not tracer.wants(HTTP_LOG):
            return
        if sp.manager.closed:
            reason = "closed by the manager"
        elif ticket.orphan:
            reason = "closed while idle"  # expired, past its lease, policy changed, sp.close()
        elif self.retired:
            reason = "closed after a change of policy or settings"
        else:
            reason = "closed"  # by aiohttp: the peer's close, "Connection: close", an error
        tracer.emit(
            ConnectionClosed(endpoint=sp.address, reason=reason), HTTP_LOG, f"connection {reason}"
        )

    # -- connections -----------------------------------------------------------------------

    def first_use(
        self, protocol: ResponseHandler, connection: aiohttp.connector.Connection
    ) -> ConnectionState:
        """Record a connection on its first response: its socket, its age, its TLS facts."""
        transport = connection.transport
        ticket = None
        ssl_object = None
        if transport is not None:
            ticket = getattr(protocol, "asyncsp_ticket", None)  # set by `connected`
            if ticket is None or ticket.done:
                raw = transport.get_extra_info("socket")
                ticket = self._tickets.get(raw.fileno()) if raw is not None else None
            if self.context is not None:
                ssl_object = transport.get_extra_info("ssl_object")
        tls = established_info(ssl_object) if ssl_object is not None else None
        state = ConnectionState(
            ticket.opened_at if ticket is not None else time.monotonic(),
            tls,
            ticket,
            ssl_object,
            remember=self.policy.resume_sessions,
        )
        self.states[protocol] = state
        if ticket is not None:
            ticket.protocol = protocol
        self.endpoint.sp.stats.connections_opened += 1
        return state

    def must_close(self, state: ConnectionState) -> bool:
        """Whether the connection must be closed after its current request."""
        if self.retired:
            return True
        lease = self.endpoint.sp.connection_lease_timeout
        if lease is None:
            return False
        if not state.jitter:
            # Early, never late: a fleet spreads its reconnects over the last tenth of the
            # lease, and no connection older than the lease is ever reused.
            state.jitter = 1.0 - random.uniform(0.0, LEASE_JITTER)
        return time.monotonic() - state.opened_at >= lease * state.jitter

    def remember_session(self, state: ConnectionState) -> None:
        """Keep the connection's TLS session for the next new connection (once per connection).

        Call it once the first response has arrived: a TLS 1.3 ticket comes after the handshake.
        """
        ssl_object, state.ssl_object = state.ssl_object, None
        sp = self.endpoint.sp
        if sp.dialer.remember_session(ssl_object, self.policy):
            self.attempt = self._new_attempt()  # the cache may offer another session now

    def _new_attempt(self) -> ConnectAttempt:
        return self.endpoint.sp.dialer.attempt(self.policy, self.endpoint.sp.host, self.context)

    def _idle(self) -> list[tuple[ResponseHandler, float]]:
        """Each idle connection and when it was pooled (``time.monotonic``), oldest first."""
        # aiohttp has no public way to close only its idle connections; its pool is a dict of
        # deques of (protocol, released_at) in 3.12-3.14 (pinned in pyproject, tested).
        pool = getattr(self.aiohttp_connector, "_conns", None)
        if not isinstance(pool, dict):
            return []
        return [entry for entries in pool.values() for entry in entries]

    def close_idle(self, *, only_expired: bool = False, count: int | None = None) -> None:
        """Close idle connections now: those past their lease only, if asked; at most the
        *count* oldest, if given."""
        if count is not None and count <= 0:
            return
        for protocol, _ in self._idle():  # oldest first, the order aiohttp reuses them
            if not protocol.is_connected():
                continue
            state = self.states.get(protocol)
            if only_expired and (state is None or not self.must_close(state)):
                continue
            if count is not None:
                if count == 0:
                    return
                count -= 1
            self._close_orphan(protocol)

    def idle_open(self) -> list[ResponseHandler]:
        """The idle connections still open: taken before aiohttp's keep-alive expiry runs,
        for `count_expired` after it."""
        return [protocol for protocol, _ in self._idle() if protocol.is_connected()]

    def count_expired(self, idle: list[ResponseHandler]) -> None:
        """Of *idle* (`idle_open` just before aiohttp's keep-alive expiry), count those it
        closed as orphans, and let them go at once (see `_close_orphan`).

        Comparing before and after, rather than predicting what aiohttp will expire, is exact:
        its expiry reads its own clock, and nothing runs in between.
        """
        for protocol in idle:
            if not protocol.is_connected():
                self._close_orphan(protocol)

    def _close_orphan(self, protocol: ResponseHandler) -> None:
        """Close an idle connection (if aiohttp has not); the gate counts its socket (an
        orphan) until it is gone.

        Under TLS our close_notify goes out at once, and then the socket is shut down: asyncio
        would otherwise wait up to 30 s for the peer's close_notify (which RFC 8446 §6.1 does
        not require us to await), and the requests waiting for room with it.
        """
        state = self.states.get(protocol)
        ticket = state.ticket if state is not None else None
        protocol.close()
        if ticket is None or ticket.done:
            return
        if not ticket.orphan:
            ticket.orphan = True
            self.endpoint.orphans += 1
        sock = ticket.socket() if self.context is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def retire(self) -> None:
        """No new requests: idle connections close now, the rest after their last request."""
        self.retired = True
        self.close_idle()
        if self.in_flight == 0:
            self.close()

    def close(self, *, interrupt: bool = False) -> None:
        """Close the session and every connection (TLS ones aborted, as aiohttp does).

        *interrupt* (the manager's close) also cuts off the connections in use: each ends with
        a TCP reset, a body still being read fails now (aiohttp would leave the read waiting
        for its timeout), and a socket still connecting or in its TLS handshake is woken (aiohttp
        would let it run to its timeout). Idle connections close cleanly, with a FIN.
        """
        manager = self.endpoint.layer.manager
        if not self.closing:  # else the session is closing its pool: nothing idle is known
            if interrupt:
                self._interrupt()
            self.closing = True
            manager.spawn(self.session.close())
        if interrupt and self.context is not None:
            manager.spawn(self._end_closes())  # after the session's close has begun

    async def _end_closes(self) -> None:
        """End the TLS closes still waiting for the peer's close_notify, and wait until their
        sockets are gone: the manager's close returns with every socket closed.

        asyncio waits up to 30 s for the peer's close_notify (RFC 8446 §6.1 lets a closing
        side skip that wait), so a peer that neither answers nor closes its end would keep the
        socket open that long. Shutting down the receiving side ends the wait (as if the peer
        had closed) and sends nothing, so the connection still ends with a FIN, or a reset
        where `_interrupt` asked for one.
        """
        for ticket in list(self._tickets.values()):
            protocol = ticket.protocol
            sock = ticket.socket()
            if protocol is None or protocol.is_connected() or sock is None:
                continue  # not yet answered (`_interrupt` woke it), or still open
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)
            self._closing_sockets.add(ticket)
        if not self._closing_sockets:
            return
        gone = self._closing_gone
        if gone is None or gone.done():  # the manager's close may call this twice
            gone = self._closing_gone = asyncio.get_running_loop().create_future()
        await gone

    def _interrupt(self) -> None:
        idle = {protocol for protocol, _ in self._idle()}
        for ticket in list(self._tickets.values()):
            protocol = ticket.protocol
            sock = ticket.socket()
            if sock is None or (protocol is not None and protocol in idle):
                continue
            reset_on_close(sock)
            if protocol is None:
                # No response yet: maybe still connecting or in the handshake. Shutting down
                # the receiving side wakes those and sends nothing (SHUT_WR would send a FIN).
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RD)
                continue
            state = self.states.get(protocol)
            response = state.response() if state is not None and state.response else None
            if response is None or response.connection is None:
                continue  # between responses: aiohttp's close fails a request waiting for one
            # aiohttp's close drops the body's reader from the connection before the socket
            # closes, so a read in progress would wait for its timeout: fail it now.
            body: aiohttp.StreamReader | None = response.content  # None until the head arrived
            if body is not None and not body.is_eof():
                body.set_exception(
                    aiohttp.ClientConnectionError("the connection manager was closed")
                )
