"""The core registry: the manager's settings, service points, raw streams and lifecycle.

Every change to what all protocols share (a manager setting, the service point table and
its eviction, raw streams, the close, and the services a protocol layer calls: `check_open`,
`spawn`, `add_closer`, `route`, the layer slots) belongs in this file; a protocol's own entry
point (``mgr.get``, ``mgr.smtp``, ``mgr.ftp``) belongs in `asyncsp._manager`. Protocol layers
import this module, never the manager, so imports go one way: core <- protocols <- manager.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import heapq
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Self, TypeVar

from ._defaults import (
    FOLLOW,
    ProtocolsOf,
    Setting,
    check_interleave,
    check_limit,
    check_optional_seconds,
    check_policy,
    check_seconds,
    defaults,
)
from ._endpoint import KEPT, Endpoint, normalise_host
from ._errors import AsyncspError, ManagerClosedError
from ._events import PolicySwapped, TraceHook, Tracer
from ._policy import TlsPolicy
from ._protocols import SecurityProtocol
from ._proxy import ProxyRoute, ProxySettings
from ._servicepoint import REAP_SLACK, LayerSlot, ServicePoint, close_quietly
from ._sockets import SocketOptions
from ._streams import Stream

if TYPE_CHECKING:
    from types import EllipsisType, TracebackType

__all__ = ["ServicePointLimitError", "ServicePointRegistry"]

T = TypeVar("T")
TLS_LOG = logging.getLogger("asyncsp.tls")
_CLOSE_GRACE = 2.0
"""Seconds `aclose` lets idle connections say goodbye before it aborts them."""


class ServicePointLimitError(AsyncspError):
    """``max_service_points`` is reached and no service point is idle to make room."""


def _from_defaults(name: str) -> Callable[[object], Any]:
    """A manager setting left as ``None`` follows `asyncsp.defaults` live."""
    return lambda _manager: getattr(defaults, name)


def _policy_swapped(manager: ServicePointRegistry) -> None:
    try:
        policy = manager.policy
    except AsyncspError:  # it follows process defaults that cannot be read: the next use says so
        return
    message = f"manager policy now {policy!r}" if TLS_LOG.isEnabledFor(logging.DEBUG) else ""
    manager.tracer.emit(PolicySwapped(endpoint="", policy=policy), TLS_LOG, message)


def _as_protocol(value: SecurityProtocol | int | str) -> SecurityProtocol:
    if isinstance(value, str):
        return SecurityProtocol.parse(value)
    return SecurityProtocol.validate(value)


class ServicePointRegistry:
    """Owns service points and their connections: the core of `asyncsp.ConnectionManager`.

    Every setting left as ``None`` follows `asyncsp.defaults` live. Closing closes every
    connection it owns and fails whatever still waits or runs with `ManagerClosedError`.
    """

    policy = Setting(
        check_policy,
        inherit=_from_defaults("policy"),
        changed=_policy_swapped,
        doc="The policy new connections use (the process default unless set here).",
    )
    security_protocol = ProtocolsOf(_as_protocol)
    default_connection_limit = Setting(
        check_limit,
        inherit=_from_defaults("default_connection_limit"),
        doc="The connection limit new service points start with.",
    )
    max_idle_time = Setting(
        check_seconds,
        inherit=_from_defaults("max_idle_time"),
        doc="The idle time new service points start with.",
    )
    connection_lease_timeout = Setting(
        check_optional_seconds,
        inherit=_from_defaults("connection_lease_timeout"),
        doc="The lease timeout new service points start with.",
    )
    dns_refresh_timeout = Setting(
        check_seconds,
        inherit=_from_defaults("dns_refresh_timeout"),
        doc="How long new service points reuse resolved addresses.",
    )
    happy_eyeballs_delay = Setting(
        check_optional_seconds,
        inherit=_from_defaults("happy_eyeballs_delay"),
        none_is_a_value=True,
        doc="The Happy Eyeballs delay new service points start with (``None``: one address at "
        "a time; not given, or deleted: the process defaults').",
    )
    interleave = Setting(
        check_interleave,
        inherit=_from_defaults("interleave"),
        doc="The address-family interleave new service points start with.",
    )

    def __init__(
        self,
        *,
        policy: TlsPolicy | None = None,
        security_protocol: SecurityProtocol | int | str | None = None,
        default_connection_limit: int | None = None,
        max_idle_time: float | None = None,
        connection_lease_timeout: float | None = None,
        max_service_points: int = 0,
        dns_refresh_timeout: float | None = None,
        happy_eyeballs_delay: float | None = FOLLOW,
        interleave: int | None = None,
        max_body_size: int | None = 64 * 2**20,
        proxy: str | None = None,
        trust_env: bool = False,
        tcp_nodelay: bool = True,
        tcp_keepalive: tuple[float, float] | None = None,
        local_address: str | None = None,
        trace: Sequence[TraceHook] = (),
        trace_configs: Sequence[Any] = (),
    ) -> None:
        # What __repr__ reads comes first: a manager whose making failed still shows in a
        # traceback.
        self._policy: TlsPolicy | None = None
        self._default_connection_limit: int | None = None
        self._max_idle_time: float | None = None
        self._connection_lease_timeout: float | None = None
        self._dns_refresh_timeout: float | None = None
        self._happy_eyeballs_delay: float | None = FOLLOW
        self._interleave: int | None = None
        self._closed = False
        self._point_settings_generation = -1  # see point_settings
        self._service_points: collections.OrderedDict[tuple[Endpoint, str | None], ServicePoint] = (
            collections.OrderedDict()
        )
        # Set without the descriptors, whose change is a `PolicySwapped` event: making a
        # manager swaps nothing.
        self._policy = None if policy is None else check_policy("policy", policy)
        if policy is None and security_protocol is None:
            # It follows the process defaults: a bad ASYNCSP_* value raises now, naming the
            # variable, rather than at the first request.
            defaults.policy  # noqa: B018 (the read is the check)
        if security_protocol is not None:
            self._policy = dataclasses.replace(
                self.policy, protocols=_as_protocol(security_protocol)
            )
        self.default_connection_limit = default_connection_limit
        self.max_idle_time = max_idle_time
        self.connection_lease_timeout = connection_lease_timeout
        self.dns_refresh_timeout = dns_refresh_timeout
        self.happy_eyeballs_delay = happy_eyeballs_delay
        self.interleave = interleave
        if (
            isinstance(max_service_points, bool)
            or not isinstance(max_service_points, int)
            or (max_service_points < 0)
        ):
            raise ValueError(f"max_service_points must be an int >= 0, not {max_service_points!r}")
        self.max_service_points = max_service_points
        """Most service points kept (0: unlimited); past it the least recently used idle goes."""
        if max_body_size is not None and (
            isinstance(max_body_size, bool)
            or not isinstance(max_body_size, int)
            or max_body_size < 0
        ):
            raise ValueError(f"max_body_size must be an int >= 0 or None, not {max_body_size!r}")
        self.max_body_size = max_body_size
        """Largest body `get()`-style calls read, after decoding (``None``: unbounded)."""
        self._proxies = ProxySettings.from_config(proxy, trust_env=trust_env)
        self._proxy = None if proxy is None else ProxyRoute.parse(proxy).url
        self.trust_env = trust_env
        self._socket_options = SocketOptions(
            tcp_nodelay=tcp_nodelay, tcp_keepalive=tcp_keepalive, local_address=local_address
        )
        # The service points waiting for their idle deadline, soonest first, and the one
        # timer armed for the first of them (see watch_reclaim).
        self._reclaims: list[tuple[float, int, ServicePoint]] = []
        self._reclaims_made = 0  # breaks ties between equal deadlines
        self._reclaims_dropped = 0  # entries of points shut down before their deadline
        self._reclaim_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing: asyncio.Future[None] | None = None
        self._closers: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._layers: dict[LayerSlot[Any], object] = {}
        self.tracer = Tracer(tuple(trace))
        """Where every layer reports its events (the hooks, and the DEBUG log)."""
        for config in trace_configs:
            if not callable(getattr(config, "freeze", None)):
                raise TypeError(
                    f"trace_configs takes aiohttp.TraceConfig objects, not {type(config).__name__}"
                )
        self.trace_configs = tuple(trace_configs)
        """aiohttp ``TraceConfig`` objects every HTTP session of this manager runs, for users
        of aiohttp's own request tracing (HTTP only; the `trace` hooks cover every protocol)."""

    def add_trace(self, hook: TraceHook) -> None:
        """Deliver every later event of this manager (`asyncsp.TraceEvent`) to *hook*.

        Hooks are plain callables run in the event loop: they must not block. One that
        raises is logged and never breaks a connection.
        """
        self.tracer.add(hook)

    # -- settings (the rest are the `Setting` descriptors above) ------------------------

    @property
    def socket_options(self) -> SocketOptions:
        """TCP options set on every new socket (no-delay, keep-alive, local address)."""
        return self._socket_options

    @property
    def proxy(self) -> str | None:
        """The ``proxy=`` URL, without its credentials (``None`` when not given)."""
        return self._proxy

    @property
    def closed(self) -> bool:
        return self._closed

    def point_settings(self) -> tuple[int, float, float | None, float, float | None, int | None]:
        """What a new service point starts from: the connection limit, idle time, lease
        timeout, DNS refresh time, Happy Eyeballs delay and interleave, read again only after
        a setting changed somewhere (`Setting.generation`; they may follow the defaults)."""
        if self._point_settings_generation != Setting.generation:
            generation = Setting.generation
            self._point_settings = (
                self.default_connection_limit,
                self.max_idle_time,
                self.connection_lease_timeout,
                self.dns_refresh_timeout,
                self.happy_eyeballs_delay,
                self.interleave,
            )
            self._point_settings_generation = generation
        return self._point_settings

    # -- service points --------------------------------------------------------------------

    def find_service_point(
        self, url_or_address: str, *, proxy: str | EllipsisType | None = ...
    ) -> ServicePoint:
        """The service point of *url_or_address*'s (scheme, host, port): the same object each time.

        ``https://h`` means port 443, ``http://h`` 80, ``smtp://h`` 25, ``smtps://h`` 465,
        ``ftp://h`` 21, ``ftps://h`` 990; ``tcp://h:p`` and ``tls://h:p`` name raw streams.
        A service point reached through a proxy is a separate one: by default an ``http(s)``
        URL gets the one its requests use (through the manager's proxy unless ``NO_PROXY``
        exempts it); ``proxy=None`` names the direct one, a proxy URL a through-proxy one.
        """
        endpoint = Endpoint.parse(url_or_address)
        if proxy is ...:
            route = self.route(endpoint.scheme, endpoint.host, endpoint.port)
            proxy = None if route is None else route.url
        elif proxy is not None:
            proxy = ProxyRoute.parse(proxy).url  # credentials never name a service point
        return self.service_point_of(endpoint, proxy)

    def service_point_of(self, endpoint: Endpoint, proxy: str | None) -> ServicePoint:
        """`find_service_point` for a parsed *endpoint* and a credential-free *proxy* URL (or
        ``None``: direct), for a layer that has both already."""
        key = (endpoint, proxy)
        sp = self._service_points.get(key)
        if sp is None:
            self.check_open()
            if self.max_service_points and len(self._service_points) >= self.max_service_points:
                self._evict_service_point()
            sp = ServicePoint(self, endpoint, proxy=proxy)
            self._service_points[sp.key] = sp  # its own key: one tuple kept, not two
            sp.watch_idle()  # a point looked up and never used goes too
        else:
            self._service_points.move_to_end(key)
        return sp

    @property
    def service_points(self) -> list[ServicePoint]:
        """The live service points, least recently used first (idle ones leave after their
        ``max_idle_time``; see `ServicePoint`)."""
        return list(self._service_points.values())

    def _evict_service_point(self) -> None:
        for key, sp in self._service_points.items():
            if sp.is_idle:
                del self._service_points[key]
                self._drop(sp)
                return
        raise ServicePointLimitError(
            f"max_service_points={self.max_service_points} reached and every service point is "
            "in use; raise the limit or close connections first"
        )

    def route(self, scheme: str, host: str, port: int) -> ProxyRoute | None:
        """The proxy a request to (*scheme*, *host*, *port*) goes through, ``None`` when direct.

        The route keeps the proxy's credentials (for ``Proxy-Authorization``); a service point
        is named by its credential-free `ProxyRoute.url`.
        """
        return self._proxies.route(scheme, host, port)

    def reclaim(self, sp: ServicePoint) -> None:
        """Remove *sp*, which stayed idle with nothing open for its idle time (it asks)."""
        key = (sp.endpoint, sp.proxy)
        if self._service_points.get(key) is sp:
            del self._service_points[key]
        self._drop(sp)

    def watch_reclaim(self, sp: ServicePoint, due: float) -> bool:
        """Call *sp*'s `reclaim_if_due` once `time.monotonic` passes *due* (its idle deadline).

        One timer for the whole manager, armed for the soonest deadline; a new point costs a
        heap entry, not a timer. Returns ``False`` without a running loop (nothing watched).
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._reclaims_made += 1
        heapq.heappush(self._reclaims, (due, self._reclaims_made, sp))
        timer = self._reclaim_timer
        when = due + REAP_SLACK
        if timer is None or when < timer.when():
            if timer is not None:
                timer.cancel()
            self._reclaim_timer = loop.call_at(when, self._sweep_reclaims)
        return True

    def unwatch_reclaim(self) -> None:
        """A watched point was shut down before its deadline: its entry is dropped lazily,
        and the heap rebuilt once such entries are half of it (no point is kept long)."""
        self._reclaims_dropped += 1
        if self._reclaims_dropped > 16 and 2 * self._reclaims_dropped > len(self._reclaims):
            self._reclaims = [entry for entry in self._reclaims if not entry[2].detached]
            heapq.heapify(self._reclaims)
            self._reclaims_dropped = 0
            if not self._reclaims and self._reclaim_timer is not None:
                self._reclaim_timer.cancel()
                self._reclaim_timer = None

    def _sweep_reclaims(self) -> None:
        self._reclaim_timer = None
        reclaims = self._reclaims
        now = time.monotonic()
        while reclaims and reclaims[0][0] <= now:
            sp = heapq.heappop(reclaims)[2]
            if sp.detached:
                self._reclaims_dropped -= 1
            else:
                sp.reclaim_if_due()  # may watch it again, for a later deadline
        if reclaims and self._reclaim_timer is None and not self._closed:
            self._reclaim_timer = asyncio.get_running_loop().call_at(
                reclaims[0][0] + REAP_SLACK, self._sweep_reclaims
            )

    def _drop(self, sp: ServicePoint) -> None:
        # Its layers forget it too (the HTTP connector and session): nothing keeps it alive
        # once its last connection is closed.
        for conn in sp.shutdown():
            self.spawn(close_quietly(conn))

    def note_use(self, sp: ServicePoint) -> None:
        """*sp* was used: it is now the most recently used (eviction takes the least)."""
        if self._closed or sp.detached:  # a point still attached is the one kept under its
            return  # key; nothing is evicted once closed, and `aclose` walks the registry
        self._service_points.move_to_end(sp.key)

    # -- raw streams -----------------------------------------------------------------------

    def open_stream(
        self,
        host: str,
        port: int,
        *,
        tls: bool = False,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> contextlib.AbstractAsyncContextManager[Stream]:
        """Open a TCP (or TLS) stream to *host*:*port* under the current policy.

        Counts against the ``tcp://`` (``tls://``) service point's limit while open. *timeout*
        bounds the wait for a slot, the connect, the handshake and then every operation.
        """
        return _StreamContext(self, host, port, tls, server_hostname, timeout)

    # -- lifecycle -------------------------------------------------------------------------

    # -- what a protocol layer may call ----------------------------------------------------

    def check_open(self) -> None:
        """Raise `ManagerClosedError` once the manager is closed (before anything new starts)."""
        if self._closed:
            raise ManagerClosedError("the connection manager is closed")

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run a background close (or similar) that `aclose` waits for."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def add_closer(self, closer: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run *closer* when the manager closes (a protocol layer's own pools)."""
        self._closers.append(closer)

    def layer(self, slot: LayerSlot[T]) -> T | None:
        """The state *slot*'s protocol layer keeps on this manager, ``None`` before it is set."""
        state: T | None = self._layers.get(slot)  # type: ignore[assignment]
        return state

    def attach_layer(self, slot: LayerSlot[T], state: T) -> T:
        """Keep *state* for *slot*'s layer as long as the manager lives; returns it."""
        self._layers[slot] = state
        return state

    # -- lifecycle -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close every connection; whatever still waits or runs fails with `ManagerClosedError`.

        Idle connections get a grace period (2 s) to say goodbye (QUIT, close_notify); then
        every stream still open is aborted and every close still running is cancelled. When
        it returns, every socket the manager opened is closed and none of its tasks is left.
        """
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        self._closed = True
        self._closing = asyncio.get_running_loop().create_future()
        if self._reclaim_timer is not None:
            self._reclaim_timer.cancel()
            self._reclaim_timer = None
        try:
            service_points = list(self._service_points.values())
            streams = {stream for sp in service_points for stream in sp.streams_in_use()}
            idle: list[Any] = []
            for sp in service_points:
                idle += sp.shutdown()
            for conn in idle:
                self.spawn(close_quietly(conn))
            for close in self._closers:
                self.spawn(close())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_GRACE):
                    while self._tasks:  # a close may spawn more (HTTP sessions do)
                        await asyncio.wait(list(self._tasks))
            for sp in service_points:
                for stream in sp.streams_in_use():
                    streams.add(stream)
                    stream.abort(by_manager=True)
            for task in self._tasks:
                task.cancel()
            # Bounded, for a close that ignores its cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_GRACE):
                    await asyncio.gather(
                        *self._tasks,
                        *(stream.wait_closed() for stream in streams),
                        *(sp.dialer.settled() for sp in service_points),
                        return_exceptions=True,
                    )
        finally:
            self._closing.set_result(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._service_points)} service points"
        try:
            protocols = repr(self.policy.protocols)
        except AsyncspError as exc:  # the process defaults it follows cannot be read
            protocols = f"(no policy: {exc})"
        return f"<{type(self).__name__} {protocols} {state}>"


_stream_endpoint = functools.lru_cache(maxsize=KEPT)(Endpoint)
"""`Endpoint` made from (scheme, host, port), the last few kept (as `Endpoint.parse` keeps the
texts): a stream opened again to the same endpoint makes none."""


class _StreamContext:
    """``async with mgr.open_stream(...) as stream``: the stream is closed on exit."""

    __slots__ = ("_host", "_manager", "_port", "_server_hostname", "_stream", "_timeout", "_tls")

    def __init__(
        self,
        manager: ServicePointRegistry,
        host: str,
        port: int,
        tls: bool,
        server_hostname: str | None,
        timeout: float | None,
    ) -> None:
        self._manager = manager
        self._host = host
        self._port = port
        self._tls = tls
        self._server_hostname = server_hostname
        self._timeout = timeout
        self._stream: Stream | None = None

    async def __aenter__(self) -> Stream:
        port = self._port
        if isinstance(port, bool) or not isinstance(port, int):
            raise ValueError(f"port must be an int, not {port!r}")
        scheme = "tls" if self._tls else "tcp"
        host = normalise_host(self._host)
        if not 0 < port < 65536:
            netloc = f"[{host}]" if ":" in host else host
            raise ValueError(f"{scheme}://{netloc}:{port}: port {port} is out of range")
        # What find_service_point would parse from "scheme://host:port", made directly: the
        # host is normalised already and the port checked.
        endpoint = _stream_endpoint(scheme, host, port)
        manager = self._manager
        route = manager.route(scheme, host, port)
        sp = manager.service_point_of(endpoint, None if route is None else route.url)
        stream: Stream = await sp.obtain(
            tls=self._tls, server_hostname=self._server_hostname, timeout=self._timeout
        )
        sp.stats.requests += 1
        self._stream = stream
        return stream

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()
