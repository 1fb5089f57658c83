"""The HTTP pool of each service point: aiohttp connectors made from policy snapshots, a gate.

Layers, from the top: `HttpLayer` (one per manager: its endpoints, shutdown) -> `HttpEndpoint`
(one per service point: the request gate, the current and the retired connectors) ->
`Connector` (one aiohttp ``TCPConnector`` and ``ClientSession`` made from one policy snapshot
and one set of limits) -> the sockets it opens, each with a `_Ticket` that counts it.

Why a gate of our own: aiohttp counts connections per connector, but a policy change gives
the endpoint a second connector while requests still run on the first. The gate counts every
request in flight on either, plus the sockets that are still closing, against
``sp.connection_limit``; so the endpoint never sees more sockets than that at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import random
import socket
import time
import weakref
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp
from aiohttp.client_proto import ResponseHandler

from ._errors import ManagerClosedError
from ._tls import ConnectAttempt, TlsInfo, context_for_async, established_info

if TYPE_CHECKING:
    import ssl

    from yarl import URL

    from ._manager import ConnectionManager
    from ._policy import TlsPolicy
    from ._servicepoint import ServicePoint

__all__ = ["Connector", "HttpEndpoint", "HttpLayer"]

LEASE_JITTER = 0.1
"""Up to this fraction of the lease timeout is added per connection, so a fleet of clients
does not reconnect in lock-step."""

_LAYER_KEY = "http"
"""The key of our `HttpEndpoint` in ``ServicePoint.layer_state``."""


class _Ticket:
    """One socket a connector opened: counted from creation until it is closed or detached."""

    __slots__ = (
        "connector",
        "done",
        "fd",
        "held_slots",
        "opened_at",
        "orphan",
        "protocol",
        "socket",
    )

    def __init__(self, connector: Connector, sock: socket.socket) -> None:
        self.connector = connector
        self.protocol: ResponseHandler | None = None  # known from its first response on
        self.socket = weakref.ref(sock)
        self.fd = sock.fileno()
        self.opened_at = time.monotonic()
        self.done = False
        self.held_slots = 0  # gate slots of finished requests that wait for this close
        self.orphan = False  # closed by us while idle; counted by the gate until gone

    def closed(self) -> None:
        """The socket is gone (idempotent: close, detach and the GC backstop all land here)."""
        if self.done:
            return
        self.done = True
        self.connector._socket_gone(self)


class _TrackedSocket(socket.socket):
    """A socket that reports its close, so ``current_connections`` and the gate stay exact.

    It also keeps the manager's ``tcp_nodelay``: aiohttp turns TCP_NODELAY on for every
    connection it makes, which would silently undo ``tcp_nodelay=False``.
    """

    __slots__ = ("nodelay", "ticket")
    ticket: _Ticket | None
    nodelay: bool

    def setsockopt(self, level: int, option: int, value: Any, *args: Any) -> None:
        if level == socket.IPPROTO_TCP and option == socket.TCP_NODELAY and not args:
            value = int(self.nodelay)
        super().setsockopt(level, option, value, *args)

    def close(self) -> None:
        ticket, self.ticket = getattr(self, "ticket", None), None
        if ticket is not None:
            ticket.closed()
        super().close()

    def detach(self) -> int:
        ticket, self.ticket = getattr(self, "ticket", None), None
        if ticket is not None:
            ticket.closed()
        return super().detach()


class ConnectionState:
    """What we learn about one connection the first time a response arrives on it."""

    __slots__ = ("jitter", "opened_at", "ssl_object", "ticket", "tls")

    def __init__(
        self, opened_at: float, tls: TlsInfo | None, ticket: _Ticket | None, ssl_object: Any
    ) -> None:
        self.opened_at = opened_at
        self.tls = tls
        self.ticket = ticket
        self.ssl_object = ssl_object  # kept only until its session is remembered
        self.jitter = 1.0 + random.uniform(0.0, LEASE_JITTER)


class _TrackedResponse(aiohttp.ClientResponse):
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
        first = state is None
        if state is None:
            state = owner.first_use(protocol, connection)
        self.asyncsp_protocol, self.asyncsp_state = protocol, state
        if owner.retired or (
            owner.endpoint.sp.connection_lease_timeout is not None and owner.must_close(state)
        ):
            protocol.force_close()  # closed when this response releases it, never pooled
        if first and state.ssl_object is not None:
            return self._start_and_remember(connection, state)
        return super().start(connection)

    async def _start_and_remember(
        self, connection: aiohttp.connector.Connection, state: ConnectionState
    ) -> aiohttp.ClientResponse:
        response = await super().start(connection)
        # TLS 1.3 tickets arrive after the handshake, before the first response.
        self.asyncsp_connector.remember_session(state)
        return response


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
        self.retired = False
        self.closing = False
        self.in_flight = 0
        self.open_sockets = 0
        # What we know of each connection, dropped when its socket closes.
        self.states: dict[ResponseHandler, ConnectionState] = {}
        self._tickets: dict[int, _Ticket] = {}
        self._socket_options = endpoint.layer.manager.socket_options
        self.attempt = self._new_attempt()
        dns = self.dns_refresh_timeout
        self.aiohttp_connector = aiohttp.TCPConnector(
            ssl=context if context is not None else False,
            limit=self.limit,
            limit_per_host=self.limit,
            keepalive_timeout=self.max_idle_time,
            use_dns_cache=dns > 0,
            ttl_dns_cache=max(1, math.ceil(dns)),
            # One address at a time: racing two families would open two sockets at once.
            happy_eyeballs_delay=None,
            socket_factory=self._make_socket,
        )
        response_class = type("_TrackedResponse", (_TrackedResponse,), {"asyncsp_connector": self})
        self.session = aiohttp.ClientSession(
            connector=self.aiohttp_connector,
            connector_owner=True,
            # No cookie store: a service point is shared by unrelated callers, and cookies
            # would silently follow one caller's requests into another's.
            cookie_jar=aiohttp.DummyCookieJar(),
            response_class=response_class,
            trust_env=False,
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
        )

    # -- sockets ---------------------------------------------------------------------------

    def _make_socket(self, addr_info: Any) -> socket.socket:
        family = addr_info[0]
        # Protocol 0 (TCP is implied), as the manager's streams do: asyncio forces TCP_NODELAY
        # on sockets that name IPPROTO_TCP, which would override tcp_nodelay=False.
        raw = self._socket_options.create_socket(family)
        try:
            sock = _TrackedSocket(family, socket.SOCK_STREAM, 0, raw.detach())
        except BaseException:
            raw.close()
            raise
        sock.setblocking(False)
        sock.nodelay = self._socket_options.tcp_nodelay
        ticket = _Ticket(self, sock)
        sock.ticket = ticket
        # A backstop: a socket collected without close() still leaves the counts.
        weakref.finalize(sock, ticket.closed)
        self._tickets[ticket.fd] = ticket
        self.open_sockets += 1
        self.endpoint.sp._extra_connections += 1
        return sock

    def _socket_gone(self, ticket: _Ticket) -> None:
        if self._tickets.get(ticket.fd) is ticket:
            del self._tickets[ticket.fd]
        if ticket.protocol is not None:
            self.states.pop(ticket.protocol, None)
            ticket.protocol = None
        self.open_sockets -= 1
        self.endpoint.socket_closed(ticket)

    # -- connections -----------------------------------------------------------------------

    def first_use(
        self, protocol: ResponseHandler, connection: aiohttp.connector.Connection
    ) -> ConnectionState:
        """Record a connection on its first response: its socket, its age, its TLS facts."""
        transport = connection.transport
        ticket = None
        ssl_object = None
        if transport is not None:
            raw = transport.get_extra_info("socket")
            if raw is not None:
                ticket = self._tickets.get(raw.fileno())
            if self.context is not None:
                ssl_object = transport.get_extra_info("ssl_object")
        tls = established_info(ssl_object) if ssl_object is not None else None
        remember = ssl_object if self.policy.resume_sessions else None
        state = ConnectionState(
            ticket.opened_at if ticket is not None else time.monotonic(), tls, ticket, remember
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
        return lease is not None and time.monotonic() - state.opened_at >= lease * state.jitter

    def remember_session(self, state: ConnectionState) -> None:
        """Keep the connection's TLS session for the next new connection (once per connection)."""
        ssl_object, state.ssl_object = state.ssl_object, None
        sp = self.endpoint.sp
        sp.remember_session(ssl_object, self.policy, sp.host)
        self.attempt = self._new_attempt()

    def _new_attempt(self) -> ConnectAttempt:
        return self.endpoint.sp._attempt(self.policy, self.endpoint.sp.host, self.context)

    def _idle_protocols(self) -> list[ResponseHandler]:
        # aiohttp has no public way to close only its idle connections; its pool is a dict of
        # deques of (protocol, released_at) in 3.12-3.14 (pinned in pyproject, tested).
        pool = getattr(self.aiohttp_connector, "_conns", None)
        if not isinstance(pool, dict):
            return []
        return [entry[0] for entries in pool.values() for entry in entries]

    def close_idle(self, *, only_expired: bool = False) -> None:
        """Close idle connections now (those past their lease only, if asked)."""
        for protocol in self._idle_protocols():
            if not protocol.is_connected():
                continue
            state = self.states.get(protocol)
            if only_expired and (state is None or not self.must_close(state)):
                continue
            ticket = state.ticket if state is not None else None
            if ticket is not None and not ticket.done and not ticket.orphan:
                ticket.orphan = True
                self.endpoint.orphans += 1
            protocol.close()

    def retire(self) -> None:
        """No new requests: idle connections close now, the rest after their last request."""
        self.retired = True
        self.close_idle()
        if self.in_flight == 0:
            self.close()

    def close(self, *, interrupt: bool = False) -> None:
        """Close the session and every connection (TLS ones aborted, as aiohttp does).

        *interrupt* also shuts down sockets still connecting or in their TLS handshake:
        aiohttp lets those finish (up to their timeout) before it notices the close, and the
        manager's close must fail them promptly.
        """
        if interrupt:
            for ticket in list(self._tickets.values()):
                sock = ticket.socket()
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
        if self.closing:
            return
        self.closing = True
        self.endpoint.layer.manager._spawn(self.session.close())


