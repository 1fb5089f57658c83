"""`ConnectionManager`: the core registry with an entry point for each protocol.

Every change to how a user reaches a protocol from the manager (a new verb, a new protocol's
``mgr.<name>()``) belongs in this file, and nothing else does: settings, service points,
streams and the close are the core's (`asyncsp._registry`), and what a protocol does is its
own module's. This is the one module that imports HTTP, SMTP and FTP together.
"""

from __future__ import annotations

from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any

from . import _http
from ._ftp import open_ftp
from ._http import Response
from ._registry import ServicePointLimitError, ServicePointRegistry
from ._smtp import open_smtp

__all__ = ["ConnectionManager", "ServicePointLimitError"]


class ConnectionManager(ServicePointRegistry):
    """Owns service points and their connections; the async ``ServicePointManager``.

    Every setting not given follows `asyncsp.defaults` live (``None`` says the same, except
    for ``happy_eyeballs_delay``, where it means one address at a time). Use it as
    ``async with ConnectionManager() as mgr:`` or call `aclose`; closing closes every
    connection it owns and fails whatever still waits or runs with `ManagerClosedError`.
    """

    def request(
        self, method: str, url: str, **kwargs: Any
    ) -> AbstractAsyncContextManager[Response]:
        """``async with mgr.request("GET", url) as resp:`` streams a response (see `Response`)."""
        return _http.request(self, method, url, **kwargs)

    # Each returns the HTTP layer's own coroutine: awaiting ``mgr.get(url)`` awaits `fetch`
    # itself, with no frame of ours to pass through on every resume (hot path).
    def get(self, url: str, **kwargs: Any) -> Coroutine[Any, Any, Response]:
        """GET *url*, read the body (at most ``max_body_size``) and free the connection."""
        return _http.fetch(self, "GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Coroutine[Any, Any, Response]:
        """POST to *url*; see `get`."""
        return _http.fetch(self, "POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> Coroutine[Any, Any, Response]:
        """PUT to *url*; see `get`."""
        return _http.fetch(self, "PUT", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> Coroutine[Any, Any, Response]:
        """PATCH *url*; see `get`."""
        return _http.fetch(self, "PATCH", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> Coroutine[Any, Any, Response]:
        """DELETE *url*; see `get`."""
        return _http.fetch(self, "DELETE", url, **kwargs)

    def head(self, url: str, **kwargs: Any) -> Coroutine[Any, Any, Response]:
        """HEAD *url*; see `get`."""
        return _http.fetch(self, "HEAD", url, **kwargs)

    def options(self, url: str, **kwargs: Any) -> Coroutine[Any, Any, Response]:
        """OPTIONS *url*; see `get`."""
        return _http.fetch(self, "OPTIONS", url, **kwargs)

    # The SMTP and FTP modules own their signatures and documentation; these are they.
    smtp = open_smtp
    ftp = open_ftp
