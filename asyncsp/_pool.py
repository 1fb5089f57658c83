"""The bookkeeping of one service point's sockets: slots, idle connections, waiters.

Everything here is synchronous and does no I/O, so it can be reasoned about (and tested) on
its own: callers close what it hands back to them, outside of it. The invariants:

- ``opened`` counts every socket that exists or is being opened: those in use, those idle in
  the pool and those connecting. It never exceeds ``limit`` by our doing (lowering the limit
  lets the surplus drain as connections close).
- A waiter that is woken and then cancelled passes its wake-up on, so a cancelled waiter never
  keeps a slot; a holder returns its slot with `release` whether it ends well or not.
- Waiters queue in arrival order in an ordered dict keyed by their future: waking the first and
  removing a cancelled one are O(1) each, however long the queue.
- Waiters are served first: while one waits, or was woken and has not run yet (`queued`), a
  newcomer queues behind it instead of taking the slot or connection its wake-up was for. (A task
  that gives a connection back and at once asks again would otherwise win every time, and a
  waiter could wait out its timeout while the endpoint served others.)
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from ._policy import TlsPolicy
    from ._streams import Stream

__all__ = ["OnStream", "Poolable", "SlotPool"]


class Poolable(Protocol):
    """A connection the pool can keep idle and hand out again."""

    @property
    def policy(self) -> TlsPolicy:
        """The policy snapshot the connection was made under."""
        ...

    @property
    def opened_at(self) -> float:
        """`time.monotonic()` when the connection was made."""
        ...

    def is_reusable(self) -> bool:
        """Whether the connection is still healthy (no EOF, no error, not closing)."""
        ...

    async def aclose(self) -> None:
        """Close the connection and free its slot."""
        ...


class OnStream:
    """A pooled session over one `Stream` (SMTP, FTP): what the pool asks of it that the
    stream answers."""

    stream: Stream

    @property
    def policy(self) -> TlsPolicy:
        return self.stream.policy

    @property
    def opened_at(self) -> float:
        return self.stream.opened_at


C = TypeVar("C", bound=Poolable)


@dataclasses.dataclass(slots=True)
class _Idle(Generic[C]):
    conn: C
    key: Hashable
    idle_since: float


class SlotPool(Generic[C]):
    """Counts the sockets of one endpoint against a limit and keeps idle ones for reuse."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.opened = 0
        self._idle: collections.deque[_Idle[C]] = collections.deque()
        # In arrival order; a plain dict (an empty one is not tracked by the cyclic collector).
        self._waiters: dict[asyncio.Future[None], None] = {}
        self._woken = 0  # waiters woken that have not run since: what they were woken for is theirs
        self._make_error: Callable[[], BaseException] | None = None

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def in_use(self) -> int:
        """Sockets open or opening that are not idle in the pool."""
        return self.opened - len(self._idle)

    def unused(self) -> bool:
        """Nothing in use (every open socket idle in the pool) and nobody waiting."""
        return self.opened == len(self._idle) and not self._waiters

    @property
    def waiting(self) -> int:
        # A woken waiter leaves the queue as it is woken, a cancelled one as its task resumes.
        return len(self._waiters)

    @property
    def queued(self) -> bool:
        """Whether a newcomer must queue: someone waits, or was woken and has not taken what
        it was woken for yet."""
        return bool(self._waiters) or self._woken > 0

    # -- taking ---------------------------------------------------------------------------

    def take_idle(
        self,
        key: Hashable,
        *,
        policy: TlsPolicy,
        max_idle: float,
        lease: float | None,
        now: float | None = None,
    ) -> tuple[C | None, list[C]]:
        """An idle connection for *key*, most recently used first, and the stale ones to close.

        Stale connections (idle too long, too old, made under another policy, or no longer
        reusable) leave the pool and keep their slots until the caller has closed them.
        """
        now = time.monotonic() if now is None else now
        stale = self._expire(policy=policy, max_idle=max_idle, lease=lease, now=now)
        for entry in reversed(self._idle):
            if entry.key == key:
                self._idle.remove(entry)
                return entry.conn, stale
        return None, stale

    def try_reserve(self) -> bool:
        """Take a slot for a new connection, if one is free."""
        if self.opened < self.limit:
            self.opened += 1
            return True
        return False

    def evict_idle(self) -> C | None:
        """Remove the least recently used idle connection (its slot stays taken until released)."""
        if not self._idle:
            return None
        return self._idle.popleft().conn

    async def wait(self) -> None:
        """Wait until a slot or an idle connection may have become available.

        Raises the reason given to `close` once the pool is closed.
        """
        if self._make_error is not None:
            raise self._make_error()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[waiter] = None
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Woken, then cancelled (or its task closed) before it ran: hand the wake-up on.
                self._woken -= 1
                self._wake_one()
            raise
        else:
            self._woken -= 1  # the caller takes what it was woken for before its next await
        finally:
            self._waiters.pop(waiter, None)

    def served(self) -> None:
        """A woken waiter took what it was woken for: if a slot is still free, the next waiter
        may take it (a newcomer queued behind the first, and nothing else would wake it)."""
        if self._waiters and self.opened < self.limit:
            self._wake_one()

    # -- giving back ----------------------------------------------------------------------

    def put_idle(self, conn: C, key: Hashable, now: float | None = None) -> None:
        """Keep a healthy connection for reuse; it keeps its slot."""
        now = time.monotonic() if now is None else now
        self._idle.append(_Idle(conn, key, now))
        self._wake_one()

    def release(self) -> None:
        """A socket was closed (or never opened): free its slot."""
        assert self.opened > 0, "release() without a slot"
        self.opened -= 1
        self._wake_one()

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        for _ in range(max(0, limit - self.opened)):
            self._wake_one()

    # -- expiry and closing ----------------------------------------------------------------

    def _expire(
        self, *, policy: TlsPolicy, max_idle: float, lease: float | None, now: float
    ) -> list[C]:
        stale = [
            e
            for e in self._idle
            if now - e.idle_since >= max_idle
            or (lease is not None and now - e.conn.opened_at >= lease)
            or e.conn.policy != policy
            or not e.conn.is_reusable()
        ]
        for entry in stale:
            self._idle.remove(entry)
        return [e.conn for e in stale]

    def expire(
        self, *, policy: TlsPolicy, max_idle: float, lease: float | None, now: float | None = None
    ) -> list[C]:
        """Remove and return the idle connections that must be closed now."""
        if not self._idle:
            return []
        now = time.monotonic() if now is None else now
        return self._expire(policy=policy, max_idle=max_idle, lease=lease, now=now)

    def next_expiry(self, *, max_idle: float, lease: float | None) -> float | None:
        """The monotonic time at which the next idle connection expires, if any."""
        times = [e.idle_since + max_idle for e in self._idle]
        if lease is not None:
            times += [e.conn.opened_at + lease for e in self._idle]
        return min(times, default=None)

    def drain_idle(self) -> list[C]:
        """Remove and return every idle connection (for a policy change or close)."""
        conns = [e.conn for e in self._idle]
        self._idle.clear()
        return conns

    def close(self, make_error: Callable[[], BaseException]) -> list[C]:
        """Fail every waiter (and later ones) with *make_error()*; return the idle connections."""
        self._make_error = make_error
        while self._waiters:
            waiter = next(iter(self._waiters))
            del self._waiters[waiter]
            if not waiter.done():
                waiter.set_exception(make_error())
        return self.drain_idle()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = next(iter(self._waiters))
            del self._waiters[waiter]
            if not waiter.done():
                waiter.set_result(None)
                self._woken += 1
                return