class HttpEndpoint:
    """The HTTP state of one service point: its request gate and its connectors."""

    def __init__(self, layer: HttpLayer, sp: ServicePoint) -> None:
        self.layer = layer
        self.sp = sp
        self.tls = sp.endpoint.implicit_tls
        self.current: Connector | None = None
        self.retired: list[Connector] = []
        self.held = 0  # gate slots: requests in flight, and closes they wait for
        self.orphans = 0  # sockets we closed while idle that are not gone yet
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._drain_waiters: list[asyncio.Future[None]] = []  # admitted, waiting for orphans
        self._closed_error: ManagerClosedError | None = None

    # -- the gate --------------------------------------------------------------------------

    def _free(self) -> bool:
        return self.held + self.orphans < self.sp.connection_limit

    async def admit(self) -> None:
        """Take a gate slot, waiting (first come, first served) while the endpoint is full."""
        if self._closed_error is not None:
            raise self._closed_error
        if not self._waiters and self._free():
            self.held += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.wake()
        try:
            await waiter  # resolved with the slot already taken for us (see wake)
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.give_back()  # woken and cancelled at once: pass the slot on
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def give_back(self) -> None:
        """Return a gate slot."""
        self.held -= 1
        self.wake()

    def wake(self) -> None:
        """Hand free slots to waiters, oldest first."""
        while self._waiters and self._free():
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.held += 1
                waiter.set_result(None)

    def socket_closed(self, ticket: _Ticket) -> None:
        if ticket.orphan:
            self.orphans -= 1
            for waiter in self._drain_waiters:
                if not waiter.done():
                    waiter.set_result(None)
        if ticket.held_slots:
            self.held -= ticket.held_slots
            ticket.held_slots = 0
        self.sp._extra_connections -= 1
        self.wake()

    # -- the life of a request -------------------------------------------------------------

    def try_begin(self) -> Connector | None:
        """Start a request at once when the gate is open and the connector current, else None."""
        current = self.current
        sp = self.sp
        limit = sp.connection_limit
        if current is not None and sp.connection_lease_timeout is not None:
            current.close_idle(only_expired=True)  # before the gate counts the orphans
        if (
            current is None
            or self._waiters
            or self.held + self.orphans >= limit
            or self._closed_error is not None
            or current.limit != limit
            or not current.matches(sp, sp.policy)
        ):
            return None
        self.held += 1
        sp._extra_busy += 1
        if sp._extra_busy == 1:
            sp._touch()
        current.in_flight += 1
        sp.stats.requests += 1
        return current

    async def begin(self) -> Connector:
        """Start a request: wait for a gate slot, then pick (or make) the current connector."""
        self._busy()
        try:
            await self.admit()
            try:
                connector = await self.connector()
                if self.sp.connection_lease_timeout is not None:
                    connector.close_idle(only_expired=True)
                # A swap (or the lease) may just have closed idle sockets that are not gone
                # yet; with them the slot we hold could pass the limit: wait until they are.
                while self.held + self.orphans > self.sp.connection_limit:
                    await self._orphans_gone()
            except BaseException:
                self.give_back()
                raise
        except BaseException:
            self._unbusy()
            raise
        connector.in_flight += 1
        self.sp.stats.requests += 1
        return connector

    async def _orphans_gone(self) -> None:
        if self._closed_error is not None:
            raise self._closed_error
        waiter = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._drain_waiters:
                self._drain_waiters.remove(waiter)

    def request_ended(self, connector: Connector, response: _TrackedResponse | None) -> None:
        """Account for the end of a request; *response* is aiohttp's, if one arrived."""
        connector.in_flight -= 1
        if connector.retired:
            # aiohttp may have pooled the connection in the retired connector: close it now,
            # as an orphan the gate counts, before this request's slot is handed on.
            connector.close_idle()
        state = response.asyncsp_state if response is not None else None
        ticket = state.ticket if state is not None else None
        protocol = response.asyncsp_protocol if ticket is not None else None  # type: ignore[union-attr]
        if (
            protocol is not None
            and ticket is not None
            and not ticket.done
            and not ticket.orphan
            and (protocol.transport is None or protocol.should_close)
        ):
            # The connection is closing (not pooled): its slot is free once the socket is.
            ticket.held_slots += 1
        else:
            self.held -= 1
            if self._waiters:
                self.wake()
        sp = self.sp
        sp._extra_busy -= 1
        if sp._extra_busy == 0:
            sp._touch()  # idle_since becomes now
        if connector.retired:
            if connector.in_flight == 0:
                connector.close()
            if connector.closing and connector in self.retired:
                self.retired.remove(connector)

    def _busy(self) -> None:
        sp = self.sp
        sp._extra_busy += 1
        if sp._extra_busy == 1:
            sp._touch()  # idle_since becomes None

    def _unbusy(self) -> None:
        sp = self.sp
        sp._extra_busy -= 1
        if sp._extra_busy == 0:
            sp._touch()  # idle_since becomes now

    # -- connectors ------------------------------------------------------------------------

    async def connector(self) -> Connector:
        """The connector for a request starting now; a new one if the settings changed."""
        policy = self.sp.policy
        current = self.current
        if current is not None and current.matches(self.sp, policy):
            return current
        context = await context_for_async(policy) if self.tls else None
        current = self.current
        if current is not None and current.matches(self.sp, policy):
            return current  # made by another request while we built the context
        fresh = Connector(self, policy, context)
        self.current = fresh
        if current is not None:
            current.retire()
            if not current.closing:  # requests still run on it: closed after the last one
                self.retired.append(current)
        return fresh

    def close_idle(self) -> None:
        """Close the idle connections of every connector now (for ``ServicePoint.close``)."""
        for connector in [*self.retired, self.current]:
            if connector is not None:
                connector.close_idle()

    def close(self, error: ManagerClosedError) -> None:
        """Fail waiters and later arrivals with *error*; close every connector."""
        self._closed_error = error
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(error)
        for connector in [*self.retired, self.current]:
            if connector is not None:
                connector.retired = True
                connector.close(interrupt=True)


