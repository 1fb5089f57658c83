"""SMTP client on asyncsp streams. Placeholder until the SMTP layer lands."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._manager import ConnectionManager

__all__ = ["SendResult", "SmtpClient", "SmtpReply", "open_smtp"]


class SmtpReply:
    """One SMTP reply."""


class SendResult:
    """The outcome of one message."""


class SmtpClient:
    """An SMTP session."""


def open_smtp(
    manager: ConnectionManager, host: str, port: int, **kwargs: Any
) -> AbstractAsyncContextManager[SmtpClient]:
    raise NotImplementedError("SMTP is not available yet")
