"""`ServicePoint`: one endpoint's settings, pool, idle reaping, shutdown and statistics.

Every change to what one endpoint keeps and counts (its settings, its slots, when it and its
connections are idle, reaped or reclaimed, what a protocol layer tells it through
`begin_exchange`, `socket_opened` and their pairs) belongs in this file; the manager only
removes a point it is told to.

Connections are made by its `Dialer` (`asyncsp._dialer`), the one code path for connect,
handshake, verification and TLS sessions that HTTP, SMTP, FTP and raw streams share; the
service point decides when a new one is needed and keeps it once it is made.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import datetime
import logging
import operator
import ssl
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ._defaults import (
    Setting,
    check_interleave,
    check_limit,
    check_optional_seconds,
    check_policy,
    check_seconds,
)
from ._dialer import Dialer
from ._endpoint import Endpoint
from ._errors import AsyncspError, ManagerClosedError, TimeoutError
from ._events import PolicySwapped, SlotWaited
from ._policy import TlsPolicy
from ._pool import Poolable, SlotPool
from ._streams import DEFAULT_LINE_LIMIT, Stream

if TYPE_CHECKING:
    from ._registry import ServicePointRegistry

__all__ = ["EndpointState", "LayerSlot", "ServicePoint", "ServicePointStats"]

T = TypeVar("T")
S = TypeVar("S", bound="EndpointState")

TLS_LOG = logging.getLogger("asyncsp.tls")
POOL_LOG = logging.getLogger("asyncsp.pool")

REAP_SLACK = 0.05
"""Seconds added to an idle deadline so the reaper never runs a hair early."""


@dataclasses.dataclass(slots=True)
class ServicePointStats:
    """Counters of one service point since it was made."""

    requests: int = 0
    """Requests (HTTP), messages (SMTP), commands with a transfer (FTP), streams opened."""
    connections_opened: int = 0
    """TCP connections made."""
    tls_handshakes: int = 0
    """Full TLS handshakes that passed verification."""
    session_resumptions: int = 0
    """Abbreviated (resumed) TLS handshakes that passed verification."""
    versions: dict[str, int] = dataclasses.field(default_factory=dict)
    """Negotiated TLS version string -> number of connections that negotiated it."""


class LayerSlot(Generic[T]):
    """A typed key under which a protocol layer keeps its state on a core object.

    The layer makes one slot at import and is the only one that reads it, so its state needs
    neither a string key nor a probe of its type.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<LayerSlot {self.name}>"


class EndpointState(Protocol):
    """What a protocol layer with connections of its own keeps on a service point (HTTP)."""

    def close_idle(self) -> None:
        """Close its idle connections now (`ServicePoint.close`)."""

    def close(self, error: ManagerClosedError) -> None:
        """Fail its waiters with *error* and close every connection (the point is shut down)."""


def _set_here(sp: ServicePoint) -> None:
    sp._own_settings = True


def _policy_set_here(sp: ServicePoint) -> None:
    sp._own_settings = True
    try:
        policy = sp.policy
    except AsyncspError:  # it follows process defaults that cannot be read: the next use says so
        return
    message = f"policy now {policy!r}" if TLS_LOG.isEnabledFor(logging.DEBUG) else ""
    sp.manager.tracer.emit(PolicySwapped(endpoint=sp.address, policy=policy), TLS_LOG, message)


def _times_set_here(sp: ServicePoint) -> None:
    sp._own_settings = True
    sp._schedule_reaper()


def _limit_set_here(sp: ServicePoint) -> None:
    sp._own_settings = True
    sp._pool.set_limit(sp._connection_limit)


def _dns_refresh_set_here(sp: ServicePoint) -> None:
    sp._own_settings = True
    sp.dialer.addresses.refresh = sp._dns_refresh_timeout
    sp.dialer.addresses.invalidate()


