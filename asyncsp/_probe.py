"""``asyncsp probe``: which TLS versions a server accepts, through asyncsp's own handshake path.

Every handshake is made by a `ConnectionManager` whose policy is pinned to one version
(``open_stream`` for implicit TLS, ``start_tls`` after the plain-text dialogue for SMTP and
FTP), so the probe reports exactly what asyncsp would negotiate under that policy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import urllib.parse
from collections.abc import Callable, Sequence

from ._certinfo import CertificateFacts, certificate_findings, describe_certificate
from ._endpoint import Endpoint
from ._errors import (
    AsyncspError,
    CertificateVerificationError,
    ConnectError,
    FtpError,
    PolicyError,
    SmtpError,
    StartTlsUnavailableError,
    TlsError,
)
from ._manager import ConnectionManager
from ._output import Output
from ._policy import TlsPolicy
from ._protocols import SecurityProtocol
from ._system import system_tls_config, version_name

__all__ = [
    "ProbeReport",
    "Target",
    "VersionResult",
    "explain",
    "explain_untrusted",
    "parse_target",
    "render",
    "run_probe",
]

SP = SecurityProtocol
VERSIONS: tuple[tuple[str, SecurityProtocol], ...] = (
    ("TLSv1", SP.TLS),
    ("TLSv1.1", SP.TLS11),
    ("TLSv1.2", SP.TLS12),
    ("TLSv1.3", SP.TLS13),
)
LEGACY = SP.TLS | SP.TLS11
"""Deprecated by RFC 8996; a server that still accepts them is a finding."""
PROBE_CONCURRENCY = 4
"""Handshakes in flight at once against one target: enough to be quick, few enough to be polite."""
HTTP_ALPN = ("h2", "http/1.1")
"""ALPN offered to HTTPS and bare host:port targets, to learn what the server selects."""
_TARGET_SCHEMES = ("https", "smtp", "smtps", "ftp", "ftps", "tls")


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """What to probe: an endpoint and how TLS starts on it."""

    endpoint: Endpoint

    @property
    def host(self) -> str:
        return self.endpoint.host

    @property
    def port(self) -> int:
        return self.endpoint.port

    @property
    def address(self) -> str:
        return self.endpoint.address

    @property
    def starttls(self) -> str | None:
        """``"smtp"`` or ``"ftp"`` when TLS starts after a plain-text dialogue."""
        return self.endpoint.scheme if self.endpoint.scheme in ("smtp", "ftp") else None

    @property
    def alpn(self) -> tuple[str, ...]:
        return HTTP_ALPN if self.endpoint.scheme in ("https", "tls") else ()


def parse_target(text: str) -> Target:
    """``https://host[:port]``, ``host:port``, ``smtp(s)://host[:port]``, ``ftp(s)://...``.

    `ValueError` (a usage error) says what is wrong.
    """
    text = text.strip()
    if "://" not in text:
        parts = urllib.parse.urlsplit(f"//{text}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{text!r}: the port is not a number from 0 to 65535") from None
        if port is None or not parts.hostname:
            raise ValueError(f"{text!r}: give host:port, or a URL such as https://{text or 'host'}")
        text = f"tls://{parts.netloc}"
    scheme = text.split("://", 1)[0].lower()
    if scheme not in _TARGET_SCHEMES:
        raise ValueError(
            f"{text!r}: cannot probe {scheme}://; use https://, smtp://, smtps://, ftp://, "
            "ftps:// or host:port"
        )
    endpoint = Endpoint.parse(text)
    parts = urllib.parse.urlsplit(text)
    if parts.netloc.endswith(":"):
        raise ValueError(f"{text!r}: the port is empty")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise ValueError(f"{text!r}: a probe target is scheme://host[:port], nothing more")
    return Target(endpoint)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Handshake:
    """One probe handshake at one version under one policy."""

    tried: bool
    """Whether a connection was attempted (the policy may forbid the version outright)."""
    accepted: bool = False
    cipher: str | None = None
    alpn: str | None = None
    error: str | None = None
    """Why the version was not accepted, or not tried."""
    certificate: bytes | None = None
    untrusted: str | None = None
    """Why the policy refused the certificate; the server did negotiate the version."""
    unreachable: bool = False
    """The failure has nothing to do with the version (no connection, no STARTTLS)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class VersionResult:
    """One TLS version: under the policy and, with ``--insecure-legacy``, under the opt-out."""

    version: str
    policy: Handshake
    opt_out: Handshake | None

    @property
    def accepted(self) -> bool:
        return self.policy.accepted or bool(self.opt_out and self.opt_out.accepted)

    @property
    def only_with_opt_out(self) -> bool:
        return not self.policy.accepted and self.accepted

    @property
    def best(self) -> Handshake:
        """The handshake that tells the most: the accepted one, else the most permissive tried."""
        if self.policy.accepted or self.opt_out is None:
            return self.policy
        if self.opt_out.accepted or self.opt_out.tried or not self.policy.tried:
            return self.opt_out
        return self.policy

    def to_json(self) -> dict[str, object]:
        """The ``V`` object of ``asyncsp probe --json``."""
        best = self.best
        return {
            "accepted": best.accepted,
            "cipher": best.cipher,
            "alpn": best.alpn,
            "error": None if best.accepted else best.error,
        }


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProbeReport:
    """Everything one probe found."""

    target: Target
    target_text: str
    policy: TlsPolicy
    legacy_probed: bool
    versions: tuple[VersionResult, ...]
    certificate: CertificateFacts | None
    findings: tuple[str, ...]
    unreachable: bool

    def to_json(self) -> dict[str, object]:
        """The object ``asyncsp probe --json`` prints (CONTRACT.md, "Command line")."""
        return {
            "target": self.target_text,
            "versions": {v.version: v.to_json() for v in self.versions},
            "certificate": self.certificate.to_json() if self.certificate else None,
            "findings": list(self.findings),
        }


