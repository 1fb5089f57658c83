"""`ConnectionManager`: the registry of service points and the entry to every protocol."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from . import _http
from ._defaults import (
    check_limit,
    check_optional_seconds,
    check_seconds,
    defaults,
)
from ._endpoint import Endpoint, normalise_host
from ._errors import AsyncspError, ManagerClosedError
from ._events import TraceHook, Tracer
from ._http import Response
from ._policy import TlsPolicy
from ._protocols import SecurityProtocol
from ._proxy import ProxyRoute, ProxySettings
from ._servicepoint import ServicePoint, close_quietly
from ._sockets import SocketOptions
from ._streams import Stream

if TYPE_CHECKING:
    from types import EllipsisType, TracebackType

    from ._ftp import FtpClient
    from ._smtp import SmtpClient

__all__ = ["ConnectionManager", "ServicePointLimitError"]

T = TypeVar("T")
_CLOSE_GRACE = 2.0
"""Seconds `aclose` lets idle connections say goodbye before it aborts them."""


class ServicePointLimitError(AsyncspError):
    """``max_service_points`` is reached and no service point is idle to make room."""


class ConnectionManager:
    """Owns service points and their connections; the async ``ServicePointManager``.

    Every setting left as ``None`` follows `asyncsp.defaults` live. Use it as
    ``async with ConnectionManager() as mgr:`` or call `aclose`; closing closes every
    connection it owns and fails whatever still waits or runs with `ManagerClosedError`.
    """

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
        max_body_size: int | None = 64 * 2**20,
        proxy: str | None = None,
        trust_env: bool = False,
        tcp_nodelay: bool = True,
        tcp_keepalive: tuple[float, float] | None = None,
        local_address: str | None = None,
        trace: Sequence[TraceHook] = (),
    ) -> None:
        # What __repr__ reads comes first: a manager whose making failed still shows in a
        # traceback.
        self._policy: TlsPolicy | None = None
        self._closed = False
        self._service_points: collections.OrderedDict[tuple[Endpoint, str | None], ServicePoint] = (
            collections.OrderedDict()
        )
        if policy is not None and not isinstance(policy, TlsPolicy):
            raise TypeError(f"policy must be a TlsPolicy, not {type(policy).__name__}")
        if policy is None and security_protocol is None:
            # It follows the process defaults: a bad ASYNCSP_* value raises now, naming the
            # variable, rather than at the first request.
            defaults.policy  # noqa: B018 (the read is the check)
        if security_protocol is not None:
            policy = dataclasses.replace(
                policy or defaults.policy, protocols=_as_protocol(security_protocol)
            )
        self._policy = policy
        self._connection_limit = (
            None
            if default_connection_limit is None
            else check_limit("default_connection_limit", default_connection_limit)
        )
        self._max_idle_time = (
            None if max_idle_time is None else check_seconds("max_idle_time", max_idle_time)
        )
        self._lease_timeout = check_optional_seconds(
            "connection_lease_timeout", connection_lease_timeout
        )
        self._dns_refresh_timeout = (
            None
            if dns_refresh_timeout is None
            else check_seconds("dns_refresh_timeout", dns_refresh_timeout)
        )
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
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing: asyncio.Future[None] | None = None
        self._closers: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self.tracer = Tracer(tuple(trace))
        """Where every layer reports its events (the hooks, and the DEBUG log)."""

    def add_trace(self, hook: TraceHook) -> None:
        """Deliver every later event of this manager (`asyncsp.TraceEvent`) to *hook*.

        Hooks are plain callables run in the event loop: they must not block. One that
        raises is logged and never breaks a connection.
        """
        self.tracer.add(hook)

    # -- settings --------------------------------------------------------------------------

    @property
    def policy(self) -> TlsPolicy:
        """The policy new connections use (the process default unless set here)."""
        return self._policy or defaults.policy

    @policy.setter
    def policy(self, value: TlsPolicy | None) -> None:
        if value is not None and not isinstance(value, TlsPolicy):
            raise TypeError(f"policy must be a TlsPolicy or None, not {type(value).__name__}")
        self._policy = value

    @property
    def security_protocol(self) -> SecurityProtocol:
        """The versions new connections may use; setting it keeps the rest of the policy."""
        return self.policy.protocols

    @security_protocol.setter
    def security_protocol(self, value: SecurityProtocol | int | str) -> None:
        self._policy = dataclasses.replace(self.policy, protocols=_as_protocol(value))

    @property
    def default_connection_limit(self) -> int:
        """The connection limit new service points start with."""
        return self._connection_limit or defaults.default_connection_limit

    @default_connection_limit.setter
    def default_connection_limit(self, value: int | None) -> None:
        self._connection_limit = (
            None if value is None else check_limit("default_connection_limit", value)
        )

    @property
    def max_idle_time(self) -> float:
        """The idle time new service points start with."""
        return defaults.max_idle_time if self._max_idle_time is None else self._max_idle_time

    @max_idle_time.setter
    def max_idle_time(self, value: float | None) -> None:
        self._max_idle_time = None if value is None else check_seconds("max_idle_time", value)

    @property
    def connection_lease_timeout(self) -> float | None:
        """The lease timeout new service points start with."""
        if self._lease_timeout is None:
            return defaults.connection_lease_timeout
        return self._lease_timeout

    @connection_lease_timeout.setter
    def connection_lease_timeout(self, value: float | None) -> None:
        self._lease_timeout = check_optional_seconds("connection_lease_timeout", value)

    @property
    def dns_refresh_timeout(self) -> float:
        """How long new service points reuse resolved addresses."""
        if self._dns_refresh_timeout is None:
            return defaults.dns_refresh_timeout
        return self._dns_refresh_timeout

    @dns_refresh_timeout.setter
    def dns_refresh_timeout(self, value: float | None) -> None:
        self._dns_refresh_timeout = (
            None if value is None else check_seconds("dns_refresh_timeout", value)
        )

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
            route = self._proxies.route(endpoint.scheme, endpoint.host, endpoint.port)
            proxy = None if route is None else route.url
        elif proxy is not None:
            proxy = ProxyRoute.parse(proxy).url  # credentials never name a service point
        key = (endpoint, proxy)
        sp = self._service_points.get(key)
        if sp is None:
            self._check_open()
            if self.max_service_points and len(self._service_points) >= self.max_service_points:
                self._evict_service_point()
            sp = ServicePoint(self, endpoint, proxy=proxy)
            self._service_points[key] = sp
            sp._watch_idle()  # a point looked up and never used goes too
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

    def _reclaim(self, sp: ServicePoint) -> None:
        """Remove a service point that stayed idle, with nothing open, for its idle time."""
        key = (sp.endpoint, sp.proxy)
        if self._service_points.get(key) is sp:
            del self._service_points[key]
        self._drop(sp)

    def _drop(self, sp: ServicePoint) -> None:
        # Its layers forget it too (the HTTP connector and session): nothing keeps it alive
        # once its last connection is closed.
        for conn in sp._shutdown():
            self._spawn(close_quietly(conn))

    def _used(self, sp: ServicePoint) -> None:
        if self._closed:  # nothing is evicted any more, and `aclose` walks the registry
            return
        key = (sp.endpoint, sp.proxy)
        if self._service_points.get(key) is sp:
            self._service_points.move_to_end(key)

    # -- raw streams -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open_stream(
        self,
        host: str,
        port: int,
        *,
        tls: bool = False,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Stream]:
        """Open a TCP (or TLS) stream to *host*:*port* under the current policy.

        Counts against the ``tcp://`` (``tls://``) service point's limit while open. *timeout*
        bounds the wait for a slot, the connect, the handshake and then every operation.
        """
        if isinstance(port, bool) or not isinstance(port, int):
            raise ValueError(f"port must be an int, not {port!r}")
        host = normalise_host(host)
        netloc = f"[{host}]" if ":" in host else host
        sp = self.find_service_point(f"{'tls' if tls else 'tcp'}://{netloc}:{port}")
        stream: Stream = await sp.obtain(tls=tls, server_hostname=server_hostname, timeout=timeout)
        sp.stats.requests += 1
        try:
            yield stream
        finally:
            await stream.aclose()

    # -- HTTP, SMTP, FTP (their modules hold the protocol code) ----------------------------

    def request(
        self, method: str, url: str, **kwargs: Any
    ) -> AbstractAsyncContextManager[Response]:
        """``async with mgr.request("GET", url) as resp:`` streams a response (see `Response`)."""
        return _http.request(self, method, url, **kwargs)

    # Each calls the HTTP layer directly: no extra frame or import per request (hot path).
    async def get(self, url: str, **kwargs: Any) -> Response:
        """GET *url*, read the body (at most ``max_body_size``) and free the connection."""
        return await _http.fetch(self, "GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> Response:
        """POST to *url*; see `get`."""
        return await _http.fetch(self, "POST", url, **kwargs)

    async def put(self, url: str, **kwargs: Any) -> Response:
        """PUT to *url*; see `get`."""
        return await _http.fetch(self, "PUT", url, **kwargs)

    async def patch(self, url: str, **kwargs: Any) -> Response:
        """PATCH *url*; see `get`."""
        return await _http.fetch(self, "PATCH", url, **kwargs)

    async def delete(self, url: str, **kwargs: Any) -> Response:
        """DELETE *url*; see `get`."""
        return await _http.fetch(self, "DELETE", url, **kwargs)

    async def head(self, url: str, **kwargs: Any) -> Response:
        """HEAD *url*; see `get`."""
        return await _http.fetch(self, "HEAD", url, **kwargs)

    async def options(self, url: str, **kwargs: Any) -> Response:
        """OPTIONS *url*; see `get`."""
        return await _http.fetch(self, "OPTIONS", url, **kwargs)

    def smtp(
        self,
        host: str,
        port: int = 587,
        *,
        security: str | None = None,
        username: str | None = None,
        password: str | None = None,
        local_hostname: str | None = None,
        timeout: float | None = None,
    ) -> AbstractAsyncContextManager[SmtpClient]:
        """``async with mgr.smtp(host) as client:`` a pooled SMTP session (see `SmtpClient`).

        *security* is ``"starttls"`` (required; the default on every port but 465), ``"tls"``
        (implicit; the default for 465) or ``"none"``. Credentials never cross in clear.
        """
        from ._smtp import open_smtp

        return open_smtp(
            self,
            host,
            port,
            security=security,
            username=username,
            password=password,
            local_hostname=local_hostname,
            timeout=timeout,
        )

    def ftp(
        self,
        host: str,
        port: int = 21,
        *,
        security: str | None = None,
        username: str = "anonymous",
        password: str = "",
        timeout: float | None = None,
    ) -> AbstractAsyncContextManager[FtpClient]:
        """``async with mgr.ftp(host) as client:`` a pooled FTPS session (see `FtpClient`).

        *security* is ``"starttls"`` (explicit ``AUTH TLS``; the default on every port but
        990), ``"tls"`` (implicit; the default for 990) or ``"none"`` (anonymous login only:
        credentials never cross in clear). *timeout* bounds every step (``None``: 300 s each).
        """
        from ._ftp import open_ftp

        return open_ftp(
            self,
            host,
            port,
            security=security,
            username=username,
            password=password,
            timeout=timeout,
        )

    def _add_closer(self, closer: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run *closer* when the manager closes (a protocol layer's own pools)."""
        self._closers.append(closer)

    # -- lifecycle -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ManagerClosedError("the connection manager is closed")

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run a background close (or similar) that `aclose` waits for."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

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
        try:
            service_points = list(self._service_points.values())
            streams = {stream for sp in service_points for stream in sp._active}
            idle: list[Any] = []
            for sp in service_points:
                idle += sp._shutdown()
            for conn in idle:
                self._spawn(close_quietly(conn))
            for close in self._closers:
                self._spawn(close())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_GRACE):
                    while self._tasks:  # a close may spawn more (HTTP sessions do)
                        await asyncio.wait(list(self._tasks))
            for sp in service_points:
                for stream in list(sp._active):
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

    async def __aenter__(self) -> ConnectionManager:
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
        return f"<ConnectionManager {protocols} {state}>"


def _as_protocol(value: SecurityProtocol | int | str) -> SecurityProtocol:
    if isinstance(value, str):
        return SecurityProtocol.parse(value)
    return SecurityProtocol.validate(value)
