"""What operators see: typed trace events for hooks, and the loggers under ``asyncsp``.

Every layer reports through one `Tracer` per manager: it logs at DEBUG through the layer's
logger and hands the event to the hooks registered with ``ConnectionManager(trace=[...])`` or
``mgr.add_trace(...)``. Events are per connection, handshake, wait or policy change, never per
request on a kept-alive connection; with no hook and DEBUG off, an event whose facts cost work
to gather (a slot wait's time, an HTTP connection's peer) asks `Tracer.wants` first and skips it.

Events carry endpoints, versions, timings and error messages, never a credential, a cookie, an
``Authorization`` value or a message body (asyncsp's errors hold none), so a hook can forward
them anywhere. The fields follow OpenTelemetry's semantic conventions where one exists
(``server.address`` is `endpoint`, ``tls.protocol.version`` is ``TlsInfo.version``,
``tls.resumed`` is ``TlsInfo.session_reused``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._policy import TlsPolicy
    from ._tls import TlsInfo

__all__ = [
    "ConnectionClosed",
    "ConnectionOpened",
    "HandshakeFailed",
    "HandshakeFinished",
    "PolicySwapped",
    "SlotWaited",
    "TraceEvent",
    "TraceHook",
    "Tracer",
]

LOGGERS = (
    "asyncsp.tls",
    "asyncsp.pool",
    "asyncsp.http",
    "asyncsp.smtp",
    "asyncsp.ftp",
    "asyncsp.proxy",
)
_log = logging.getLogger("asyncsp.trace")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TraceEvent:
    """The base of every event: which endpoint (``"tls://host:port"``)."""

    endpoint: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionOpened(TraceEvent):
    """A TCP connection was made (before any TLS handshake)."""

    peer: tuple[str, int] | None
    """The address it reached."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeFinished(TraceEvent):
    """A TLS handshake passed every check; ``tls.session_reused`` says whether it resumed
    (a resumed session has no event of its own: this one, with that flag, is it)."""

    tls: TlsInfo
    policy: TlsPolicy


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeFailed(TraceEvent):
    """A TLS handshake failed or was refused by a check; ``error`` says why."""

    error: Exception
    policy: TlsPolicy


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SlotWaited(TraceEvent):
    """An operation waited for a free connection under the endpoint's limit."""

    seconds: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PolicySwapped(TraceEvent):
    """A manager's or a service point's policy was set: new connections use ``policy``.

    ``endpoint`` is the service point's address, or ``""`` for the manager's own policy (which
    every service point without one of its own follows). Idle connections made under the old
    policy are never handed out again; those in use finish under it.
    """

    policy: TlsPolicy


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed(TraceEvent):
    """A connection was closed; ``reason`` says why (``"closed"``, ``"aborted"``...)."""

    reason: str


TraceHook = Callable[[TraceEvent], object]


class Tracer:
    """Delivers a manager's events to its hooks and to the DEBUG log.

    Events are per connection or per wait, never per byte: building one costs about a
    microsecond, against the tens of microseconds of the connection it describes.
    """

    __slots__ = ("_hooks",)

    def __init__(self, hooks: list[TraceHook] | tuple[TraceHook, ...] = ()) -> None:
        self._hooks: tuple[TraceHook, ...] = ()
        for hook in hooks:
            self.add(hook)

    def add(self, hook: TraceHook) -> None:
        """Deliver every later event to *hook* (a plain callable)."""
        if not callable(hook):
            raise TypeError(f"a trace hook must be callable, not {type(hook).__name__}")
        self._hooks = (*self._hooks, hook)

    def wants(self, logger: logging.Logger) -> bool:
        """Whether an event for *logger* has a reader (a hook, or its DEBUG log): a caller
        whose event costs work to measure asks first."""
        return bool(self._hooks) or logger.isEnabledFor(logging.DEBUG)

    def emit(self, event: TraceEvent, logger: logging.Logger, message: str) -> None:
        """Log *message* at DEBUG through *logger*, then hand *event* to each hook.

        A hook that raises is logged (with its traceback) and never breaks the connection.
        """
        if logger.isEnabledFor(logging.DEBUG):
            if event.endpoint:
                logger.debug("%s: %s", event.endpoint, message)
            else:  # the manager's own (a policy swapped for all its endpoints)
                logger.debug("%s", message)
        for hook in self._hooks:
            try:
                hook(event)
            except Exception:
                _log.exception("trace hook %r failed on %s", hook, type(event).__name__)
