"""HTTP through service points (aiohttp underneath). Placeholder until the HTTP layer lands."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._manager import ConnectionManager

__all__ = ["Response", "fetch", "request"]


class Response:
    """An HTTP response."""


def request(manager: ConnectionManager, method: str, url: str, **kwargs: Any) -> Any:
    raise NotImplementedError("HTTP is not available yet")


async def fetch(manager: ConnectionManager, method: str, url: str, **kwargs: Any) -> Response:
    raise NotImplementedError("HTTP is not available yet")
