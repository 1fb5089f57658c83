"""SlotPool: the synchronous bookkeeping of one service point's sockets."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from asyncsp import TlsPolicy
from asyncsp._pool import SlotPool

from .servers import wait_until

POLICY = TlsPolicy()


@dataclasses.dataclass(eq=False)
class Conn:
    name: str
    policy: TlsPolicy = POLICY
    opened_at: float = 0.0
    healthy: bool = True
    stream: object = None

    def is_reusable(self) -> bool:
        return self.healthy

    async def aclose(self) -> None:
        self.healthy = False


def test_reserve_up_to_the_limit() -> None:
    pool: SlotPool[Conn] = SlotPool(2)
    assert pool.try_reserve() and pool.try_reserve()
    assert not pool.try_reserve()
    assert pool.opened == 2
    pool.release()
    assert pool.try_reserve()


def test_idle_reuse_by_key_most_recent_first() -> None:
    pool: SlotPool[Conn] = SlotPool(3)
    a, b, c = Conn("a"), Conn("b"), Conn("c")
    for _ in range(3):
        assert pool.try_reserve()
    pool.put_idle(a, "k1", now=1.0)
    pool.put_idle(b, "k2", now=2.0)
    pool.put_idle(c, "k1", now=3.0)
    got, stale = pool.take_idle("k1", policy=POLICY, max_idle=100, lease=None, now=4.0)
    assert got is c and stale == []
    assert pool.idle_count == 2 and pool.in_use == 1


def test_expiry_by_idle_time_lease_policy_and_health() -> None:
    pool: SlotPool[Conn] = SlotPool(4)
    old_idle = Conn("idle")
    too_old = Conn("old", opened_at=0.0)
    other_policy = Conn("policy", policy=TlsPolicy(resume_sessions=False))
    broken = Conn("broken", healthy=False)
    fresh = Conn("fresh", opened_at=9.0)
    for conn, since in [(old_idle, 0.0), (too_old, 9.0), (other_policy, 9.0), (broken, 9.0)]:
        pool.try_reserve()
        pool.put_idle(conn, "k", now=since)
    pool.set_limit(5)
    pool.try_reserve()
    pool.put_idle(fresh, "k", now=9.0)
    got, stale = pool.take_idle("k", policy=POLICY, max_idle=5.0, lease=8.0, now=10.0)
    assert got is fresh
    assert {c.name for c in stale} == {"idle", "old", "policy", "broken"}
    # Stale connections keep their slots until the caller closes them and releases.
    assert pool.opened == 5


def test_next_expiry() -> None:
    pool: SlotPool[Conn] = SlotPool(2)
    pool.try_reserve()
    pool.put_idle(Conn("a", opened_at=1.0), "k", now=2.0)
    assert pool.next_expiry(max_idle=10.0, lease=None) == 12.0
    assert pool.next_expiry(max_idle=10.0, lease=3.0) == 4.0


def test_evict_least_recently_used() -> None:
    pool: SlotPool[Conn] = SlotPool(2)
    a, b = Conn("a"), Conn("b")
    pool.try_reserve()
    pool.try_reserve()
    pool.put_idle(a, "k1", now=1.0)
    pool.put_idle(b, "k2", now=2.0)
    assert pool.evict_idle() is a
    assert pool.opened == 2  # the slot is freed only by release() after the close


async def test_waiters_are_woken_in_order_by_release() -> None:
    pool: SlotPool[Conn] = SlotPool(1)
    assert pool.try_reserve()
    order: list[int] = []

    async def waiter(n: int) -> None:
        while not pool.try_reserve():
            await pool.wait()
        order.append(n)

    tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
    await asyncio.sleep(0)
    assert pool.waiting == 3
    for expected in range(3):
        pool.release()
        await tasks[expected]
        assert order[-1] == expected
    assert pool.opened == 1


async def test_cancelled_waiter_passes_its_wakeup_on() -> None:
    pool: SlotPool[Conn] = SlotPool(1)
    assert pool.try_reserve()
    first = asyncio.create_task(pool.wait())
    second = asyncio.create_task(pool.wait())
    await asyncio.sleep(0)
    pool.release()  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs: `second` must get the wake-up
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert pool.try_reserve()


async def test_close_fails_waiters_and_returns_idle() -> None:
    pool: SlotPool[Conn] = SlotPool(1)
    pool.try_reserve()
    pool.put_idle(Conn("a"), "k")
    pool2: SlotPool[Conn] = SlotPool(1)
    pool2.try_reserve()
    waiter = asyncio.create_task(pool2.wait())
    await asyncio.sleep(0)
    idle = pool.close(lambda: RuntimeError("closed"))
    assert [c.name for c in idle] == ["a"]
    pool2.close(lambda: RuntimeError("closed"))
    with pytest.raises(RuntimeError, match="closed"):
        await waiter
    with pytest.raises(RuntimeError, match="closed"):
        await pool2.wait()


async def test_raising_the_limit_wakes_waiters() -> None:
    pool: SlotPool[Conn] = SlotPool(1)
    pool.try_reserve()
    waiter = asyncio.create_task(pool.wait())
    await asyncio.sleep(0)
    pool.set_limit(2)
    await asyncio.wait_for(waiter, 1)
    assert pool.try_reserve()


class ComparedFuture(asyncio.Future[None]):
    """A future that counts how often it is compared for equality: scanning a queue of
    waiters for one of them compares it with every waiter before it."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        ComparedFuture.comparisons += 1
        return self is other

    __hash__ = asyncio.Future.__hash__


