"""HTTP through service points, with aiohttp underneath.

Every change to how an HTTP exchange runs (arguments, redirects, retries, reading the body)
belongs in this file; the per-endpoint gate and connectors belong in ``_http_pool.py`` and
``_http_connector.py`` (the overrides of aiohttp's connector in ``_http_pool_connector.py``),
the error translation in ``_http_errors.py``, and nothing of HTTP belongs outside the
``_http*`` modules.

`request` (streaming) and `fetch` (body read, connection freed) are what
``ConnectionManager.request``/``get``/``post``/... call. Each hop of a redirect goes through the
service point of its own endpoint (`HttpLayer.endpoint`) and so under that endpoint's policy,
limits and statistics; redirects are followed here, never by aiohttp (RFC 9110 §15.4).
"""

from __future__ import annotations

import asyncio
import builtins
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.http import RawResponseMessage
from multidict import CIMultiDict
from yarl import URL

from ._errors import HttpArgumentError, HttpError, ManagerClosedError, TimeoutError
from ._http_errors import cause_for, raise_from, translate_http_error
from ._http_pool import LAYER_SLOT, HttpLayer
from ._http_response import Response, ResponseContent
from ._http_sockets import CLAIM, RequestClaim

if TYPE_CHECKING:
    from types import TracebackType

    from ._http_connector import Connector, TrackedResponse
    from ._http_pool import HttpEndpoint
    from ._registry import ServicePointRegistry

__all__ = ["Response", "ResponseContent", "fetch", "request"]

MAX_REDIRECTS = 10
"""Redirects followed by default before `HttpError` (browsers and aiohttp stop near here)."""
REDIRECT_DRAIN_LIMIT = 64 * 1024
"""A redirect body up to this size is read so its connection can be reused; larger ones close it."""

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# RFC 9110 §9.2.2; only these are sent again after a stale pooled connection (never POST).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_METHODS = {m: m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")}
# A method (RFC 9110 §9.1) and a field name (§5.1) are tokens (§5.6.2).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# CR, LF and NUL in a field value must be refused (RFC 9110 §5.5): they would end the field,
# or the head, where the caller did not mean to (request splitting). Other controls but HTAB
# are no field content either.
_NOT_FIELD_CONTENT = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_PASSED_TO_AIOHTTP = frozenset(
    {
        "params",
        "headers",
        "data",
        "json",
        "cookies",
        "skip_auto_headers",
        "chunked",
        "compress",
        "expect100",
        "read_until_eof",
        "read_bufsize",
        "auto_decompress",
        "max_line_size",
        "max_field_size",
        "max_headers",
    }
)
_OURS = frozenset(
    {
        "timeout",
        "allow_redirects",
        "max_redirects",
        "allow_insecure_redirects",
        "max_body_size",
        "auth",
    }
)
_FROM_POLICY = "TLS settings come from the TlsPolicy (mgr.policy, or sp.policy for one endpoint)"
_REFUSED = {
    "ssl": _FROM_POLICY,
    "verify_ssl": _FROM_POLICY,
    "ssl_context": _FROM_POLICY,
    "fingerprint": "pin certificates with TlsPolicy(pins=...)",
    "server_hostname": "the host name is the URL's: TLS sessions are cached per host name",
    "proxy": "proxies are set on the ConnectionManager",
    "proxy_auth": "proxies are set on the ConnectionManager",
    "proxy_headers": "proxies are set on the ConnectionManager",
    "raise_for_status": "check Response.status (or Response.ok)",
}
_DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=5 * 60, sock_connect=30)
"""aiohttp's default, which a session uses when a call gives no ``timeout``."""
_MIN_LEFT = 0.001
"""Seconds aiohttp gets when what came before (a slot wait, a stale attempt) used up the total."""
# Headers that describe a request body: dropped with the body when a redirect turns into GET.
_BODY_HEADERS = ("Content-Type", "Content-Length", "Content-Encoding", "Transfer-Encoding")
# Credentials that must not follow a redirect to another origin (RFC 9110 §15.4, last para);
# another port is another origin. A caller's Proxy-Authorization goes too (as in requests):
# the route to the new origin is not the one it was given for.
_ORIGIN_HEADERS = ("Authorization", "Cookie", "Proxy-Authorization")
# Bodies we can send again unchanged after a 307/308.
_REPLAYABLE = (bytes, bytearray, str, Mapping, list, tuple)


