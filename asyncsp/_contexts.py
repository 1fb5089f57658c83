"""The TLS factory: a `TlsPolicy` becomes an `ssl.SSLContext`, built once and kept.

Every context asyncsp uses comes from `context_for` (or `context_for_async`, which builds in a
worker thread: loading CA files reads the disk), one per distinct policy, from
`asyncsp._tls.checked_context`, so its handshakes run asyncsp's check. `_build_context` is the
one place a context is hardened, each line with its reason; the system's OpenSSL configuration
may tighten what it sets, never loosen it.

Every change to how a policy becomes a context belongs in this file; what a handshake must pass
belongs in ``_tls.py``.
"""

from __future__ import annotations

import _ssl
import asyncio
import ssl
import threading
import warnings
import weakref
from collections import OrderedDict
from typing import Any

import anyio.to_thread

from ._errors import InsecurePolicyWarning, PolicyError
from ._policy import TlsPolicy, cipher_string, trust_locations, version_bounds
from ._system import SystemTlsConfig, system_tls_config
from ._tls import PolicyContext, checked_context

__all__ = [
    "CONTEXTS",
    "built_context",
    "context_for",
    "context_for_async",
    "insecure_settings",
    "set_context_cache_size",
    "warn_insecure",
]

_CONTEXT_CACHE_SIZE = 64
"""Policies whose contexts are kept built by default (`set_context_cache_size` changes it).
More policies than this in rotation rebuild a context on each switch back (15-100 ms and a
full handshake, since a session belongs to the context that made it)."""


def _set(ctx: ssl.SSLContext, name: str, value: Any) -> None:
    """Set a context attribute through the C base class's own descriptor.

    The standard class's setters find their class by its module-level name, which another
    library may have replaced (truststore's ``inject_into_ssl``: each setter then recurses
    until the stack runs out); the C descriptor does the same work, whatever ``ssl`` holds.
    """
    getattr(_ssl._SSLContext, name).__set__(ctx, value)


def _build_context(policy: TlsPolicy) -> PolicyContext:
    """The one place a context is made. Each hardening line says why."""
    ctx = checked_context(policy)
    # PROTOCOL_TLS_CLIENT starts with CERT_REQUIRED, check_hostname, TLS 1.2 at the least,
    # no compression and the security-level-2 cipher list of create_default_context().
    # A certificate must carry the host in its subjectAltName: no common-name fallback
    # (RFC 6125 §6.4.4; urllib3 2 does the same).
    ctx.hostname_checks_common_name = False
    # Renegotiation re-runs the handshake mid-connection, after our check: a server could
    # switch certificates or suites under it (and it was the vector of CVE-2009-3555).
    _set(ctx, "options", ctx.options | ssl.OP_NO_RENEGOTIATION)
    system, bundle = trust_locations(policy)
    for source, load in (
        ("the system store", ctx.load_default_certs if system and policy.verify else None),
        (
            "certifi's bundle",
            (lambda: ctx.load_verify_locations(cafile=bundle)) if bundle else None,
        ),
        (
            "TlsPolicy.cafile/cadata",
            (lambda: ctx.load_verify_locations(cafile=policy.cafile, cadata=policy.cadata))
            if policy.cafile is not None or policy.cadata is not None
            else None,
        ),
    ):
        if load is None:
            continue
        try:
            load()
        except (ssl.SSLError, ValueError, OSError) as exc:
            raise PolicyError(f"{source}: cannot load CA certificates: {exc}") from exc
    if policy.verify:
        # What Python 3.13's create_default_context() checks, on every Python we run on:
        # RFC 5280's rules on the certificates (X509_STRICT: e.g. a CA without basic
        # constraints, a malformed key usage), and an intermediate or leaf the caller chose
        # to trust ends the chain (PARTIAL_CHAIN) instead of needing its root.
        strict = ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
        _set(ctx, "verify_flags", ctx.verify_flags | strict)
    if policy.crlfile is not None:
        try:
            ctx.load_verify_locations(cafile=policy.crlfile)
        except (ssl.SSLError, OSError) as exc:
            raise PolicyError(f"TlsPolicy.crlfile: cannot load the CRL: {exc}") from exc
        _set(ctx, "verify_flags", ctx.verify_flags | ssl.VERIFY_CRL_CHECK_LEAF)
    if policy.client_cert is not None:
        certfile, keyfile = policy.client_cert
        try:
            ctx.load_cert_chain(certfile, keyfile)
        except (ssl.SSLError, OSError) as exc:
            raise PolicyError(f"TlsPolicy.client_cert: cannot load certificate/key: {exc}") from exc
    _set_versions_and_ciphers(ctx, policy, system_tls_config())
    if policy.alpn:
        ctx.set_alpn_protocols(list(policy.alpn))
    if not policy.verify:
        _set(ctx, "check_hostname", False)
        _set(ctx, "verify_mode", ssl.CERT_NONE)
    return ctx