async def run_probe(
    target: Target,
    policy: TlsPolicy,
    *,
    target_text: str,
    legacy: bool,
    timeout: float,
    on_step: Callable[[], None] = lambda: None,
) -> ProbeReport:
    """Probe every version under *policy* (and the opt-out when *legacy*); never raises
    for a server's behaviour, which ends up in the report."""
    limit = asyncio.Semaphore(PROBE_CONCURRENCY)
    plans = [(name, member, *_plans(policy, member, target, legacy)) for name, member in VERSIONS]

    async def run(plan: TlsPolicy | str | None) -> Handshake | None:
        if plan is None:
            return None
        if isinstance(plan, str):
            return Handshake(tried=False, error=plan)
        try:
            return await _attempt(target, plan, timeout, limit)
        finally:
            on_step()

    results = await asyncio.gather(
        *(asyncio.gather(run(own), run(opt)) for _, _, own, opt in plans)
    )
    versions = []
    for (name, _, _, _), (own, opt) in zip(plans, results, strict=True):
        assert own is not None
        versions.append(VersionResult(version=name, policy=own, opt_out=opt))
    return _report(target, target_text, policy, legacy, tuple(versions))


def steps(policy: TlsPolicy, target: Target, legacy: bool) -> int:
    """How many handshakes `run_probe` will attempt (for a progress bar)."""
    return sum(
        isinstance(plan, TlsPolicy)
        for _, member in VERSIONS
        for plan in _plans(policy, member, target, legacy)
    )


def _plans(
    policy: TlsPolicy, member: SecurityProtocol, target: Target, legacy: bool
) -> tuple[TlsPolicy | str, TlsPolicy | str | None]:
    """The policy for one version, or why it is not tried; then the same for the opt-out."""
    own: TlsPolicy | str
    if policy.is_explicit and not policy.protocols.allows(member):
        own = f"not tried: the policy allows {_names(policy.protocols)} only"
    elif member & LEGACY and policy.strong_crypto:
        own = "not tried: strong crypto forbids it (--insecure-legacy probes it)"
    else:
        own = dataclasses.replace(policy, protocols=member, alpn=target.alpn)
    if not legacy or not policy.strong_crypto:
        return own, None  # the policy already is the opt-out
    return own, dataclasses.replace(policy, protocols=member, strong_crypto=False, alpn=target.alpn)