class _Call:
    """One call of `request`/`fetch`, its options validated once (a plain class: one is made
    per request, and a dataclass's keyword defaults cost more to fill in)."""

    __slots__ = (
        "allow_insecure",
        "follow",
        "max_body_size",
        "max_redirects",
        "method",
        "options",
        "total",
        "url",
    )

    def __init__(
        self, method: str, url: URL, options: dict[str, Any], max_body_size: int | None
    ) -> None:
        self.method = method
        self.url = url
        self.options = options  # handed to aiohttp's ClientSession.request as they are
        self.max_body_size = max_body_size
        self.follow = True
        self.max_redirects = MAX_REDIRECTS
        self.allow_insecure = False
        self.total: float | None = None  # the total timeout given, for messages


def _prepare(
    manager: ServicePointRegistry, method: str, url: str | URL, kwargs: dict[str, Any]
) -> _Call:
    known = _METHODS.get(method)
    if known is None:
        if not isinstance(method, str) or _TOKEN.fullmatch(method) is None:
            raise HttpArgumentError(
                f"method must be an HTTP method (a token: letters, digits and !#$%&'*+-.^_`|~) "
                f"such as 'GET' or 'M-SEARCH', not {method!r}"
            )
        known = method.upper()
    target = url if isinstance(url, URL) else URL(url)
    if target.scheme not in ("http", "https") or not target.raw_host:
        raise ValueError(
            "HTTP requests need an absolute http:// or https:// URL with a host, not "
            f"{target.with_user(None).with_query(None)!s}"
        )
    headers = kwargs.get("headers")
    if headers is not None:
        kwargs["headers"] = _checked_headers(headers)
    call = _Call(known, target, kwargs, manager.max_body_size)
    if kwargs.keys() <= _PASSED_TO_AIOHTTP:
        return call  # none of ours to take out (the common case: headers, params, data)
    unknown = kwargs.keys() - _PASSED_TO_AIOHTTP - _OURS
    if unknown:
        name = sorted(unknown)[0]
        hint = _REFUSED.get(name, "it is not an option of asyncsp HTTP requests")
        raise TypeError(f"unexpected keyword argument {name!r}: {hint}")
    call.follow = bool(kwargs.pop("allow_redirects", True))
    call.max_redirects = kwargs.pop("max_redirects", MAX_REDIRECTS)
    if (
        isinstance(call.max_redirects, bool)
        or not isinstance(call.max_redirects, int)
        or (call.max_redirects < 0)
    ):
        raise ValueError(f"max_redirects must be an int >= 0, not {call.max_redirects!r}")
    call.allow_insecure = bool(kwargs.pop("allow_insecure_redirects", False))
    if "max_body_size" in kwargs:
        limit = kwargs.pop("max_body_size")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise ValueError(f"max_body_size must be an int >= 0 or None, not {limit!r}")
        call.max_body_size = limit
    auth = kwargs.pop("auth", None)
    if auth is not None:
        if not isinstance(auth, aiohttp.BasicAuth):
            raise TypeError("auth must be an aiohttp.BasicAuth (or send an Authorization header)")
        headers = CIMultiDict(kwargs.get("headers") or {})
        headers["Authorization"] = auth.encode()
        kwargs["headers"] = headers
    if "timeout" in kwargs:
        timeout = kwargs["timeout"]
        if timeout is None:
            kwargs["timeout"] = aiohttp.ClientTimeout()  # no limit at all
        elif isinstance(timeout, aiohttp.ClientTimeout):
            call.total = timeout.total
        elif isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0:
            call.total = float(timeout)
            kwargs["timeout"] = aiohttp.ClientTimeout(total=call.total)
        else:
            raise ValueError(
                f"timeout must be seconds > 0, an aiohttp.ClientTimeout or None, not {timeout!r}"
            )
    return call


