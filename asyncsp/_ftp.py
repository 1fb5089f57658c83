"""FTPS client on asyncsp streams. Placeholder until the FTP layer lands."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._manager import ConnectionManager

__all__ = ["FtpClient", "FtpEntry", "open_ftp"]


class FtpEntry:
    """One directory entry."""


class FtpClient:
    """An FTP session."""


def open_ftp(
    manager: ConnectionManager, host: str, port: int, **kwargs: Any
) -> AbstractAsyncContextManager[FtpClient]:
    raise NotImplementedError("FTP is not available yet")
