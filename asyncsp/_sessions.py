"""The TLS session cache of one service point: which session the next connection offers.

Sessions are kept per (policy, server name), so a session is never offered to another
endpoint, SNI name or policy (the service point is already one endpoint), and only with the
context that made it (OpenSSL refuses a session from another context). The server name is the
one the session's own handshake verified, read from the SSL object, never the name a caller
first connected with: a resumed handshake checks no host name, so a session stored under a
name its certificate was not checked against would let another certificate pass for it.

CPython copies a session on every read of ``SSLObject.session`` and on every offer (about
110 µs each here, a DER round trip that parses the peer's certificate again), so reads are
rationed: a connection that resumed the cached session, or that started before there was one,
leaves the cache alone, unless the server has shown that it accepts a session only once
(TLS 1.3 servers may, RFC 8446 §8.1) or the cached one is old enough that a fresh ticket is
worth its copy.
"""

from __future__ import annotations

import collections
import dataclasses
import ssl
import time
from typing import Any

from ._policy import TlsPolicy

__all__ = ["SessionCache"]

REFRESH_AFTER = 60.0
"""Seconds after which a resumed connection's (newer) session replaces the cached one.

Well under common ticket lifetimes (nginx: 300 s, OpenSSL's default: 7,200 s)."""
MAX_ENTRIES = 16
"""(policy, server name) pairs kept per service point; the oldest goes first."""

Key = tuple[TlsPolicy, str]


@dataclasses.dataclass(slots=True)
class _Entry:
    context: ssl.SSLContext
    session: ssl.SSLSession
    taken_at: float
    single_use: bool = False


class SessionCache:
    """Resumable sessions of one endpoint, keyed by (policy, server name)."""

    def __init__(self) -> None:
        self._entries: collections.OrderedDict[Key, _Entry] = collections.OrderedDict()

    def offer(self, policy: TlsPolicy, hostname: str, context: ssl.SSLContext) -> Any:
        """The session a new connection under *policy* to *hostname* should offer, if any."""
        entry = self._entries.get((policy, hostname))
        if entry is None or entry.context is not context:
            return None
        return entry.session

    def remember(
        self,
        ssl_object: Any,
        policy: TlsPolicy,
        *,
        offered: bool,
        now: float | None = None,
    ) -> bool:
        """Take *ssl_object*'s session when the cache needs it; return whether it was read.

        The session is kept under the server name its handshake verified. *offered* says
        whether the connection was offered the cached session: offered and not resumed means
        the server will not take a session twice.
        """
        hostname = ssl_object.server_hostname
        if not isinstance(hostname, str) or not hostname:
            return False  # no name was verified: nothing to key a session by
        now = time.monotonic() if now is None else now
        key = (policy, hostname)
        entry = self._entries.get(key)
        resumed = bool(ssl_object.session_reused)
        if entry is not None:
            if offered and not resumed:
                entry.single_use = True
            elif (
                # Resumed the cached session, or started before there was one to offer (the
                # first connections of a burst): either way the cached one serves.
                (resumed or not offered)
                and not entry.single_use
                and entry.context is ssl_object.context
                and now - entry.taken_at < REFRESH_AFTER
            ):
                return False  # the cached session still works; skip the copy
        session = ssl_object.session
        if session is None or not (session.has_ticket or session.id):
            return True
        single_use = entry.single_use if entry is not None else False
        self._entries[key] = _Entry(ssl_object.context, session, now, single_use)
        self._entries.move_to_end(key)
        while len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)
        return True

    def get(self, policy: TlsPolicy, hostname: str) -> ssl.SSLSession | None:
        """The cached session for (policy, server name), if any."""
        entry = self._entries.get((policy, hostname))
        return entry.session if entry else None

    def __len__(self) -> int:
        return len(self._entries)
