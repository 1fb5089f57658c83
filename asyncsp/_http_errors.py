"""The HTTP error boundary: every aiohttp, `ssl` and `OSError` exception becomes an asyncsp one.

One function, `translate_http_error`, decides; the HTTP modules call it wherever an aiohttp
call can fail (sending, redirects, reading the body, streaming ``content``) and raise its
result with `raise_from`, from the cause `cause_for` chooses. Connect-phase failures go on to
`translate_connect_error`, the boundary streams, SMTP and FTP share, so a refused certificate
reads the same everywhere.
"""

from __future__ import annotations

import asyncio
import builtins
from typing import NoReturn

import aiohttp

from ._errors import AsyncspError, HttpError, ManagerClosedError, ProxyError, TimeoutError
from ._http_tunnel import TunnelFailed
from ._proxy import ProxyRoute
from ._tls import HandshakeRefused
from ._translate import translate_connect_error

__all__ = ["cause_for", "raise_from", "translate_http_error"]

_CHAIN_DEPTH = 8
"""How far down ``__cause__``/``__context__`` we look for our handshake verdict, or for
credentials (a longer chain is not chained)."""


def _handshake_verdict(exc: BaseException) -> HandshakeRefused | None:
    """Our `HandshakeRefused`, wherever aiohttp and asyncio wrapped it."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending and len(seen) < _CHAIN_DEPTH:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, HandshakeRefused):
            return current
        if isinstance(current, aiohttp.ClientConnectorCertificateError):
            pending.append(current.certificate_error)
        if isinstance(current, aiohttp.ClientConnectorError):
            pending.append(current.os_error)
        pending += [current.__cause__, current.__context__]
    return None


def _chain(exc: BaseException) -> tuple[list[BaseException], bool]:
    """*exc* and what it chains (causes and contexts), at most `_CHAIN_DEPTH` of them; and
    whether that is all of them."""
    found: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or any(current is seen for seen in found):
            continue
        if len(found) == _CHAIN_DEPTH:
            return found, False
        found.append(current)
        pending += [current.__cause__, current.__context__]
    return found, True


def cause_for(
    error: AsyncspError, exc: BaseException, route: ProxyRoute | None
) -> BaseException | None:
    """What to raise *error* (translated from *exc*) ``from``, with `raise_from`.

    *exc* itself, except: an error that already has a cause keeps it (a handshake verdict
    whose cause is the validator's exception), as does one that came through whole; and a
    cause that could show proxy credentials is withheld (``None``). aiohttp's exceptions can
    quote a request's headers (``repr`` of a ``ClientResponseError`` shows its
    ``request_info``), and over a proxy those carry ``Proxy-Authorization``.
    """
    if error.__cause__ is not None or error is exc or isinstance(exc, TunnelFailed):
        return error.__cause__
    if route is None or not route.secrets:
        return exc
    links, whole = _chain(exc)
    if not whole:
        return None  # too long to check
    for link in links:
        shown = f"{link!s}\n{link!r}\n{link.args!r}\n{vars(link)!r}"
        if any(secret in shown for secret in route.secrets):
            return None
    return exc


def raise_from(error: AsyncspError, cause: BaseException | None) -> NoReturn:
    """Raise *error* from *cause*, and chained to nothing else.

    Raised while an exception is being handled, *error* would also get that one as its
    ``__context__``: hidden from tracebacks by ``from``, but there for whatever walks or
    serialises the chain (error trackers do), so a cause withheld for its credentials would
    still be found. The chain is what *cause* says, wherever this is called from.
    """
    try:
        raise error from cause
    finally:
        error.__context__ = None


def translate_http_error(
    exc: BaseException,
    *,
    endpoint: str,
    what: str,
    timeout: float | None = None,
    manager_closed: bool = False,
    route: ProxyRoute | None = None,
) -> AsyncspError:
    """The asyncsp error for *exc*, raised by an HTTP exchange with *endpoint*.

    *what* names the exchange without secrets (``"GET /path"``: no query, no credentials);
    *timeout* is the total limit in force, for the message; *route* the proxy the exchange
    went through. The caller raises the result with
    ``raise_from(result, cause_for(result, exc, route))``.
    """
    error = _translate(exc, endpoint, what, timeout, manager_closed, route)
    if route is not None and route.secrets:
        message = str(error)
        scrubbed = route.scrub(message)
        if scrubbed != message:
            error.args = (scrubbed,)
    return error


def _translate(
    exc: BaseException,
    endpoint: str,
    what: str,
    timeout: float | None,
    manager_closed: bool,
    route: ProxyRoute | None,
) -> AsyncspError:
    if isinstance(exc, AsyncspError) and (
        not manager_closed or isinstance(exc, ManagerClosedError)
    ):
        return exc  # ours already (a CONNECT tunnel's verdict), unless the close caused it
    if manager_closed:
        # Whatever aiohttp raised while its session was torn down (a reset, a cancelled
        # waiter, an AssertionError from a queued request): the cause is the close.
        return ManagerClosedError(
            f"the connection manager was closed; {what} to {endpoint} was aborted",
            endpoint=endpoint,
        )
    if isinstance(exc, TunnelFailed):
        return exc.error
    verdict = _handshake_verdict(exc)
    if verdict is not None:
        return verdict.error
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return translate_connect_error(exc.certificate_error, endpoint, during_tls=True)
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return translate_connect_error(exc.os_error, endpoint, during_tls=True)
    if isinstance(exc, aiohttp.ClientProxyConnectionError) and route is not None:
        detail = exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__
        return ProxyError(
            f"{endpoint}: cannot connect to the proxy {route.url}: {detail}",
            endpoint=endpoint,
            proxy=route.url,
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        # aiohttp wraps the TCP connect and the TLS handshake alike. A connection reset (or
        # lost) only happens once the TCP connection stands: over https, in the handshake,
        # typically a server that allows no version or suite the policy does.
        in_handshake = endpoint.startswith("https://") and isinstance(
            exc.os_error, ConnectionResetError | ConnectionAbortedError | BrokenPipeError
        )
        return translate_connect_error(exc.os_error, endpoint, during_tls=in_handshake)
    limit = f" within {timeout} s" if timeout is not None else ""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        via = f" through the proxy {route.url}" if route is not None else ""
        return TimeoutError(f"{endpoint}: connecting{via} did not finish{limit}", endpoint=endpoint)
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return TimeoutError(
            f"{endpoint}: {what}: the server sent nothing for longer than the read timeout; "
            "the connection was closed",
            endpoint=endpoint,
        )
    if isinstance(exc, asyncio.TimeoutError | builtins.TimeoutError):
        via = f" (through the proxy {route.url})" if route is not None else ""
        return TimeoutError(
            f"{endpoint}: {what}{via} did not finish{limit}; the connection was closed",
            endpoint=endpoint,
        )
    if isinstance(exc, aiohttp.ClientResponseError):
        # The parser's verdict on the status line or headers (aiohttp reports it as a 400);
        # str(exc) would add the URL, which may carry a query with secrets.
        return HttpError(
            f"{endpoint}: {what}: malformed or oversized response ({exc.message})",
            endpoint=endpoint,
        )
    if isinstance(exc, aiohttp.ClientPayloadError):
        return HttpError(
            f"{endpoint}: {what}: the response body is incomplete or cannot be decoded ({exc})",
            endpoint=endpoint,
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return HttpError(
            f"{endpoint}: {what}: the server closed the connection before the response was "
            "complete",
            endpoint=endpoint,
        )
    if isinstance(exc, aiohttp.ClientConnectionError | OSError):
        detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return HttpError(
            f"{endpoint}: {what}: the connection was lost ({detail})", endpoint=endpoint
        )
    return HttpError(f"{endpoint}: {what} failed: {type(exc).__name__}: {exc}", endpoint=endpoint)