async def _attempt(
    target: Target, policy: TlsPolicy, timeout: float, limit: asyncio.Semaphore
) -> Handshake:
    async with limit:
        try:
            return await _handshake(target, policy, timeout)
        except CertificateVerificationError as exc:
            untrusted = explain_untrusted(exc, target.address)
        except AsyncspError as exc:
            return _failed(exc, target)
        # The certificate was refused, so the server did negotiate this version: look again
        # without verification to learn the suite and the certificate it presents.
        try:
            seen = await _handshake(target, dataclasses.replace(policy, verify=False), timeout)
        except AsyncspError as exc:
            return dataclasses.replace(_failed(exc, target), untrusted=untrusted)
        return dataclasses.replace(seen, untrusted=untrusted)


async def _handshake(target: Target, policy: TlsPolicy, timeout: float) -> Handshake:
    async with ConnectionManager(policy=policy) as mgr:
        if target.starttls is None:
            async with mgr.open_stream(
                target.host, target.port, tls=True, server_hostname=target.host, timeout=timeout
            ) as stream:
                info = stream.tls
                certificate = stream.service_point.certificate
        else:
            from ._dialogues import upgrade

            async with mgr.open_stream(target.host, target.port, timeout=timeout) as stream:
                info = await upgrade(stream, target.starttls, target.host)
                certificate = stream.service_point.certificate
        assert info is not None
        return Handshake(
            tried=True,
            accepted=True,
            cipher=info.cipher,
            alpn=info.alpn,
            certificate=certificate,
        )


def _failed(exc: AsyncspError, target: Target) -> Handshake:
    unreachable = isinstance(exc, ConnectError | StartTlsUnavailableError | SmtpError | FtpError)
    return Handshake(tried=True, error=explain(exc, target.address), unreachable=unreachable)


