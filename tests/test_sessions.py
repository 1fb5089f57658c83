"""The per-service-point TLS session cache: what it offers and when it reads a session."""

from __future__ import annotations

from asyncsp import TlsPolicy
from asyncsp._sessions import MAX_ENTRIES, REFRESH_AFTER, SessionCache


class FakeSession:
    has_ticket = True
    id = b"id"


class Connection:
    """What SessionCache reads of an SSL object; counts the (costly) session reads."""

    def __init__(self, context: object, *, reused: bool, hostname: str = "h") -> None:
        self.context = context
        self.server_hostname = hostname
        self.session_reused = reused
        self.reads = 0
        self._session = FakeSession()

    @property
    def session(self) -> FakeSession:
        self.reads += 1
        return self._session


POLICY = TlsPolicy()


def test_first_connection_is_remembered_and_offered_with_its_context_only() -> None:
    cache = SessionCache()
    ctx, other = object(), object()
    conn = Connection(ctx, reused=False)
    assert cache.remember(conn, POLICY, offered=False, now=0.0)
    assert cache.offer(POLICY, "h", ctx) is conn._session  # type: ignore[arg-type]
    assert cache.offer(POLICY, "h", other) is None  # type: ignore[arg-type]
    assert cache.offer(POLICY, "other-name", ctx) is None  # type: ignore[arg-type]
    assert cache.offer(TlsPolicy(alpn=("x",)), "h", ctx) is None  # type: ignore[arg-type]


def test_resumed_connections_skip_the_copy_until_refresh() -> None:
    cache = SessionCache()
    ctx = object()
    cache.remember(Connection(ctx, reused=False), POLICY, offered=False, now=0.0)
    resumed = Connection(ctx, reused=True)
    assert not cache.remember(resumed, POLICY, offered=True, now=1.0)
    assert resumed.reads == 0
    late = Connection(ctx, reused=True)
    assert cache.remember(late, POLICY, offered=True, now=REFRESH_AFTER + 1)
    assert late.reads == 1


def test_a_refused_offer_marks_the_server_single_use() -> None:
    cache = SessionCache()
    ctx = object()
    cache.remember(Connection(ctx, reused=False), POLICY, offered=False, now=0.0)
    refused = Connection(ctx, reused=False)
    assert cache.remember(refused, POLICY, offered=True, now=1.0)
    resumed = Connection(ctx, reused=True)
    assert cache.remember(resumed, POLICY, offered=True, now=2.0)  # single use: refresh
    assert resumed.reads == 1


def test_entries_are_bounded() -> None:
    cache = SessionCache()
    ctx = object()
    for n in range(MAX_ENTRIES + 5):
        conn = Connection(ctx, reused=False, hostname=f"h{n}")
        cache.remember(conn, POLICY, offered=False, now=0.0)
    assert len(cache) == MAX_ENTRIES
    assert cache.get(POLICY, "h0") is None
    assert cache.get(POLICY, f"h{MAX_ENTRIES + 4}") is not None


def test_connections_that_started_before_the_first_session_skip_the_copy() -> None:
    # A burst of new connections starts before any session is cached: the first one to
    # finish fills the cache, the rest of the burst leaves it alone.
    cache = SessionCache()
    ctx = object()
    first, second = Connection(ctx, reused=False), Connection(ctx, reused=False)
    assert cache.remember(first, POLICY, offered=False, now=0.0)
    assert not cache.remember(second, POLICY, offered=False, now=1.0)
    assert second.reads == 0
    assert cache.get(POLICY, "h") is first._session  # type: ignore[comparison-overlap]
    late = Connection(ctx, reused=False)
    assert cache.remember(late, POLICY, offered=False, now=REFRESH_AFTER + 1)
    assert late.reads == 1
