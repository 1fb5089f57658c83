"""Socket options applied to every new connection of every protocol."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import socket
import struct
from typing import Any

__all__ = ["SocketOptions", "reset_on_close"]

_LINGER_RESET = struct.pack("ii", 1, 0)
"""``SO_LINGER`` on, zero seconds: closing the socket sends RST."""


def reset_on_close(sock: Any) -> None:
    """Make the close of *sock* (a socket, or asyncio's ``TransportSocket``) a TCP reset.

    For a connection cut off mid-exchange. A socket closed with nothing left unread (on
    Python 3.12+ even while a body is still arriving) sends a FIN, an orderly end: a peer
    would take it for a whole stream, or sit blocked on our full window until its FIN timeout
    (60 s on Linux), holding its socket and buffers. No ``shutdown`` before: that sends the FIN.
    """
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError, ValueError):  # already closed
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SocketOptions:
    """What a `ConnectionManager` sets on each socket before it connects."""

    tcp_nodelay: bool = True
    """Send small writes at once (the inverse of .NET's ``UseNagleAlgorithm``)."""
    tcp_keepalive: tuple[float, float] | None = None
    """``(idle, interval)`` seconds for TCP keep-alive probes (.NET's ``SetTcpKeepAlive``)."""
    local_address: str | None = None
    """Bind outgoing sockets to this local IP address (.NET's ``BindIPEndPointDelegate``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.tcp_nodelay, bool):
            raise ValueError(f"tcp_nodelay must be a bool, not {self.tcp_nodelay!r}")
        if self.tcp_keepalive is not None:
            keepalive = self.tcp_keepalive
            if not (
                isinstance(keepalive, tuple)
                and len(keepalive) == 2
                and all(
                    isinstance(v, int | float) and not isinstance(v, bool) and 1 <= v <= 32767
                    for v in keepalive
                )
            ):
                raise ValueError(
                    "tcp_keepalive must be (idle, interval) in seconds, each from 1 to 32767, "
                    f"not {keepalive!r}"
                )
        if self.local_address is not None:
            try:
                ipaddress.ip_address(self.local_address)
            except ValueError:
                raise ValueError(
                    f"local_address must be an IP address such as '127.0.0.2', "
                    f"not {self.local_address!r}"
                ) from None

    def create_socket(
        self, family: int, proto: int = 0, *, socket_class: type[socket.socket] = socket.socket
    ) -> socket.socket:
        """A non-blocking TCP socket of *family* with these options applied (and bound).

        *socket_class* makes a `socket.socket` subclass directly, so a caller that tracks its
        sockets needs no second socket object around the descriptor.
        """
        sock = socket_class(family, socket.SOCK_STREAM, proto)
        try:
            sock.setblocking(False)
            self.apply(sock, family)
            if self.local_address is not None:
                local_family = (
                    socket.AF_INET6
                    if ipaddress.ip_address(self.local_address).version == 6
                    else socket.AF_INET
                )
                if local_family != family:
                    raise OSError(
                        f"local_address {self.local_address} cannot reach an address of "
                        f"family {socket.AddressFamily(family).name}"
                    )
                sock.bind((self.local_address, 0))
        except BaseException:
            sock.close()
            raise
        return sock

    def apply(self, sock: socket.socket, family: int | None = None) -> None:
        """Set the TCP options on *sock* (without binding it).

        Pass *family* when it is known: ``sock.family`` builds an enum member on every read.
        """
        if family is None:
            family = sock.family
        if family == socket.AF_INET or family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(self.tcp_nodelay))
            if self.tcp_keepalive is not None:
                idle, interval = (max(1, round(v)) for v in self.tcp_keepalive)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                if hasattr(socket, "TCP_KEEPIDLE"):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
                if hasattr(socket, "TCP_KEEPINTVL"):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
