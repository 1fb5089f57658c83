"""The process-wide cache of TLS contexts (one per policy): its size can be set."""

from __future__ import annotations

import gc

import pytest

from asyncsp import TlsPolicy, set_context_cache_size
from asyncsp._contexts import CONTEXTS, context_for


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