class HttpLayer:
    """The HTTP state of one manager: its endpoints and the tasks it must stop on close."""

    # By id(): a plain dict lookup per request. Weak: the manager keeps its layer alive
    # (through its closers), never this table; each entry leaves with its manager.
    _layers: ClassVar[dict[int, weakref.ref[HttpLayer]]] = {}

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        self.closed = False
        self._endpoints: dict[tuple[str, str, int], HttpEndpoint] = {}
        self._all: list[HttpEndpoint] = []
        manager._add_closer(self.aclose)

    @classmethod
    def of(cls, manager: ConnectionManager) -> HttpLayer:
        """The HTTP layer of *manager*, made on first use."""
        ref = cls._layers.get(id(manager))
        layer = ref() if ref is not None else None
        if layer is None or layer.manager is not manager:
            manager._check_open()
            layer = cls(manager)
            cls._layers[id(manager)] = weakref.ref(layer)
            weakref.finalize(manager, cls._layers.pop, id(manager), None)
        return layer

    def endpoint(self, url: URL) -> HttpEndpoint:
        """The endpoint state of *url*'s service point (an ``http``/``https`` URL with a host)."""
        host = url.raw_host
        port = url.port
        scheme = url.scheme
        assert host is not None and port is not None
        key = (scheme, host, port)
        endpoint = self._endpoints.get(key)
        manager = self.manager
        if endpoint is not None and (
            not manager.max_service_points
            or manager._service_points.get((endpoint.sp.endpoint, None)) is endpoint.sp
        ):
            return endpoint
        netloc = f"[{host}]" if ":" in host else host
        sp = manager.find_service_point(f"{scheme}://{netloc}:{port}")
        endpoint = sp.layer_state.get(_LAYER_KEY)
        if not isinstance(endpoint, HttpEndpoint):
            endpoint = HttpEndpoint(self, sp)
            sp.layer_state[_LAYER_KEY] = endpoint
            self._all.append(endpoint)
        previous = self._endpoints.get(key)
        if previous is not None and previous is not endpoint:
            # Its service point was dropped (max_service_points): free its sockets too.
            previous.close(self._closed_error(previous.sp.address))
        self._endpoints[key] = endpoint
        return endpoint

    def _closed_error(self, address: str) -> ManagerClosedError:
        return ManagerClosedError(
            f"the connection manager was closed while a request to {address} was waiting",
            endpoint=address,
        )

    async def aclose(self) -> None:
        """Stop every exchange and close every connection (called by ``manager.aclose``)."""
        self.closed = True
        for endpoint in self._all:
            endpoint.close(self._closed_error(endpoint.sp.address))
        # Each endpoint spawned its connectors' closes; the manager waits for those tasks.
