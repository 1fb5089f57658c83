"""Resolving an endpoint (with a bounded reuse of its addresses) and connecting a socket."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohappyeyeballs

from ._errors import ConnectError

__all__ = ["HAPPY_EYEBALLS_DELAY", "AddressCache", "connect_socket"]

Address = tuple[int, tuple[Any, ...]]
"""(address family, socket address)."""

SocketFactory = Callable[[int], socket.socket]
"""Makes an unconnected TCP socket of an address family (``SocketOptions.create_socket``)."""


class AddressCache:
    """The resolved addresses of one host and port, reused for ``refresh`` seconds.

    .NET's ``DnsRefreshTimeout``: a service point whose DNS moves picks the change up at the
    next connection after the refresh time, or at once after a connect to every address failed.
    """

    def __init__(self, host: str, port: int, refresh: float, *, endpoint: str) -> None:
        self.host = host
        self.port = port
        self.refresh = refresh
        self._endpoint = endpoint
        self._cached: tuple[float, list[Address]] | None = None
        self._literal = _literal_address(host, port)

    @property
    def cached(self) -> list[Address] | None:
        """The addresses in use now, if any (``None`` once expired or invalidated)."""
        if self._cached is None or time.monotonic() >= self._cached[0]:
            return None
        return self._cached[1]

    def invalidate(self) -> None:
        """Resolve again at the next connection."""
        self._cached = None

    def known(self) -> list[Address] | None:
        """The addresses to use without a lookup (an IP literal, or a fresh cache), else
        ``None`` (then `addresses` resolves)."""
        return self._literal if self._literal is not None else self.cached

    async def addresses(self) -> list[Address]:
        """The host's addresses (see `resolve`); a resolver failure is a `ConnectError`."""
        try:
            return await self.resolve()
        except OSError as exc:
            raise ConnectError(
                f"cannot resolve {self.host!r} for {self._endpoint}: {exc.strerror or exc}",
                endpoint=self._endpoint,
            ) from exc

    async def resolve(self) -> list[Address]:
        """The host's addresses: an IP literal as it is, a name from the cache or the resolver.

        A resolver failure is the resolver's own `OSError`, for a caller that words it itself
        (a proxy's).
        """
        if self._literal is not None:
            return self._literal
        cached = self.cached
        if cached is not None:
            return cached
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        found: list[Address] = [(family, sockaddr) for family, _, _, _, sockaddr in infos]
        self._cached = (time.monotonic() + self.refresh, found)
        return found


HAPPY_EYEBALLS_DELAY = 0.25
"""Seconds before the next resolved address is tried while one is still connecting (RFC 8305
§8's recommended "Connection Attempt Delay")."""


async def connect_socket(
    addresses: list[Address],
    make_socket: SocketFactory,
    *,
    delay: float | None = HAPPY_EYEBALLS_DELAY,
    interleave: int | None = None,
) -> socket.socket:
    """A socket connected to the first of *addresses* that answers; the last error otherwise.

    Happy Eyeballs (RFC 8305): while an attempt is still connecting, the next address is tried
    after *delay* seconds (``None``: one at a time, each to its end), address families
    interleaved (*interleave* addresses of one family before the next; 1 by default when
    there is a delay), so an address that swallows SYNs costs at most *delay*, not the whole
    connect timeout. Each socket comes from *make_socket*: the manager's socket options, or the
    HTTP connector's factory, which counts every socket toward its connection limit; the
    attempts that lose are closed.
    """
    if not addresses:
        raise OSError("no address to connect to")
    if len(addresses) == 1:
        # No race to run: what aiohappyeyeballs does with one address (its error is the
        # connect's own), without building its address records and exception lists.
        family, sockaddr = addresses[0]
        sock = make_socket(family)
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, sockaddr)
        except BaseException:
            sock.close()
            raise
        return sock
    infos = [
        (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)
        for family, sockaddr in addresses
    ]
    return await aiohappyeyeballs.start_connection(
        infos,
        happy_eyeballs_delay=delay,
        interleave=interleave,
        socket_factory=lambda info: make_socket(info[0]),
    )


def _literal_address(host: str, port: int) -> list[Address] | None:
    if ":" not in host:
        # IPv4, or a name: inet_pton takes what ipaddress takes (four decimal octets, no
        # leading zeros) at a fraction of the cost, and a name fails at once.
        try:
            socket.inet_pton(socket.AF_INET, host)
        except (OSError, ValueError):
            return None
        return [(socket.AF_INET, (host, port))]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (host, port))]


def peer_address(peer: tuple[str, int]) -> list[Address]:
    """*peer* (an IP address and port) as the one address to connect to."""
    found = _literal_address(*peer)
    if found is None:
        raise ValueError(f"{peer[0]!r} is not an IP address")
    return found
