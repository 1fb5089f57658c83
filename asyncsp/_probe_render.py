"""``asyncsp probe`` for people: versions, suites, groups, chain, resumption, findings."""

from __future__ import annotations

from ._errors import PolicyError
from ._output import Output
from ._policy import TlsPolicy
from ._probe_report import LEGACY, VERSIONS, Handshake, ProbeReport
from ._protocols import SecurityProtocol
from ._system import system_tls_config, version_name

__all__ = ["render"]


def render(report: ProbeReport, out: Output) -> None:
    """Print *report*: one section per phase, findings last."""
    out.line(f"{report.target.address} ({report.target_text})", "head")
    policy = report.policy
    opt_out = ""
    if policy.strong_crypto and report.legacy_probed:
        opt_out = ", TLSv1 and TLSv1.1 tried under the legacy opt-out (a handshake only)"
    out.line(
        f"policy: {_names(policy.protocols) if policy.is_explicit else 'SystemDefault'}, "
        f"strong crypto {'on' if policy.strong_crypto else 'off'}{opt_out}",
        "dim",
    )
    out.line(f"effective here: {_effective(policy)}", "dim")
    _versions(report, out)
    _suites(report, out)
    _certificate(report, out)
    _resumption(report, out)
    if report.findings:
        out.line(f"{len(report.findings)} finding(s)", "head")
        for finding in report.findings:
            out.line(finding, "bad")
    else:
        out.line("no findings", "ok")
    for note in report.notes:
        out.line(f"note: {note}", "dim")
    if not report.legacy_probed and report.policy.strong_crypto:
        out.line("TLSv1 and TLSv1.1 were not tried (--no-legacy)", "dim")
    if report.extras.seconds:
        out.line(f"probed in {report.extras.seconds:.2f} s", "dim")


def _versions(report: ProbeReport, out: Output) -> None:
    columns = ["version", "policy", "opt-out", "suites", "cipher", "ALPN", "detail"]
    rows, styles = [], []
    for v in report.versions:
        best = v.best
        count = "-" if v.suites is None else str(len(v.suites.suites))
        detail = "" if v.accepted else v.error or ""
        if v.accepted and not v.handshake_accepted:
            detail = "the server chooses suites here, but no handshake completes on this machine"
        rows.append(
            [
                v.version,
                _cell(v.policy),
                _cell(v.opt_out) if v.opt_out else "-",
                count,
                v.cipher or "-",
                best.alpn or "-",
                detail,
            ]
        )
        legacy = dict(VERSIONS)[v.version] & LEGACY
        styles.append("bad" if v.accepted and legacy else ("ok" if v.policy.accepted else "dim"))
    out.table(columns, rows, styles=styles)


def _suites(report: ProbeReport, out: Output) -> None:
    extras = report.extras
    for v in report.versions:
        if v.suites is None or not v.suites.suites:
            continue
        order = {"server": "the server's order", "client": "the server follows the client's order"}
        title = f"{v.version} suites ({order.get(v.suites.preference or '', 'one suite')})"
        rows = [
            [str(i), r.suite.name, r.suite.iana, r.key_exchange or "-", ", ".join(r.weaknesses)]
            for i, r in enumerate(v.suites.suites, start=1)
        ]
        styles = ["bad" if r.weaknesses else None for r in v.suites.suites]
        out.table(["#", "suite", "IANA", "key exchange", "weak"], rows, title=title, styles=styles)
    accepted, preferred = extras.groups
    if extras.groups_version:
        out.field("groups", f"{', '.join(accepted) or '-'} ({extras.groups_version})")
        out.field("picks", f"{preferred or '-'} from this OpenSSL's default offer")
    if extras.alpn is not None:
        out.field("ALPN", ", ".join(extras.alpn) or "none of h2, http/1.1, http/1.0 selected")


def _certificate(report: ProbeReport, out: Output) -> None:
    facts = report.certificate
    if facts is not None:
        out.line("certificate", "head")
        out.field("subject", facts.subject)
        out.field("issuer", facts.issuer)
        out.field("SAN", ", ".join(facts.san) or "-")
        out.field("valid", f"{facts.not_before.isoformat()} to {facts.not_after.isoformat()}")
        out.field("key", f"{facts.key}, signed with {facts.signature_hash or '-'}")
        out.field("sha256", facts.sha256)
        trusted = "yes" if report.trusted else f"no: {report.untrusted or 'refused'}"
        out.field("trusted", trusted)
    chain = report.extras.chain
    if chain is not None:
        rows = [
            [
                str(i),
                c.subject,
                c.issuer if not c.self_signed else "(self-signed)",
                c.key,
                c.signature_hash or "-",
            ]
            for i, c in enumerate(chain.certificates, start=1)
        ]
        title = f"chain as sent: {len(chain.certificates)} certificate(s)"
        out.table(["#", "subject", "issuer", "key", "signature"], rows, title=title)


def _resumption(report: ProbeReport, out: Output) -> None:
    results = report.extras.resumption
    if not results:
        return
    rows = []
    for r in results:
        rows.append(
            [
                r.version,
                r.mechanism,
                f"{r.resumed}/{r.attempts}" if r.attempts else "-",
                _ms(r.full_ms),
                _ms(r.resumed_ms),
                f"{r.speedup:.1f}x" if r.speedup else "-",
                r.note or "",
            ]
        )
    columns = ["version", "mechanism", "resumed", "full", "resumed in", "speed-up", "note"]
    out.table(columns, rows, title="session resumption (handshake time, median)")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _cell(handshake: Handshake) -> str:
    if not handshake.tried:
        return "not tried"
    if handshake.accepted:
        return "accepted" + (" (untrusted)" if handshake.refused else "")
    if handshake.silent:
        return "no answer"
    return "failed" if handshake.unreachable else "refused"


def _names(protocols: SecurityProtocol) -> str:
    by_member = {member: name for name, member in VERSIONS}
    return ", ".join(by_member.get(m, m.name or "?") for m in protocols.members)


def _effective(policy: TlsPolicy) -> str:
    """What the policy offers on this machine once the system's configuration applies."""
    system = system_tls_config()
    where = system.path if system.readable else f"not read: {system.reason}"
    try:
        offered = policy.offered_versions()
    except PolicyError as exc:
        return f"nothing ({exc})"
    versions = ", ".join(version_name(m.tls_version) for m in offered.members)
    return f"{versions} (system configuration: {where or 'none'})"