class ServicePoint:
    """One endpoint (scheme, host, port): its connection limit, idle and lease times, policy.

    Made by `ConnectionManager.find_service_point`, never directly. Its limit and times start
    from the manager's values when it is made and can then be set per endpoint; its `policy`
    follows the manager live unless overridden here.

    A service point with no connection open, nothing in flight or waiting, and no use for its
    `max_idle_time` leaves the manager with everything it holds (pool, HTTP connector and
    session, TLS sessions, resolved addresses, statistics); `find_service_point` then makes a
    fresh one from the manager's settings. One whose settings were set here (the limit, a
    time, a Happy Eyeballs setting or the policy) is kept instead, so a setting never silently
    reverts; only
    ``max_service_points`` or the manager's close removes it. A reference kept to a reclaimed
    point still reads its last state, but no request goes through it any more.
    """

    connection_limit = Setting(
        check_limit,
        changed=_limit_set_here,
        doc="Never more sockets open at once to this endpoint (int >= 1).",
    )
    max_idle_time = Setting(
        check_seconds,
        changed=_times_set_here,
        doc="Seconds a pooled connection may stay idle before it is closed.",
    )
    connection_lease_timeout = Setting(
        check_optional_seconds,
        changed=_times_set_here,
        doc="Seconds after which a connection is not reused (``None``: unlimited).",
    )
    dns_refresh_timeout = Setting(
        check_seconds,
        changed=_dns_refresh_set_here,
        doc="Seconds resolved addresses are reused before new connections resolve again.",
    )
    happy_eyeballs_delay = Setting(
        check_optional_seconds,
        changed=_set_here,
        doc="Seconds before the next resolved address is tried while one is still connecting "
        "(``None``: one address at a time, each to its end).",
    )
    interleave = Setting(
        check_interleave,
        changed=_set_here,
        doc="Addresses of the first family tried before the other's (``None``: 1 with a delay).",
    )
    policy = Setting(
        check_policy,
        inherit=operator.attrgetter("_manager.policy"),
        changed=_policy_set_here,
        doc="The policy the next new connection uses; set to override, ``None`` to follow again.",
    )

    def __init__(
        self, manager: ServicePointRegistry, endpoint: Endpoint, *, proxy: str | None = None
    ) -> None:
        self._manager = manager
        self._endpoint = endpoint
        self._proxy = proxy
        self.key: tuple[Endpoint, str | None] = (endpoint, proxy)
        """What the manager keeps it under: (endpoint, proxy URL or ``None``)."""
        # The settings start from the manager's (a snapshot; the policy follows it live).
        self._policy: TlsPolicy | None = None
        (
            self._connection_limit,
            self._max_idle_time,
            self._connection_lease_timeout,
            self._dns_refresh_timeout,
            self._happy_eyeballs_delay,
            self._interleave,
        ) = manager.point_settings()
        self._pool: SlotPool[Any] = SlotPool(self._connection_limit)
        self._active: set[Stream] = set()
        # Closed streams whose socket asyncio closes later (``None``: none, no set kept).
        self._aborted: set[Stream] | None = None
        self._extra_busy = 0  # exchanges in flight on connections not counted by the pool
        self._extra_connections = 0  # sockets owned by a protocol layer's own pool (HTTP)
        # When it last became idle: wall-clock seconds (made a datetime when read) and the
        # same moment on the loop's clock.
        self._idle_since: float | None = time.time()
        self._idle_at = time.monotonic()
        self._reaper: asyncio.TimerHandle | None = None
        # When the manager's reclaim sweep looks at it next (``None``: not watched).
        self._reclaim_due: float | None = None
        self._own_settings = False  # set here by the user: never reclaimed (see the docstring)
        self._detached = False  # shut down: dropped by the manager, or the manager closed
        self._layers: dict[LayerSlot[Any], EndpointState] = {}
        self.stats = ServicePointStats()
        """Counters since the service point was made."""
        self.certificate: bytes | None = None
        """DER of the peer's leaf certificate on the last TLS connection (``None`` before one)."""
        self.dialer = Dialer(self)
        """Makes this endpoint's connections: addresses, handshakes, TLS sessions."""

    # -- identity --------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The normalised ``"scheme://host:port"``."""
        return self._endpoint.address

    @property
    def endpoint(self) -> Endpoint:
        return self._endpoint

    @property
    def scheme(self) -> str:
        return self._endpoint.scheme

    @property
    def host(self) -> str:
        return self._endpoint.host

    @property
    def port(self) -> int:
        return self._endpoint.port

    @property
    def proxy(self) -> str | None:
        """The proxy URL (without credentials) this service point goes through, or ``None``."""
        return self._proxy

    @property
    def manager(self) -> ServicePointRegistry:
        return self._manager

    # -- state -----------------------------------------------------------------------------

    @property
    def current_connections(self) -> int:
        """Sockets open (or opening) to this endpoint now, in use or idle."""
        return self._pool.opened + self._extra_connections

    @property
    def idle_since(self) -> datetime.datetime | None:
        """When (UTC) the service point last became idle; ``None`` while in use."""
        since = self._idle_since
        return None if since is None else datetime.datetime.fromtimestamp(since, datetime.UTC)

    @property
    def detached(self) -> bool:
        """Shut down: dropped by the manager (reclaimed or evicted), or the manager closed."""
        return self._detached

    @property
    def is_idle(self) -> bool:
        return self._extra_busy == 0 and self._pool.unused()

    def _touch(self) -> None:
        if self._extra_busy == 0 and self._pool.unused():  # is_idle
            if self._idle_since is None:
                self._idle_since = time.time()
                self._idle_at = time.monotonic()
            self.watch_idle()
        else:
            self._idle_since = None
        self._manager.note_use(self)

    # -- what a protocol layer tells it ----------------------------------------------------

    def layer(self, slot: LayerSlot[S]) -> S | None:
        """The state *slot*'s layer keeps here, or ``None`` before `attach_layer`."""
        state: S | None = self._layers.get(slot)  # type: ignore[assignment]
        return state

    def attach_layer(self, slot: LayerSlot[S], state: S) -> S:
        """Keep *state* here for *slot*'s layer: closed with the point, idle ones by `close`."""
        self._layers[slot] = state
        return state

    def begin_exchange(self) -> None:
        """An exchange started on a connection the slot pool does not count (HTTP's own)."""
        self._extra_busy += 1
        if self._extra_busy == 1:
            self._touch()  # idle_since becomes None

    def end_exchange(self) -> None:
        """The exchange `begin_exchange` announced ended."""
        self._extra_busy -= 1
        if self._extra_busy == 0:
            self._touch()  # idle_since becomes now

    def socket_opened(self) -> None:
        """A layer's own pool opened a socket to this endpoint (counted in the connections)."""
        self._extra_connections += 1

    def socket_closed(self) -> None:
        """A socket `socket_opened` announced is closed."""
        self._extra_connections -= 1
        if self._extra_connections == 0:
            self.watch_idle()

    def stream_opened(self, stream: Stream) -> None:
        """The dialer made *stream* for this endpoint: the manager's close aborts it."""
        self._active.add(stream)

    def streams_in_use(self) -> list[Stream]:
        """The streams open to this endpoint now (pooled ones included)."""
        return list(self._active)

    def __repr__(self) -> str:
        via = f" via {self._proxy}" if self._proxy else ""
        return (
            f"<ServicePoint {self.address}{via} connections={self.current_connections}/"
            f"{self.connection_limit} requests={self.stats.requests}>"
        )

    # -- connections -----------------------------------------------------------------------

    async def obtain(
        self,
        *,
        reuse_key: Hashable | None = None,
        tls: bool | None = None,
        server_hostname: str | None = None,
        timeout: float | None = None,
        line_limit: int = DEFAULT_LINE_LIMIT,
    ) -> Any:
        """An idle pooled connection for *reuse_key*, or else a new `Stream`.

        Waits while the endpoint is at its connection limit; an idle connection of another
        key is closed to make room. *timeout* bounds the wait, the connect and the handshake,
        each. With ``reuse_key=None`` a new stream is always opened. ``tls=None`` means the
        scheme's default (implicit TLS for ``https``, ``smtps``, ``ftps``, ``tls``).
        """
        self._manager.check_open()
        policy = self.policy
        # Behind anyone already waiting (first come, first served), else at once if it can.
        queued = self._pool.queued
        done, conn = (False, None) if queued else self._take(reuse_key, policy, None)
        if not done:  # the endpoint is full, or others wait: wait, within *timeout*
            try:
                async with asyncio.timeout(timeout):
                    conn = await self._acquire(reuse_key, policy, wait_first=queued)
            except builtins.TimeoutError as exc:
                raise TimeoutError(
                    f"{self.address}: no connection became free within {timeout} s "
                    f"(connection_limit={self.connection_limit})",
                    endpoint=self.address,
                ) from exc
        if conn is not None:
            return conn
        try:
            if self._aborted:
                await self._aborted_sockets_gone()
            stream = await self.dialer.open(
                policy=policy,
                tls=self._endpoint.implicit_tls if tls is None else tls,
                server_hostname=server_hostname,
                timeout=timeout,
                line_limit=line_limit,
            )
        except BaseException:
            self._pool.release()  # the slot was never handed to a stream
            self._touch()
            raise
        return self._unless_closed(stream)

    async def checkin(self, conn: Poolable, reuse_key: Hashable) -> None:
        """Give a connection back: pooled when healthy and current, closed otherwise."""
        if (
            self._manager.closed
            or not conn.is_reusable()
            or conn.policy != self.policy
            or (
                self._connection_lease_timeout is not None
                and time.monotonic() - conn.opened_at >= self._connection_lease_timeout
            )
        ):
            await close_quietly(conn)
            return
        self._pool.put_idle(conn, reuse_key)
        self._touch()
        self._schedule_reaper()

    async def close(self) -> None:
        """Close this endpoint's idle connections now (connections in use are not touched)."""
        for conn in self._pool.drain_idle():
            await close_quietly(conn)
        for state in list(self._layers.values()):
            state.close_idle()  # a layer with a pool of its own (HTTP: aiohttp's)
        self._touch()

    def _take(
        self, reuse_key: Hashable | None, policy: TlsPolicy, waited_since: float | None
    ) -> tuple[bool, Any]:
        """Without waiting: ``(True, conn)`` for an idle connection of *reuse_key*, ``(True,
        None)`` for a slot reserved for a new one, ``(False, None)`` when the endpoint is full."""
        self._manager.check_open()
        conn = None
        if reuse_key is not None:
            conn, stale = self._pool.take_idle(
                reuse_key,
                policy=policy,
                max_idle=self._max_idle_time,
                lease=self._connection_lease_timeout,
            )
        else:
            stale = self._pool.expire(
                policy=policy,
                max_idle=self._max_idle_time,
                lease=self._connection_lease_timeout,
            )
        for old in stale:
            self._manager.spawn(close_quietly(old))
        if conn is not None:
            self._touch()
            if waited_since is not None:
                self.slot_waited(waited_since)
            if POOL_LOG.isEnabledFor(logging.DEBUG):
                POOL_LOG.debug("%s: reusing an idle connection", self.address)
            return True, conn
        if self._pool.try_reserve():
            self._touch()
            if waited_since is not None:
                self.slot_waited(waited_since)
            return True, None
        return False, None

    async def _acquire(
        self, reuse_key: Hashable | None, policy: TlsPolicy, *, wait_first: bool = False
    ) -> Any:
        """`_take` after making room or waiting, until it succeeds (a first `_take` failed, or
        *wait_first*: others were waiting, and room is theirs to make first)."""
        waited_since: float | None = None
        while True:
            victim = None if wait_first else self._pool.evict_idle()
            wait_first = False
            if victim is not None:
                # Closing frees its slot; shielded so a cancelled waiter still closes it.
                await asyncio.shield(self._manager.spawn(close_quietly(victim)))
            else:
                self._idle_since = None
                if waited_since is None:
                    waited_since = self.slot_wait_started()
                await self._pool.wait()
            done, conn = self._take(reuse_key, policy, waited_since)
            if done:
                self._pool.served()
                return conn

    def slot_wait_started(self) -> float | None:
        """The time (`time.monotonic`) an operation starts to wait for a slot, for
        `slot_waited`; ``None`` when nobody would read the report (no hook, DEBUG off)."""
        return time.monotonic() if self._manager.tracer.wants(POOL_LOG) else None

    def slot_waited(self, since: float) -> None:
        """Report an operation that waited for a slot from *since* until now (`SlotWaited`)."""
        seconds = time.monotonic() - since
        self._manager.tracer.emit(
            SlotWaited(endpoint=self.address, seconds=seconds),
            POOL_LOG,
            f"waited {seconds * 1000:.1f} ms for a slot (connection_limit={self.connection_limit})",
        )

    async def open_side_stream(
        self,
        peer: tuple[str, int],
        *,
        policy: TlsPolicy,
        tls: bool,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
        timeout: float | None = None,
    ) -> Stream:
        """A connection that belongs to another one of this endpoint (an FTP data channel).

        It takes no slot of its own, goes to *peer* (an IP address and port), runs the same
        handshake and verification under *policy*, and offers *session* for resumption (even
        when the policy's ``resume_sessions`` is off: a data channel resumes its control
        connection, which is no cache).
        """
        self._manager.check_open()
        stream = await self.dialer.open(
            policy=policy,
            tls=tls,
            server_hostname=server_hostname,
            timeout=timeout,
            line_limit=DEFAULT_LINE_LIMIT,
            peer=peer,
            session=session,
        )
        return self._unless_closed(stream)

    def _unless_closed(self, stream: Stream) -> Stream:
        # The manager may have closed while we connected: the new stream is not handed out.
        if self._manager.closed:
            stream.abort(by_manager=True)
            self._manager.check_open()
        return stream

    def stream_closed(self, stream: Stream) -> None:
        """*stream*, one of this endpoint's, closed: its slot is free (the dialer's on_close)."""
        self._active.discard(stream)
        aborted = None
        if self._aborted:  # their sockets close a loop turn after the abort
            aborted = {s for s in self._aborted if not s.socket_closed} or None
        if not stream.socket_closed:
            if aborted is None:
                aborted = set()
            aborted.add(stream)
        self._aborted = aborted
        self._pool.release()
        self._touch()

    async def _aborted_sockets_gone(self) -> None:
        # An aborted stream's slot is free at once, but asyncio closes its socket a loop
        # callback later: a new connection waits for that, so the endpoint never sees one
        # socket more than the limit (a task already scheduled would connect first).
        aborted = {s for s in self._aborted or () if not s.socket_closed}
        self._aborted = aborted or None
        for stream in list(aborted):
            await stream.wait_closed()

    def side_stream_closed(self, stream: Stream) -> None:
        """*stream*, from `open_side_stream`, closed (it held no slot)."""
        self._active.discard(stream)
        self.watch_idle()

    # -- idle reaping and shutdown ---------------------------------------------------------

    def _schedule_reaper(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        deadline = self._pool.next_expiry(
            max_idle=self._max_idle_time, lease=self._connection_lease_timeout
        )
        if deadline is not None and not self._manager.closed:
            loop = asyncio.get_running_loop()
            self._reaper = loop.call_at(deadline + REAP_SLACK, self._reap)

    def _reap(self) -> None:
        self._reaper = None
        for conn in self._pool.expire(
            policy=self.policy, max_idle=self._max_idle_time, lease=self._connection_lease_timeout
        ):
            self._manager.spawn(close_quietly(conn))
        self._schedule_reaper()

    def _reclaimable(self) -> bool:
        """Nothing open, in flight or waiting, no setting of its own, still in the manager."""
        return (
            self._pool.opened + self._extra_connections == 0
            and self.is_idle
            and not self._active
            and not self._own_settings
            and not self._detached
            and not self._manager.closed
        )

    def watch_idle(self) -> None:
        """Have the manager look at the point once it may be reclaimed (each path that can
        make it so calls this: the end of a use, the close of a connection).

        The point is watched once, not at every use: when its time comes the manager's one
        sweep (`ServicePointRegistry.watch_reclaim`) looks again, and watches it anew for the
        new deadline if it was used meanwhile. No timer of its own.
        """
        if self._reclaim_due is not None or not self._reclaimable():
            return
        due = self._idle_at + self._max_idle_time
        if self._manager.watch_reclaim(self, due):  # False without a running loop: the
            self._reclaim_due = due  # first use watches it

    def reclaim_if_due(self) -> None:
        """The manager's sweep reached this point's deadline: reclaim it if it stayed idle."""
        self._reclaim_due = None
        if not self._reclaimable():
            return  # in use again: its next idle moment watches it anew
        if time.monotonic() < self._idle_at + self._max_idle_time:
            self.watch_idle()  # used and idle again since it was watched
            return
        self._manager.reclaim(self)

    def shutdown(self) -> list[Any]:
        """Fail waiters, abort streams in use; return idle connections for the caller to close."""
        self._detached = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        if self._reclaim_due is not None:
            self._reclaim_due = None
            self._manager.unwatch_reclaim()
        endpoint = self.address
        idle = self._pool.close(
            lambda: ManagerClosedError(
                f"the connection manager was closed while waiting for {endpoint}",
                endpoint=endpoint,
            )
        )
        pooled = {getattr(conn, "stream", conn) for conn in idle}
        for stream in list(self._active):
            if stream not in pooled:  # idle sessions get a polite close from the caller
                stream.abort(by_manager=True)
        self.dialer.interrupt()
        for state in list(self._layers.values()):
            # A layer with sockets of its own (HTTP) fails its waiters and closes them.
            state.close(ManagerClosedError(f"{endpoint} was closed", endpoint=endpoint))
        return idle


async def close_quietly(conn: Poolable) -> None:
    # Nobody waits on this close, so its error has no reader.
    with contextlib.suppress(Exception):
        await conn.aclose()
