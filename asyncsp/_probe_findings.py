"""What counts as a finding (exit 1) and what is only worth a note.

A finding is something a policy should act on: a deprecated version, a weak suite or key
exchange, a certificate a client cannot trust. A note is a fact that weakens nothing (a root
sent along, the server following the client's order, the group it picked).
"""

from __future__ import annotations

from collections.abc import Sequence

from ._policy import TlsPolicy
from ._probe_report import LEGACY, VERSIONS, Extras, VersionResult
from ._probe_target import Target

__all__ = ["findings_for"]

SHOWN_SUITES = 6
"""Suites named in one finding; the rest are counted."""


def findings_for(
    target: Target,
    policy: TlsPolicy,
    versions: Sequence[VersionResult],
    extras: Extras,
    untrusted: str | None,
    cert_findings: Sequence[str],
) -> tuple[list[str], list[str]]:
    """(findings, notes) of one probe."""
    findings: list[str] = []
    notes: list[str] = []
    tried = [h for v in versions for h in (v.policy, v.opt_out) if h and h.tried]
    unreachable = bool(tried) and all(h.unreachable for h in tried)
    if unreachable:
        findings.append(tried[0].error or "unreachable")
    for v in versions:
        member = dict(VERSIONS)[v.version]
        if v.accepted and member & LEGACY:
            findings.append(f"{v.version} accepted: a deprecated version (RFC 8996)")
        elif v.accepted and v.policy.tried and not v.policy.accepted:
            findings.append(
                f"{v.version} accepted only with the legacy opt-out: strong crypto refuses "
                f"every suite or key it offers ({_accepted_names(v)}); --insecure-legacy "
                "connects to it"
            )
    if not unreachable and not any(v.accepted for v in versions):
        findings.append(f"no TLS version accepted: {_why_none(versions)}")
    elif not any(v.policy.accepted for v in versions) and any(v.accepted for v in versions):
        findings.append("no version the policy allows is accepted; only the opt-out reaches it")
    findings += _weak_suites(versions)
    if untrusted and not _covered(untrusted, cert_findings):
        findings.append(f"certificate not trusted: {untrusted}")
    findings += cert_findings
    if extras.chain is not None:
        findings += extras.chain.findings
        notes += extras.chain.notes
    notes += _notes(versions, extras)
    return findings, notes


def _accepted_names(v: VersionResult) -> str:
    if v.suites is None or not v.suites.suites:
        return "see --insecure-legacy"
    return _list([r.suite.name for r in v.suites.suites])


def _why_none(versions: Sequence[VersionResult]) -> str:
    """The most telling reason: what a bare hello showed (plain text, silence), else the last
    handshake's error."""
    for v in versions:
        if v.suites is not None and v.suites.error:
            return _with_scheme_hint(v.suites.error)
    errors = [h.error for v in versions for h in (v.policy, v.opt_out) if h and h.tried and h.error]
    return errors[-1] if errors else "nothing was tried"


def _with_scheme_hint(reason: str) -> str:
    if "plain text" not in reason:
        return reason
    if "'HTTP/" in reason:
        return f"{reason}: a plain HTTP server, no TLS on this port"
    if "'220" in reason:
        return f"{reason}: a server that greets first (SMTP, FTP); probe it as smtp:// or ftp://"
    return reason


def _weak_suites(versions: Sequence[VersionResult]) -> list[str]:
    found = []
    for v in versions:
        if v.suites is None:
            continue
        by_weakness: dict[str, list[str]] = {}
        for result in v.suites.suites:
            for weakness in result.weaknesses:
                by_weakness.setdefault(weakness, []).append(result.suite.name)
        for weakness, names in by_weakness.items():
            found.append(f"{v.version} accepts {weakness}: {_list(names)}")
    return found


def _notes(versions: Sequence[VersionResult], extras: Extras) -> list[str]:
    notes = []
    for v in versions:
        if v.suites is not None and v.suites.preference == "client":
            notes.append(f"{v.version}: the server follows the client's suite order")
    preferred = extras.groups[1]
    if preferred and "MLKEM" in preferred:
        notes.append(f"key exchange: {preferred}, a post-quantum hybrid")
    if not extras.complete:
        notes.append("the enumeration stopped at its time budget: its lists may be incomplete")
    return notes


def _list(names: Sequence[str]) -> str:
    shown = ", ".join(names[:SHOWN_SUITES])
    more = len(names) - SHOWN_SUITES
    return f"{shown} and {more} more" if more > 0 else shown


def _covered(untrusted: str, cert_findings: Sequence[str]) -> bool:
    """Whether a verification failure is already explained by a specific finding."""
    text = untrusted.lower()
    return any(
        (key in text) and any(f.startswith(prefix) for f in cert_findings)
        for key, prefix in (
            ("hostname mismatch", "hostname mismatch"),
            ("expired", "certificate expired"),
            ("not yet valid", "certificate is not valid before"),
        )
    )
