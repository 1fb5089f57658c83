"""The HTTP pool of each service point: aiohttp connectors made from policy snapshots, a gate.

Layers, from the top: `HttpLayer` (one per manager: its endpoints, shutdown) -> `HttpEndpoint`
(one per service point: the request gate, the current and the retired connectors) ->
`Connector` (one aiohttp ``TCPConnector`` and ``ClientSession`` made from one policy snapshot
and one set of limits, in `_http_connector`) -> the sockets it opens, each counted.

Why a gate of our own: aiohttp counts connections per connector, but a policy change gives
the endpoint a second connector while requests still run on the first. The gate counts every
request in flight on either, plus the sockets that are still closing, against
``sp.connection_limit``; so the endpoint never sees more sockets than that at once.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
from typing import TYPE_CHECKING

from ._contexts import built_context, context_for_async
from ._defaults import Setting
from ._endpoint import Endpoint
from ._errors import ManagerClosedError
from ._http_connector import Connector, TrackedResponse
from ._http_sockets import RequestClaim, SocketTicket
from ._servicepoint import LayerSlot

if TYPE_CHECKING:
    import ssl

    from yarl import URL

    from ._policy import TlsPolicy
    from ._proxy import ProxyRoute
    from ._registry import ServicePointRegistry
    from ._servicepoint import ServicePoint

__all__ = ["ENDPOINT_SLOT", "LAYER_SLOT", "HttpEndpoint", "HttpLayer"]


def _expire(waiter: asyncio.Future[None]) -> None:
    """A gate waiter's deadline passed: it ends with `builtins.TimeoutError` (no slot)."""
    if not waiter.done():
        waiter.set_exception(builtins.TimeoutError())