def _checked_headers(headers: Any) -> Any:
    """*headers* (a mapping or pairs), refused before anything is sent if a field could not go
    on the wire as given; pairs given as an iterator come back as a list."""
    pairs = headers.items() if isinstance(headers, Mapping) else list(headers)
    for name, value in pairs:
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(
                f"header names and values must be str, not {type(name).__name__} and "
                f"{type(value).__name__} (header {name!r})"
            )
        if _TOKEN.fullmatch(name) is None:
            raise HttpArgumentError(
                f"header name {name!r} is not a token (RFC 9110 §5.1); nothing was sent"
            )
        if _NOT_FIELD_CONTENT.search(value) is not None:
            # The value is not quoted: it may be a credential.
            raise HttpArgumentError(
                f"header {name} has a control character (CR, LF, NUL...) in its value, which "
                "would end the field early (RFC 9110 §5.5); nothing was sent"
            )
    return headers if isinstance(headers, Mapping) else pairs


# -- one hop -----------------------------------------------------------------------------


async def _send(
    layer: HttpLayer,
    call: _Call,
    method: str,
    url: URL,
    options: dict[str, Any],
    *,
    retry: bool = True,
) -> Response:
    """Send one request through the service point of *url*; the response, headers read.

    *retry* False: this is the one retry after a stale pooled connection, on a new one.
    """
    endpoint = layer.endpoint(url)
    connector = endpoint.try_begin()
    if connector is None:
        connector, options = await _begin_waiting(endpoint, method, url, options)
    claim = RequestClaim(connector, not retry)
    started = time.monotonic()
    try:
        # How the connector's hooks find the claim: aiohttp's pool lookup runs before
        # `_request` first waits, unless trace hooks run first (see `PoolConnector._get`).
        pool = connector.aiohttp_connector
        if connector.traced:
            claim.token = CLAIM.set(claim)
        else:
            pool.asyncsp_claim = claim
        try:
            # ClientSession._request is what .request() wraps in a context manager we do not
            # need; skipping the wrapper saves a microsecond per request (pinned aiohttp range).
            aio = await connector.session._request(method, url, allow_redirects=False, **options)
        finally:
            pool.asyncsp_claim = None
            if claim.token is not None:
                CLAIM.reset(claim.token)
    except BaseException as exc:
        endpoint.request_ended(connector, None, claim)
        if not isinstance(exc, Exception):
            raise
        if retry and _may_retry(layer, method, options, exc, claim):
            # Once, on a new connection (the pool may hold more that are stale; the oldest
            # are closed for room), within what is left of the same timeout.
            left = _time_taken(options, time.monotonic() - started)
            return await _send(layer, call, method, url, left, retry=False)
        error = translate_http_error(
            exc,
            endpoint=endpoint.sp.address,
            what=f"{method} {url.raw_path}",
            timeout=call.total,
            manager_closed=layer.closed,
            route=endpoint.route,
        )
        raise_from(error, cause_for(error, exc, endpoint.route))
    tracked: TrackedResponse = aio  # type: ignore[assignment]  # the session's response_class
    state = tracked.asyncsp_state
    if state is not None and state.ssl_object is not None:
        # The first response on a new connection: its TLS 1.3 tickets have arrived by now.
        connector.remember_session(state)
    return Response(tracked, endpoint, connector, call)


async def _begin_waiting(
    endpoint: HttpEndpoint, method: str, url: URL, options: dict[str, Any]
) -> tuple[Connector, dict[str, Any]]:
    """Wait for a gate slot within the request's total and connect timeouts (aiohttp counts
    the wait for a pooled connection in both); aiohttp gets what is left of them."""
    timeout: aiohttp.ClientTimeout = options.get("timeout") or _DEFAULT_TIMEOUT
    bounds = [t for t in (timeout.total, timeout.connect) if t is not None]
    if not bounds:
        return await endpoint.begin(), options
    limit = min(bounds)
    started = time.monotonic()
    try:
        connector = await endpoint.begin(limit)
    except builtins.TimeoutError:
        address = endpoint.sp.address
        error = TimeoutError(
            f"{address}: {method} {url.raw_path}: no connection became free within {limit} s "
            f"(connection_limit={endpoint.sp.connection_limit})",
            endpoint=address,
        )
        raise_from(error, None)
    return connector, _time_taken(options, time.monotonic() - started, connect=True)