def _set_versions_and_ciphers(
    ctx: ssl.SSLContext, policy: TlsPolicy, system: SystemTlsConfig
) -> None:
    """asyncsp's versions, suites and security level, narrowed by the system's configuration.

    Every one is set explicitly: CPython builds differ in what a new context holds (its own
    minimum and suites, or OpenSSL's), and CPython overwrites the system's minimum and cipher
    list with its own. Tighten, never loosen: the newer minimum, the older maximum, the higher
    security level and only the suites both lists allow.
    """
    # OpenSSL offers a contiguous range only; a version in a gap (TLS 1.1 in TLS|TLS12) is
    # refused after the handshake by the check in ``_tls.py``.
    low, high = version_bounds(policy, system)
    with warnings.catch_warnings():
        # The ssl module deprecates TLS 1.0/1.1; reaching them is what the opt-out is for.
        warnings.simplefilter("ignore", DeprecationWarning)
        _set(ctx, "minimum_version", low)
        _set(ctx, "maximum_version", ssl.TLSVersion.MAXIMUM_SUPPORTED if high is None else high)
    ciphers = cipher_string(policy, system)
    ctx.set_ciphers(ciphers)  # checked when the policy was made
    if system.ciphers is None:
        return
    allowed = set(system.ciphers)
    shared = [
        suite["name"]
        for suite in ctx.get_ciphers()
        if suite["protocol"] != "TLSv1.3" and suite["name"] in allowed
    ]
    level = ciphers.rsplit("@SECLEVEL=", 1)[1]
    if shared:
        ctx.set_ciphers(":".join(shared) + f":@SECLEVEL={level}")
    elif high is None or high >= ssl.TLSVersion.TLSv1_3:
        _set(ctx, "minimum_version", ssl.TLSVersion.TLSv1_3)  # no older suite is left
    else:
        raise PolicyError(
            f"{policy!r}: no TLS 1.2-or-older suite of the policy is in the system's list "
            f"({system.describe('CipherString')}), and the policy does not allow TLS 1.3"
        )


def insecure_settings(policy: TlsPolicy) -> list[str]:
    """What *policy* turns off, one sentence each (empty for a secure policy)."""
    found = []
    if not policy.verify:
        found.append(
            f"{policy!r} does not verify certificates or host names: any peer can impersonate "
            "the server"
        )
    if not policy.strong_crypto:
        found.append(
            f"{policy!r} allows legacy TLS versions and weak suites (OpenSSL security level 0); "
            "use it only for peers that cannot be upgraded"
        )
    return found


def warn_insecure(policy: TlsPolicy, stacklevel: int = 3) -> None:
    """Warn once per context build with `InsecurePolicyWarning` for each insecure setting."""
    for message in insecure_settings(policy):
        warnings.warn(message, InsecurePolicyWarning, stacklevel=stacklevel)


