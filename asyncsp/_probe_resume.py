"""Whether a server resumes TLS sessions, how, and what it saves; which ALPN protocols it takes.

Resumption is measured per mechanism: TLS 1.2 session IDs (RFC 5246 §7.3, tickets turned
off), TLS 1.2 tickets (RFC 5077) and TLS 1.3 tickets (RFC 8446 §2.2). Each runs a few full
handshakes, then offers the last session on as many new connections; the speed-up is the ratio
of the median handshake times, measured from the ClientHello to the server's Finished (the
plain-text dialogue of SMTP and FTP is not part of it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import statistics
from collections.abc import Sequence

from ._errors import AsyncspError
from ._probe_target import ALPN_CANDIDATES
from ._probe_wire import Wire, probe_context

__all__ = ["Resumption", "accepted_alpn", "measure_resumption"]

ROUNDS = 3
"""Full handshakes, then resumed ones, per mechanism: a median of three, few enough to be quick."""
MECHANISMS = (("TLSv1.2", "session ID"), ("TLSv1.2", "ticket"), ("TLSv1.3", "ticket"))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Resumption:
    """One mechanism at one version."""

    version: str
    mechanism: str
    attempts: int = 0
    resumed: int = 0
    full_ms: float | None = None
    resumed_ms: float | None = None
    note: str | None = None
    """Why nothing was resumed, when the server said so (no ticket issued, an error)."""

    @property
    def supported(self) -> bool:
        return self.resumed > 0

    @property
    def speedup(self) -> float | None:
        if not self.full_ms or not self.resumed_ms:
            return None
        return self.full_ms / self.resumed_ms

    def to_json(self) -> dict[str, object]:
        return {
            "version": self.version,
            "mechanism": self.mechanism,
            "supported": self.supported,
            "attempts": self.attempts,
            "resumed": self.resumed,
            "full_handshake_ms": _round(self.full_ms),
            "resumed_handshake_ms": _round(self.resumed_ms),
            "speedup": _round(self.speedup),
            "note": self.note,
        }


async def measure_resumption(wire: Wire, versions: Sequence[str]) -> tuple[Resumption, ...]:
    """Every mechanism of the accepted *versions*, one after another (timings stay honest)."""
    results = []
    for version, mechanism in MECHANISMS:
        if version in versions:
            results.append(await _measure(wire, version, mechanism))
    return tuple(results)


async def _measure(wire: Wire, version: str, mechanism: str) -> Resumption:
    context = probe_context(version, tickets=mechanism == "ticket")
    full: list[float] = []
    resumed: list[float] = []
    attempts = 0
    try:
        session = None
        for _ in range(ROUNDS):
            async with wire.connection() as stream:
                tls, elapsed = await wire.handshake(stream, context)
                full.append(elapsed)
                session = tls.session
        note = _unusable(session, mechanism)
        if note is not None:
            return Resumption(version=version, mechanism=mechanism, full_ms=_ms(full), note=note)
        for _ in range(ROUNDS):
            attempts += 1
            async with wire.connection() as stream:
                tls, elapsed = await wire.handshake(stream, context, session)
                if tls.session_reused:
                    resumed.append(elapsed)
                if tls.session is not None:
                    session = tls.session  # TLS 1.3 tickets may be single use (RFC 8446 §8.1)
    except (AsyncspError, ssl.SSLError, OSError) as exc:
        note = f"stopped: {exc}"
    else:
        note = None if resumed else "the server did not resume the session it issued"
    return Resumption(
        version=version,
        mechanism=mechanism,
        attempts=attempts,
        resumed=len(resumed),
        full_ms=_ms(full),
        resumed_ms=_ms(resumed),
        note=note,
    )


def _unusable(session: ssl.SSLSession | None, mechanism: str) -> str | None:
    if session is None:
        return "no session was established"
    if mechanism == "ticket" and not session.has_ticket:
        return "the server issued no ticket"
    if mechanism == "session ID" and not session.id:
        return "the server gave no session ID"
    return None


async def accepted_alpn(wire: Wire, version: str) -> tuple[str, ...]:
    """Which of a few common protocols the server selects when offered alone (RFC 7301)."""

    async def selects(protocol: str) -> bool:
        try:
            async with wire.connection() as stream:
                tls, _ = await wire.handshake(stream, probe_context(version, alpn=protocol))
                return tls.selected_alpn_protocol() == protocol
        except (AsyncspError, ssl.SSLError, OSError):
            return False  # a no_application_protocol alert, most often

    found = await asyncio.gather(*(selects(p) for p in ALPN_CANDIDATES))
    return tuple(p for p, ok in zip(ALPN_CANDIDATES, found, strict=True) if ok)


def _ms(times: list[float]) -> float | None:
    return statistics.median(times) * 1000 if times else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