class HttpEndpoint:
    """The HTTP state of one service point: its request gate and its connectors."""

    def __init__(self, layer: HttpLayer, sp: ServicePoint, route: ProxyRoute | None) -> None:
        self.layer = layer
        self.sp = sp
        self.route = route  # the proxy requests go through (with its credentials), or None
        self.secrets = route.secrets if route is not None else ()
        self.tls = sp.endpoint.implicit_tls
        self.current: Connector | None = None
        self.retired: list[Connector] = []
        # The last check of a connector against the settings (`_recheck`): the connector,
        # the settings' generation then, and the lease timeout read with them (read by the
        # connector too, for the requests begun since). While the generation has not moved,
        # the same connector still matches.
        self._checked: Connector | None = None
        self._checked_generation = -1
        self.lease: float | None = None
        # sp.connection_limit, as read at _limit_generation (the gate reads it at every wake).
        self._limit = 0
        self._limit_generation = -1
        self.held = 0  # gate slots: requests in flight, and closes they wait for
        self.orphans = 0  # sockets we closed while idle that are not gone yet
        # Admission order; keyed by future so a cancelled waiter leaves in O(1).
        self._waiters: collections.OrderedDict[asyncio.Future[None], None] = (
            collections.OrderedDict()
        )
        self._drain_waiters: list[asyncio.Future[None]] = []  # admitted, waiting for orphans
        self._closed_error: ManagerClosedError | None = None
        self.keys: list[tuple[str, str, int]] = []  # its entries in the layer's table

    # -- the gate --------------------------------------------------------------------------

    def _free(self) -> bool:
        if self._limit_generation != Setting.generation:
            self._limit_generation = Setting.generation
            self._limit = self.sp.connection_limit
        return self.held + self.orphans < self._limit

    def _recheck(self, connector: Connector) -> bool:
        """Whether *connector* matches the service point's settings now; remembered until a
        setting changes anywhere (`Setting.generation`)."""
        generation = Setting.generation
        sp = self.sp
        if not connector.matches(sp, sp.policy):
            return False
        self._checked, self._checked_generation = connector, generation
        self.lease = sp.connection_lease_timeout
        return True

    async def admit(
        self, deadline: float | None = None, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        """Take a gate slot, waiting (first come, first served) while the endpoint is full;
        `builtins.TimeoutError` once *deadline* (*loop*'s time) passes without one."""
        if self._closed_error is not None:
            raise self._closed_error
        if not self._waiters and self._free():
            self.held += 1
            return
        if loop is None:
            loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters[waiter] = None
        since = self.sp.slot_wait_started()
        self.wake()
        # The deadline ends the waiter itself: one timer handle, no timeout context around
        # the wait (most requests on new connections wait here, for a socket closing).
        timer = (
            loop.call_at(deadline, _expire, waiter)
            if deadline is not None and not waiter.done()
            else None
        )
        try:
            await waiter  # resolved with the slot already taken for us (see wake)
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.give_back()  # woken and cancelled at once: pass the slot on
            raise
        finally:
            if timer is not None:
                timer.cancel()
            self._waiters.pop(waiter, None)
        if since is not None:
            self.sp.slot_waited(since)

    def give_back(self) -> None:
        """Return a gate slot."""
        self.held -= 1
        self.wake()

    def wake(self) -> None:
        """Room was made: wake the admitted requests waiting for it (they look again), then
        hand free slots to waiters, oldest first."""
        for drain_waiter in self._drain_waiters:
            if not drain_waiter.done():
                drain_waiter.set_result(None)
        while self._waiters and self._free():
            waiter, _ = self._waiters.popitem(last=False)
            if not waiter.done():
                self.held += 1
                waiter.set_result(None)

    def socket_closed(self, ticket: SocketTicket) -> None:
        if ticket.orphan:
            self.orphans -= 1
        self.held -= ticket.held_slots
        ticket.held_slots = 0
        self.sp.socket_closed()  # first: a request woken below finds the socket gone
        self.wake()

    # -- the life of a request -------------------------------------------------------------

    def try_begin(self) -> Connector | None:
        """Start a request at once when the gate is open and the connector current, else None."""
        current = self.current
        if current is None:  # the endpoint's first request
            if self._waiters or self._closed_error is not None:
                return None
            current = self.connector_now()
            if current is None:  # its context is built in a thread: the waiting path does it
                return None
        sp = self.sp
        if (
            current is not self._checked or self._checked_generation != Setting.generation
        ) and not self._recheck(current):
            return None
        if self.lease is not None:
            current.close_idle(only_expired=True)  # before the gate counts the orphans
        if (
            self._waiters
            or self.held + self.orphans >= current.limit
            or self._closed_error is not None
        ):
            return None
        self.held += 1
        sp.begin_exchange()
        current.in_flight += 1
        sp.stats.requests += 1
        return current

    async def begin(self, timeout: float | None = None) -> Connector:
        """Start a request: wait for a gate slot, then pick (or make) the current connector;
        `builtins.TimeoutError` if that is not done within *timeout* seconds."""
        self.sp.begin_exchange()
        try:
            # One lookup of the loop for the whole wait (on Python 3.11 each costs a getpid).
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            await self.admit(deadline, loop)
            try:
                connector = await self._pick(deadline)
            except BaseException:
                self.give_back()
                raise
        except BaseException:
            self.sp.end_exchange()
            raise
        connector.in_flight += 1  # no await since _pick: the connector is still current
        self.sp.stats.requests += 1
        return connector

    async def _pick(self, deadline: float | None = None) -> Connector:
        """The connector for an admitted request, chosen after its last wait.

        Each wait (a context built in a thread, sockets still closing) lets the policy change,
        another request retire the connector or the manager close; so the choice is made again
        after it. Every pass but the last waits; the caller's deadline bounds them all (its
        *deadline*, when given here, else a timeout around the call).
        """
        while True:
            if self._closed_error is not None:
                raise self._closed_error
            connector = self.current
            if connector is None or (
                (connector is not self._checked or self._checked_generation != Setting.generation)
                and not self._recheck(connector)
            ):
                async with asyncio.timeout_at(deadline):
                    await self.connector()
                continue
            if self.lease is not None:  # read with the check above
                connector.close_idle(only_expired=True)
            # A swap (or the lease) may just have closed idle sockets that are not gone
            # yet; with them the slot we hold could pass the limit: wait until they are.
            # (Requests admitted before the limit was lowered go on: only orphans are awaited.)
            if self.orphans and self.held + self.orphans > connector.limit:
                async with asyncio.timeout_at(deadline):
                    await self._sockets_gone()
                continue
            return connector

    async def room_for_new_socket(self, connector: Connector) -> None:
        """Make room under the limit for a socket that may not come from the pool (the retry
        after a stale connection): close the oldest idle connections of *connector* as far as
        needed, then wait for the sockets closing to go.

        Idle sockets are not counted by the gate (a request takes one before it opens a new
        one); a request that skips the pool must make their room itself. Each pass looks again
        after a socket closes or a slot is freed (a request may have pooled its connection
        meanwhile); the request's own timeout bounds the wait.
        """
        sp = self.sp
        while True:
            staying = sp.current_connections - self.orphans  # orphans are on their way out
            connector.close_idle(count=staying + 1 - sp.connection_limit)
            if sp.current_connections < sp.connection_limit:
                return
            await self._sockets_gone()

    async def _sockets_gone(self) -> None:
        """Wait until room is made: a socket closes, or a request frees its slot."""
        if self._closed_error is not None:
            raise self._closed_error
        waiter = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._drain_waiters:
                self._drain_waiters.remove(waiter)

    def request_ended(
        self,
        connector: Connector,
        response: TrackedResponse | None,
        claim: RequestClaim | None = None,
    ) -> None:
        """Account for the end of a request.

        *response* is aiohttp's, if one arrived; else *claim* tells which connection the
        request had taken.
        """
        connector.in_flight -= 1
        if connector.retired:
            # aiohttp may have pooled the connection in the retired connector: close it now,
            # as an orphan the gate counts, before this request's slot is handed on.
            connector.close_idle()
        closing = None  # the ticket of a socket aiohttp is closing, not pooling
        if response is not None:
            state, protocol = response.asyncsp_state, response.asyncsp_protocol
            ticket = state.ticket if state is not None else None
            # Once aiohttp has released the connection, it has closed it (no transport) or
            # pooled it; before, `should_close` says which it will do.
            if (
                ticket is not None
                and protocol is not None
                and not ticket.done
                and not ticket.orphan
                and (
                    protocol.transport is None
                    or (response.connection is not None and protocol.should_close)
                )
            ):
                closing = ticket
        elif claim is not None:
            closing = claim.closing_ticket(connector)
        if closing is not None:
            closing.held_slots += 1  # this slot is free once that socket is gone
        else:
            self.held -= 1
            if self._waiters or self._drain_waiters:
                self.wake()
        self.sp.end_exchange()
        if connector.retired:
            if connector.in_flight == 0:
                connector.close()
            if connector.closing and connector in self.retired:
                self.retired.remove(connector)

    # -- connectors ------------------------------------------------------------------------

    async def connector(self) -> Connector:
        """The connector for a request starting now; a new one if the settings changed."""
        ready = self.connector_now()
        if ready is not None:
            return ready
        policy = self.sp.policy
        context = await context_for_async(policy)  # TLS, and its context not built yet
        if self._closed_error is not None:
            raise self._closed_error  # closed while the context was built: make nothing new
        current = self.current
        if current is not None and current.matches(self.sp, policy):
            return current  # made by another request while we built the context
        return self._install(policy, context)

    def connector_now(self) -> Connector | None:
        """`connector` without waiting: ``None`` when a new one needs a TLS context that is
        not built yet (built in a worker thread, it reads CA files)."""
        if self._closed_error is not None:
            raise self._closed_error
        policy = self.sp.policy
        current = self.current
        if current is not None and current.matches(self.sp, policy):
            return current
        context = built_context(policy) if self.tls else None
        if self.tls and context is None:
            return None
        return self._install(policy, context)

    def _install(self, policy: TlsPolicy, context: ssl.SSLContext | None) -> Connector:
        """Make the connector for *policy* current; the one it replaces is retired."""
        current = self.current
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
        """Fail waiters and later arrivals with *error*; close every connector; leave the
        layer's table (the service point was dropped, or the manager closed)."""
        self._closed_error = error
        self.layer.forget(self)
        while self._waiters:
            waiter, _ = self._waiters.popitem(last=False)
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
    """The HTTP state of one manager: its endpoints, all closed with the manager."""

    def __init__(self, manager: ServicePointRegistry) -> None:
        self.manager = manager
        self.closed = False
        # The endpoints of live service points only: each leaves as its point is dropped
        # (HttpEndpoint.close), so a table entry is always the current one.
        self._endpoints: dict[tuple[str, str, int], HttpEndpoint] = {}
        manager.add_closer(self.aclose)

    @classmethod
    def of(cls, manager: ServicePointRegistry) -> HttpLayer:
        """The HTTP layer of *manager*, made on first use."""
        layer = manager.layer(LAYER_SLOT)
        if layer is None:
            manager.check_open()
            layer = manager.attach_layer(LAYER_SLOT, cls(manager))
        return layer

    def endpoint(self, url: URL) -> HttpEndpoint:
        """The endpoint state of *url*'s service point (an ``http``/``https`` URL with a host)."""
        host = url.raw_host
        port = url.port
        scheme = url.scheme
        assert host is not None and port is not None
        key = (scheme, host, port)
        endpoint = self._endpoints.get(key)
        if endpoint is not None:
            return endpoint
        manager = self.manager
        # The one place a request's route is decided: the proxy (or none) is part of the
        # service point's identity, so a through-proxy endpoint has its own limits and stats.
        netloc = f"[{host}]" if ":" in host else host
        target = Endpoint.parse(f"{scheme}://{netloc}:{port}")
        route = manager.route(target.scheme, target.host, target.port)
        sp = manager.service_point_of(target, route.url if route else None)
        endpoint = sp.layer(ENDPOINT_SLOT)
        if endpoint is None:
            endpoint = sp.attach_layer(ENDPOINT_SLOT, HttpEndpoint(self, sp, route))
        # One endpoint may be spelt several ways in URLs (a trailing dot, another case).
        self._endpoints[key] = endpoint
        endpoint.keys.append(key)
        return endpoint

    def forget(self, endpoint: HttpEndpoint) -> None:
        """Drop *endpoint*'s entries from the table (its service point is gone)."""
        for key in endpoint.keys:
            if self._endpoints.get(key) is endpoint:
                del self._endpoints[key]
        endpoint.keys.clear()

    def _closed_error(self, address: str) -> ManagerClosedError:
        return ManagerClosedError(
            f"the connection manager was closed while a request to {address} was waiting",
            endpoint=address,
        )

    async def aclose(self) -> None:
        """Stop every exchange and close every connection (called by ``manager.aclose``)."""
        self.closed = True
        # The service points have just shut their endpoints down (and left this table); each
        # endpoint's error now says why a request was stopped.
        for sp in self.manager.service_points:
            endpoint = sp.layer(ENDPOINT_SLOT)
            if endpoint is not None:
                endpoint.close(self._closed_error(sp.address))
        # Each endpoint spawned its connectors' closes; the manager waits for those tasks.


LAYER_SLOT: LayerSlot[HttpLayer] = LayerSlot("http")
"""Where a manager keeps its `HttpLayer`."""
ENDPOINT_SLOT: LayerSlot[HttpEndpoint] = LayerSlot("http")
"""Where a service point keeps its `HttpEndpoint`."""