def _time_taken(options: dict[str, Any], spent: float, *, connect: bool = False) -> dict[str, Any]:
    """*options* with *spent* seconds taken off their total timeout (and off the connect
    timeout, when they were spent getting a connection): one deadline for a request's wait
    for a slot, its attempt and its retry."""
    timeout: aiohttp.ClientTimeout = options.get("timeout") or _DEFAULT_TIMEOUT
    if timeout.total is None and (not connect or timeout.connect is None):
        return options
    total = None if timeout.total is None else max(timeout.total - spent, _MIN_LEFT)
    connect_left = timeout.connect
    if connect and connect_left is not None:
        connect_left = max(connect_left - spent, _MIN_LEFT)
    return {**options, "timeout": _retimed(timeout, total=total, connect=connect_left)}


def _retimed(
    timeout: aiohttp.ClientTimeout, *, total: float | None, connect: float | None
) -> aiohttp.ClientTimeout:
    """*timeout* with another total and connect timeout."""
    return aiohttp.ClientTimeout(
        total=total,
        connect=connect,
        sock_read=timeout.sock_read,
        sock_connect=timeout.sock_connect,
        ceil_threshold=timeout.ceil_threshold,
    )


def _may_retry(
    layer: HttpLayer, method: str, options: dict[str, Any], exc: Exception, claim: RequestClaim
) -> bool:
    """Whether a request that failed before its response may be sent again, once.

    Only after a connection taken from the pool broke before a byte of the answer arrived: the
    server may have closed it while idle, and never seen the request (RFC 9112 §9.3.1). A new
    connection that breaks, or an answer cut short, means the server may have acted on it.
    """
    if (
        claim.protocol is None
        or method not in _IDEMPOTENT
        or layer.closed
        or not isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)
        or isinstance(exc, aiohttp.ClientConnectorError)
        or not (options.get("data") is None or isinstance(options["data"], bytes | str))
    ):
        return False
    if isinstance(exc, aiohttp.ServerDisconnectedError) and isinstance(
        exc.message, RawResponseMessage
    ):
        return False  # aiohttp's parser made the start of a response of what arrived
    # Any byte of an answer counts (a reset can follow a partial one); counted after TLS, an
    # idle close's close_notify is not among them.
    return not claim.received_on_pooled()


# -- redirects ---------------------------------------------------------------------------


def _same_origin(a: URL, b: URL) -> bool:
    return a.scheme == b.scheme and a.raw_host == b.raw_host and a.port == b.port


async def _exchange(layer: HttpLayer, call: _Call) -> Response:
    """Send *call*, following redirects hop by hop when asked; the final response."""
    started = time.monotonic()
    response = await _send(layer, call, call.method, call.url, call.options)
    if call.follow and response.status in _REDIRECTS:
        return await _follow(layer, call, response, started)
    return response


async def _follow(layer: HttpLayer, call: _Call, response: Response, started: float) -> Response:
    """Follow the redirect *response* and those after it, all within the total timeout of the
    exchange that *started* (``time.monotonic``) with the first request; the final response."""
    method, url, options = call.method, call.url, call.options
    total = (options.get("timeout") or _DEFAULT_TIMEOUT).total
    history: list[Response] = []
    try:
        while call.follow and response.status in _REDIRECTS:
            location = response.headers.get("Location")
            if location is None:
                break
            target = _redirect_target(response, url, location, call, len(history))
            await response._discard(REDIRECT_DRAIN_LIMIT)
            history.append(response)
            method, options = _next_request(response.status, method, url, target, options)
            url = target
            if total is not None:
                spent = time.monotonic() - started
                if spent >= total:
                    raise TimeoutError(
                        f"{response.service_point.address}: {call.method} with redirects did "
                        f"not finish within {total} s",
                        endpoint=response.service_point.address,
                    )
                previous: aiohttp.ClientTimeout = options.get("timeout") or _DEFAULT_TIMEOUT
                options["timeout"] = _retimed(
                    previous, total=total - spent, connect=previous.connect
                )
            response = await _send(layer, call, method, url, options)
    except BaseException:
        response.close()
        raise
    response.history = tuple(history)
    return response