class _ContextCache:
    """Equal policies share one context, built once.

    The most recently used contexts are kept in a bounded LRU, so a stream of one-off policies
    cannot grow it; a context evicted from it stays the policy's context for as long as any
    connection still holds it (weakly remembered), so a session taken from such a connection
    can still be offered (OpenSSL refuses a session from another context).
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._contexts: OrderedDict[TlsPolicy, PolicyContext] = OrderedDict()
        self._alive: weakref.WeakValueDictionary[TlsPolicy, PolicyContext] = (
            weakref.WeakValueDictionary()
        )
        self._lock = threading.Lock()  # contexts may be built in worker threads
        self.builds = 0

    @property
    def size(self) -> int:
        return self._size

    def resize(self, size: int) -> None:
        """Keep at most *size* contexts built; the least recently used go first."""
        with self._lock:
            self._size = size
            while len(self._contexts) > size:
                self._contexts.popitem(last=False)

    def peek(self, policy: TlsPolicy) -> PolicyContext | None:
        with self._lock:
            return self._contexts.get(policy) or self._alive.get(policy)

    def get(self, policy: TlsPolicy) -> tuple[PolicyContext, bool]:
        """The context of *policy* and whether this call built it."""
        with self._lock:
            ctx = self._contexts.get(policy) or self._alive.get(policy)
            built = ctx is None
            if ctx is None:
                ctx = _build_context(policy)
                self.builds += 1
                self._alive[policy] = ctx
            self._contexts[policy] = ctx
            self._contexts.move_to_end(policy)
            if len(self._contexts) > self._size:
                self._contexts.popitem(last=False)
            return ctx, built


CONTEXTS = _ContextCache(_CONTEXT_CACHE_SIZE)


def set_context_cache_size(size: int) -> int:
    """Keep the contexts of the *size* most recently used policies built (process-wide);
    return the previous size. A context still held by a connection outlives its eviction."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"the context cache size must be an int >= 1, not {size!r}")
    previous = CONTEXTS.size
    CONTEXTS.resize(size)
    return previous


def context_for(policy: TlsPolicy) -> ssl.SSLContext:
    """The shared context of *policy*, built (and warned about) on first use."""
    ctx, built = CONTEXTS.get(policy)
    if built:
        warn_insecure(policy, stacklevel=4)
    return ctx


def built_context(policy: TlsPolicy) -> ssl.SSLContext | None:
    """The shared context of *policy* if it is built already, else ``None`` (nothing waits)."""
    return CONTEXTS.peek(policy)


async def context_for_async(policy: TlsPolicy) -> ssl.SSLContext:
    """Like `context_for`, building a new context in a worker thread (it reads CA files).

    Requests that find the same policy's context missing at once (a burst's first ones) share
    one build, in one thread, instead of a thread each.
    """
    cached = CONTEXTS.peek(policy)
    if cached is not None:
        return cached
    loop = asyncio.get_running_loop()
    key = (loop, policy)
    build = _BUILDS.get(key)
    if build is None:
        build = _BUILDS[key] = _Build(loop.create_task(_build_in_thread(policy)))
        build.task.add_done_callback(lambda _: _BUILDS.pop(key, None))
    # Shielded: a caller cancelled while waiting leaves the build to the others.
    ctx, built = await asyncio.shield(build.task)
    if built and not build.warned:
        build.warned = True
        warn_insecure(policy, stacklevel=4)
    return ctx


class _Build:
    """One context being built in a worker thread, and whether a caller warned of it."""

    __slots__ = ("task", "warned")

    def __init__(self, task: asyncio.Task[tuple[PolicyContext, bool]]) -> None:
        self.task = task
        self.warned = False


_BUILDS: dict[tuple[asyncio.AbstractEventLoop, TlsPolicy], _Build] = {}
"""The builds under way, per event loop and policy (an entry leaves when its build ends)."""


async def _build_in_thread(policy: TlsPolicy) -> tuple[PolicyContext, bool]:
    return await anyio.to_thread.run_sync(CONTEXTS.get, policy)