class ComparingLoop(asyncio.SelectorEventLoop):
    """An event loop whose futures are `ComparedFuture`s."""

    def create_future(self) -> asyncio.Future[Any]:
        return ComparedFuture(loop=self)


def run_counting_comparisons(main: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Run *main* on a `ComparingLoop`; how many times its futures were compared."""
    ComparedFuture.comparisons = 0
    with asyncio.Runner(loop_factory=ComparingLoop) as runner:
        runner.run(main())
    return ComparedFuture.comparisons


def test_admission_does_not_scan_the_queue() -> None:
    """Each admission and each cancellation costs the same however many tasks wait: with
    2,000 waiters a scan per admission would compare futures about two million times."""
    waiters = 2000
    admitted: list[int] = []

    async def main() -> None:
        pool: SlotPool[Conn] = SlotPool(1)

        async def one(n: int) -> None:
            while not pool.try_reserve():
                await pool.wait()
            admitted.append(n)
            await asyncio.sleep(0)
            pool.release()

        tasks = [asyncio.create_task(one(n)) for n in range(waiters)]
        await asyncio.sleep(0)
        assert pool.waiting == waiters - 1
        cancelled = tasks[waiters // 2 :: 100]
        for task in cancelled:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert len(admitted) == waiters - len(cancelled)
        assert pool.opened == 0 and pool.waiting == 0

    assert run_counting_comparisons(main) < waiters


async def test_fifo_order_and_a_cancellation_mid_queue_frees_nothing() -> None:
    pool: SlotPool[Conn] = SlotPool(2)
    assert pool.try_reserve() and pool.try_reserve()
    order: list[int] = []
    release: dict[int, asyncio.Event] = {n: asyncio.Event() for n in range(6)}

    async def one(n: int) -> None:
        while not pool.try_reserve():
            await pool.wait()
        order.append(n)
        await release[n].wait()
        pool.release()

    tasks = [asyncio.create_task(one(n)) for n in range(6)]
    await asyncio.sleep(0)
    assert pool.waiting == 6
    tasks[2].cancel()
    with pytest.raises(asyncio.CancelledError):
        await tasks[2]
    assert pool.waiting == 5 and pool.opened == 2  # the cancelled waiter took no slot
    pool.release()
    pool.release()  # the two holders go: the first two waiters come in, in order
    await wait_until(lambda: order == [0, 1])
    for n in (0, 1, 3, 4, 5):
        release[n].set()
    await asyncio.wait_for(asyncio.gather(*(t for t in tasks if t is not tasks[2])), 5)
    # Every freed slot woke the next waiter in line; the cancelled one lost no wake-up.
    assert order == [0, 1, 3, 4, 5]
    assert pool.opened == 0 and pool.waiting == 0


async def test_a_woken_waiter_keeps_newcomers_queued_until_it_runs_or_is_cancelled() -> None:
    pool: SlotPool[Any] = SlotPool(limit=1)
    assert pool.try_reserve()
    served = asyncio.create_task(pool.wait())
    cancelled = asyncio.create_task(pool.wait())
    await wait_until(lambda: pool.waiting == 2)
    pool.release()  # wakes the first; the slot is its to take
    assert pool.queued and pool.waiting == 1
    await served  # it ran: what it was woken for is taken now (or never will be)
    assert pool.try_reserve()
    assert pool.queued  # the second still waits
    pool.release()  # wakes the second, which is cancelled before it runs
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert not pool.queued and pool.opened == 0