def _redirect_target(response: Response, url: URL, location: str, call: _Call, hops: int) -> URL:
    """Where a redirect points, refused when it is one too many or goes somewhere unsafe."""
    address = response.service_point.address
    if hops >= call.max_redirects:
        raise HttpError(
            f"{address}: more than {call.max_redirects} redirects; raise max_redirects= or "
            "follow them yourself with allow_redirects=False",
            endpoint=address,
        )
    try:
        target = url.join(URL(location))
    except ValueError as exc:
        raise HttpError(f"{address}: redirect to an invalid URL ({exc})", endpoint=address) from exc
    if target.scheme not in ("http", "https") or not target.raw_host:
        raise HttpError(
            f"{address}: redirect to a URL that is not http(s):// with a host "
            f"({target.scheme or 'no scheme'}://)",
            endpoint=address,
        )
    if url.scheme == "https" and target.scheme == "http" and not call.allow_insecure:
        raise HttpError(
            f"{address}: refused a redirect from https to plain http "
            f"({target.with_user(None).with_query(None)}); pass allow_insecure_redirects=True "
            "to follow it",
            endpoint=address,
        )
    return target


def _next_request(
    status: int, method: str, url: URL, target: URL, options: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The method and options of the next hop (RFC 9110 §15.4.2-15.4.9)."""
    options = dict(options)
    options.pop("params", None)  # they are part of the URL that redirected us
    headers = CIMultiDict(options.get("headers") or {})
    has_body = options.get("data") is not None or options.get("json") is not None
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        # See Other, and the historical POST -> GET of 301/302 every client performs.
        method = "GET"
        options.pop("data", None)
        options.pop("json", None)
        for name in _BODY_HEADERS:
            headers.popall(name, None)
    elif has_body and not (options.get("data") is None or isinstance(options["data"], _REPLAYABLE)):
        address = f"{url.scheme}://{url.raw_host}:{url.port}"
        raise HttpError(
            f"{address}: cannot follow a {status} redirect: the request body "
            f"({type(options['data']).__name__}) cannot be sent again; pass "
            "allow_redirects=False and follow it yourself",
            endpoint=address,
        )
    if not _same_origin(url, target):
        for name in _ORIGIN_HEADERS:
            headers.popall(name, None)
        options.pop("cookies", None)
    options["headers"] = headers
    return method, options


# -- the entry points --------------------------------------------------------------------


def _stopped_by_close(layer: HttpLayer, call: _Call) -> ManagerClosedError | None:
    """The error for a cancellation the manager's close caused, else None (re-raise it).

    Closing the manager cancels what aiohttp was waiting for inside a request (its
    connector's queue, a DNS lookup); the task itself was not cancelled by anyone.
    """
    task = asyncio.current_task()
    if not layer.closed or task is None or task.cancelling():
        return None
    address = f"{call.url.scheme}://{call.url.raw_host}:{call.url.port}"
    return ManagerClosedError(
        f"the connection manager was closed; {call.method} to {address} was aborted",
        endpoint=address,
    )


async def fetch(
    manager: ServicePointRegistry, method: str, url: str | URL, **kwargs: Any
) -> Response:
    """Send a request, read its body (at most ``max_body_size``) and free the connection."""
    call = _prepare(manager, method, url, kwargs)
    layer = manager.layer(LAYER_SLOT) or HttpLayer.of(manager)  # `of` makes it on first use
    started = time.monotonic()
    try:
        response = await _send(layer, call, call.method, call.url, call.options)
        if call.follow and response._aio.status in _REDIRECTS:  # (not the property: hot path)
            response = await _follow(layer, call, response, started)
        if not response._read_buffered():
            await response.read()
    except asyncio.CancelledError:
        error = _stopped_by_close(layer, call)
        if error is None:
            raise
        raise_from(error, None)
    return response


class _RequestContext:
    """``async with mgr.request(...) as response:``: the response is released on exit."""

    __slots__ = ("_call", "_manager", "_response")

    def __init__(self, manager: ServicePointRegistry, call: _Call) -> None:
        self._manager = manager
        self._call = call
        self._response: Response | None = None

    async def __aenter__(self) -> Response:
        layer = HttpLayer.of(self._manager)
        try:
            self._response = await _exchange(layer, self._call)
        except asyncio.CancelledError:
            error = _stopped_by_close(layer, self._call)
            if error is None:
                raise
            raise_from(error, None)
        return self._response

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._response is not None:
            self._response.release()


def request(
    manager: ServicePointRegistry, method: str, url: str | URL, **kwargs: Any
) -> _RequestContext:
    """``async with`` this to stream a response; see `Response`."""
    return _RequestContext(manager, _prepare(manager, method, url, kwargs))
