"""The sockets an HTTP connector opens, each counted, and the connection each request takes.

A `SocketTicket` follows one socket from its creation by the connector's factory until it is
closed (or detached, or collected), so ``current_connections`` and the request gate stay exact.
A `RequestClaim` tells which of them a request took, so a request that ends early keeps its
gate slot until aiohttp has closed its connection; a `CountingHandler` counts what each
connection receives, so a request that fails on a reused one is sent again only if no byte of
an answer had arrived.
"""

from __future__ import annotations

import contextvars
import socket
import time
import weakref
from typing import TYPE_CHECKING, Any

from aiohttp.client_proto import ResponseHandler

if TYPE_CHECKING:
    from ._http_connector import Connector

__all__ = [
    "CLAIM",
    "CountingHandler",
    "NagleSocket",
    "RequestClaim",
    "SocketTicket",
    "TrackedSocket",
]


class SocketTicket:
    """One socket a connector opened: counted from creation until it is closed or detached."""

    __slots__ = (
        "connector",
        "done",
        "fd",
        "held_slots",
        "opened_at",
        "orphan",
        "protocol",
        "reported",
        "socket",
    )

    def __init__(self, connector: Connector, sock: socket.socket) -> None:
        self.connector = connector
        self.protocol: ResponseHandler | None = None  # known from its first response on
        self.socket = weakref.ref(sock)
        self.fd = sock.fileno()
        self.opened_at = time.monotonic()
        self.done = False
        self.held_slots = 0  # gate slots of finished requests that wait for this close
        self.orphan = False  # closed by us while idle; counted by the gate until gone
        self.reported = False  # connected, and reported so (a losing connect attempt never is)

    def closed(self) -> None:
        """The socket is gone (idempotent: close, detach and the GC backstop all land here)."""
        if self.done:
            return
        self.done = True
        self.connector.socket_gone(self)


class RequestClaim:
    """The connection one request took from its connector, learned while aiohttp connects.

    A request that fails or is cancelled before its response arrives leaves aiohttp closing
    that connection; the request's gate slot stays taken until the socket is gone, so a waiter
    never opens a socket beside one still closing. *fresh*: take no pooled connection (the
    retry after a stale one).
    """

    __slots__ = (
        "_attempts",
        "_received_before",
        "connector",
        "fresh",
        "protocol",
        "ticket",
        "token",
    )

    def __init__(self, connector: Connector, fresh: bool = False) -> None:
        self.connector = connector
        self.fresh = fresh
        self.ticket: SocketTicket | None = None  # the last socket opened for this request
        self._attempts: list[SocketTicket] | None = None  # Happy Eyeballs: every socket tried
        # The pooled connection the request reused, if it did (see `took`).
        self.protocol: ResponseHandler | None = None
        self._received_before = 0
        # Set while the claim is in the task's context (`CLAIM`): for a traced request, or
        # once it may open a connection (Happy Eyeballs' tasks inherit the context).
        self.token: contextvars.Token[RequestClaim | None] | None = None

    def opened(self, ticket: SocketTicket) -> None:
        """A socket was opened for this request. Happy Eyeballs may open several, and the
        one that wins need not be the last, so each is kept until the race is decided."""
        if self._attempts is not None:
            self._attempts.append(ticket)
        elif self.ticket is not None and not self.ticket.done:
            self._attempts = [self.ticket, ticket]
        self.ticket = ticket

    def sole_socket(self) -> SocketTicket | None:
        """The socket opened for this request, when it opened just one and that is open: the
        connection aiohttp just made from it (no race, no second address tried)."""
        ticket = self.ticket
        if self._attempts is None and ticket is not None and not ticket.done:
            return ticket
        return None

    def _own_socket(self) -> SocketTicket | None:
        """The socket opened for this request that is still open (the race's winner), or
        the last one opened."""
        if self._attempts is not None:
            for ticket in self._attempts:
                if not ticket.done:
                    return ticket
        return self.ticket

    def took(self, protocol: ResponseHandler) -> None:
        """The request takes *protocol*'s connection: remembered if it is a pooled one (it has
        carried a response before; a new one's socket is known from `opened`)."""
        state = self.connector.states.get(protocol)
        if state is None:
            return
        self.protocol = protocol
        self._received_before = getattr(protocol, "asyncsp_received", 0)

    def received_on_pooled(self) -> bool:
        """Whether bytes of an answer arrived on the reused pooled connection since the request
        took it (see `CountingHandler`)."""
        protocol = self.protocol
        return (
            protocol is not None
            and getattr(protocol, "asyncsp_received", 0) != self._received_before
        )

    def closing_ticket(self, connector: Connector) -> SocketTicket | None:
        """The ticket of the request's socket if aiohttp is closing it, else None."""
        protocol = self.protocol
        if protocol is not None:
            state = connector.states.get(protocol)
            ticket = state.ticket if state is not None else None
        else:
            ticket = self._own_socket()
            protocol = ticket.protocol if ticket is not None else None
        if ticket is None or ticket.done or ticket.orphan:
            return None
        if protocol is not None and protocol.is_connected():
            return None  # pooled (or in use again): its slot is free now
        return ticket


CLAIM: contextvars.ContextVar[RequestClaim | None] = contextvars.ContextVar(
    "asyncsp_http_claim", default=None
)
"""The claim of the request running in this task, where the connector's hooks cannot be handed
it directly: a traced request's, and one's that may open a connection (see
`asyncsp._http_pool_connector.PoolConnector._get`)."""


class CountingHandler(ResponseHandler):
    """aiohttp's protocol for a connection, counting the bytes it receives.

    A request that fails on a pooled connection is sent again only if no byte of an answer
    had arrived (else the server may have acted on it). Counted here, after TLS, the bytes
    are the answer's own: an idle close's close_notify is not among them. The connector's
    protocol factory makes these (asyncsp._http_pool_connector), the CONNECT tunnel too.
    """

    asyncsp_received = 0
    asyncsp_ticket: SocketTicket | None = None  # its socket's, once connected

    def data_received(self, data: bytes) -> None:
        self.asyncsp_received += len(data)
        _data_received(self, data)  # aiohttp's own, without super()'s lookup (every read)


_data_received = ResponseHandler.data_received


class TrackedSocket(socket.socket):
    """A socket that reports its close, so ``current_connections`` and the gate stay exact."""

    __slots__ = ("ticket",)
    ticket: SocketTicket | None

    def close(self) -> None:
        ticket, self.ticket = getattr(self, "ticket", None), None
        if ticket is not None:
            ticket.closed()
        super().close()

    def detach(self) -> int:
        ticket, self.ticket = getattr(self, "ticket", None), None
        if ticket is not None:
            ticket.closed()
        return super().detach()

    def __del__(self) -> None:
        # A backstop: a socket collected without close() still leaves the counts (cheaper per
        # connection than a weakref.finalize, which registers every socket in a global table).
        ticket, self.ticket = getattr(self, "ticket", None), None
        if ticket is not None:
            ticket.closed()
        # The socket module's own (in C, not in typeshed): warns about and closes an open socket.
        super().__del__()  # type: ignore[misc]


class NagleSocket(TrackedSocket):
    """A tracked socket that keeps the manager's ``tcp_nodelay=False``.

    aiohttp turns TCP_NODELAY on for every connection it makes, which would silently undo it.
    """

    __slots__ = ()

    def setsockopt(self, level: int, option: int, value: Any, *args: Any) -> None:
        if level == socket.IPPROTO_TCP and option == socket.TCP_NODELAY and not args:
            value = 0
        super().setsockopt(level, option, value, *args)