def explain_untrusted(exc: CertificateVerificationError, address: str | None = None) -> str:
    """Why the certificate was refused, in OpenSSL's words, with the command line's remedy."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_message:
        hint = "" if "mismatch" in cause.verify_message.lower() else " (--cafile trusts a CA)"
        return f"{cause.verify_message}{hint}"
    return explain(exc, address)


def explain(exc: AsyncspError, address: str | None = None) -> str:
    """A short reason: OpenSSL's reason code for a refused handshake, else the message.

    The server is named by *address* (``smtp://h:25``, what the user asked for) where the
    message names the raw service point the command's stream used (``tcp://h:25``).
    """
    cause = exc.__cause__
    if not isinstance(exc, CertificateVerificationError) and isinstance(exc, TlsError):
        if isinstance(cause, ssl.SSLError) and cause.reason:
            return f"handshake refused ({cause.reason})"
        if isinstance(cause, OSError) and not isinstance(cause, ssl.SSLError):
            return f"the server closed the connection in the handshake ({type(cause).__name__})"
    text = str(exc)
    if exc.endpoint:
        shown = address or exc.endpoint
        text = text.replace(exc.endpoint, shown)
        if text.startswith(f"{shown}: "):
            text = text[len(shown) + 2 :]
    return text


def _report(
    target: Target,
    target_text: str,
    policy: TlsPolicy,
    legacy: bool,
    versions: tuple[VersionResult, ...],
) -> ProbeReport:
    handshakes = [h for v in versions for h in (v.policy, v.opt_out) if h and h.tried]
    findings: list[str] = []
    unreachable = bool(handshakes) and all(h.unreachable for h in handshakes)
    if unreachable:
        findings.append(handshakes[0].error or "unreachable")
    for v in versions:
        member = dict(VERSIONS)[v.version]
        if v.accepted and member & LEGACY:
            findings.append(f"{v.version} accepted: a deprecated version (RFC 8996)")
        elif v.only_with_opt_out:
            findings.append(
                f"{v.version} accepted only with the legacy opt-out (weak suites or key)"
            )
    if not unreachable and not any(v.accepted for v in versions):
        tried = [h for h in handshakes if h.error]
        reason = f": {tried[-1].error}" if tried else ""
        hint = "; --insecure-legacy tries TLSv1 and TLSv1.1" if policy.strong_crypto else ""
        findings.append(f"no TLS version accepted{reason}{hint if not legacy else ''}")
    elif not any(v.policy.accepted for v in versions) and any(v.accepted for v in versions):
        findings.append("no version the policy allows is accepted; only the opt-out reaches it")
    facts = _certificate(versions)
    cert_findings = certificate_findings(facts, target.host) if facts else []
    untrusted = next((h.untrusted for h in handshakes if h.untrusted), None)
    if untrusted and not _covered(untrusted, cert_findings):
        findings.append(f"certificate not trusted: {untrusted}")
    findings += cert_findings
    return ProbeReport(
        target=target,
        target_text=target_text,
        policy=policy,
        legacy_probed=legacy,
        versions=versions,
        certificate=facts,
        findings=tuple(findings),
        unreachable=unreachable,
    )


def _certificate(versions: Sequence[VersionResult]) -> CertificateFacts | None:
    """The certificate of the newest version accepted (the policy's handshakes first)."""
    ordered = [v.policy for v in reversed(versions)] + [
        v.opt_out for v in reversed(versions) if v.opt_out
    ]
    for handshake in ordered:
        if handshake.accepted and handshake.certificate:
            try:
                return describe_certificate(handshake.certificate)
            except ValueError:
                continue
    return None


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


def render(report: ProbeReport, out: Output) -> None:
    """Print *report* for people: the version table, the certificate, the findings."""
    out.line(f"{report.target.address} ({report.target_text})", "head")
    policy = report.policy
    out.line(
        f"policy: {_names(policy.protocols) if policy.is_explicit else 'SystemDefault'}, "
        f"strong crypto {'on' if policy.strong_crypto else 'off'}"
        + (", plus the legacy opt-out" if report.legacy_probed and policy.strong_crypto else ""),
        "dim",
    )
    out.line(f"effective here: {_effective(policy)}", "dim")
    columns = ["version", "policy", "opt-out", "cipher", "ALPN", "detail"]
    rows, styles = [], []
    for v in report.versions:
        best = v.best
        rows.append(
            [
                v.version,
                _cell(v.policy),
                _cell(v.opt_out) if v.opt_out else "-",
                best.cipher or "-",
                best.alpn or "-",
                "" if best.accepted else best.error or "",
            ]
        )
        legacy = dict(VERSIONS)[v.version] & LEGACY
        styles.append("bad" if v.accepted and legacy else ("ok" if v.policy.accepted else "dim"))
    out.table(columns, rows, styles=styles)
    facts = report.certificate
    if facts is not None:
        out.line("certificate", "head")
        out.field("subject", facts.subject)
        out.field("issuer", facts.issuer)
        out.field("SAN", ", ".join(facts.san) or "-")
        out.field("not after", facts.not_after.isoformat())
        out.field("key", f"{facts.key}, signed with {facts.signature_hash or '-'}")
        out.field("sha256", facts.sha256)
    if report.findings:
        out.line(f"{len(report.findings)} finding(s)", "head")
        for finding in report.findings:
            out.line(finding, "bad")
    else:
        out.line("no findings", "ok")
    if not report.legacy_probed and report.policy.strong_crypto:
        out.line(
            "TLSv1 and TLSv1.1 were not tried (strong crypto); --insecure-legacy probes them",
            "dim",
        )


def _cell(handshake: Handshake) -> str:
    if not handshake.tried:
        return "not tried"
    if handshake.accepted:
        return "accepted" + (" (untrusted)" if handshake.untrusted else "")
    return "failed" if handshake.unreachable else "refused"
