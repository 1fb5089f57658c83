"""The process-wide cache of TLS contexts (one per policy): its size can be set; callers that
find a context missing at once share one build."""

from __future__ import annotations

import asyncio
import gc
import ssl
import threading
import warnings

import pytest

from asyncsp import InsecurePolicyWarning, PolicyError, TlsPolicy, set_context_cache_size
from asyncsp._contexts import (
    _BUILDS,
    CONTEXTS,
    context_for,
    context_for_async,
    insecure_settings,
)


def test_the_context_cache_size_can_be_set() -> None:
    previous = set_context_cache_size(2)
    try:
        policies = [TlsPolicy(alpn=(f"p{i}",)) for i in range(3)]
        contexts = [context_for(p) for p in policies]
        builds = CONTEXTS.builds
        assert context_for(policies[2]) is contexts[2]
        assert context_for(policies[1]) is contexts[1]
        assert CONTEXTS.builds == builds
        del contexts
        gc.collect()
        context_for(policies[0])  # evicted, and no connection held it: built again
        assert CONTEXTS.builds == builds + 1
        with pytest.raises(ValueError):
            set_context_cache_size(0)
    finally:
        set_context_cache_size(previous)


async def test_a_burst_of_callers_shares_one_build_in_one_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []
    real_get = CONTEXTS.get

    def counted(policy: TlsPolicy) -> tuple[object, bool]:
        calls.append(threading.get_ident())
        return real_get(policy)

    monkeypatch.setattr(CONTEXTS, "get", counted)
    policy = TlsPolicy(alpn=("burst",))
    contexts = await asyncio.gather(*(context_for_async(policy) for _ in range(20)))
    assert len(calls) == 1 and calls[0] != threading.get_ident()  # one call, off the loop
    assert all(ctx is contexts[0] for ctx in contexts)
    assert not _BUILDS  # the finished build left the table
    assert await context_for_async(policy) is contexts[0] and len(calls) == 1


async def test_a_cancelled_caller_leaves_the_build_to_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()
    real_get = CONTEXTS.get

    def slow(policy: TlsPolicy) -> tuple[object, bool]:
        assert release.wait(10)
        return real_get(policy)

    monkeypatch.setattr(CONTEXTS, "get", slow)
    policy = TlsPolicy(alpn=("cancelled-first",))
    first = asyncio.ensure_future(context_for_async(policy))
    second = asyncio.ensure_future(context_for_async(policy))
    await asyncio.sleep(0)  # both are waiting for the one build
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    release.set()
    assert isinstance(await second, ssl.SSLContext)


async def test_a_failed_build_fails_every_caller_and_the_next_one_tries_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_get = CONTEXTS.get
    attempts = []

    def failing_once(policy: TlsPolicy) -> tuple[object, bool]:
        attempts.append(policy)
        if len(attempts) == 1:
            raise PolicyError("the CA file vanished")
        return real_get(policy)

    monkeypatch.setattr(CONTEXTS, "get", failing_once)
    policy = TlsPolicy(alpn=("fails-once",))
    results = await asyncio.gather(
        *(context_for_async(policy) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, PolicyError) for r in results) and len(attempts) == 1
    assert isinstance(await context_for_async(policy), ssl.SSLContext)
    assert len(attempts) == 2


async def test_an_insecure_build_warns_once_for_a_burst() -> None:
    policy = TlsPolicy(verify=False, alpn=("insecure-burst",))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await asyncio.gather(*(context_for_async(policy) for _ in range(5)))
    insecure = [w for w in caught if issubclass(w.category, InsecurePolicyWarning)]
    assert len(insecure) == len(insecure_settings(policy)) == 1
