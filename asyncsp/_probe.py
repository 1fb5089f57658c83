"""``asyncsp probe``: what a server accepts and what decides a policy about it.

Four phases, one after another, each bounded in concurrency:

1. **Versions**, through asyncsp's own handshake path: a `ConnectionManager` whose policy is
   pinned to one version (``open_stream`` for implicit TLS, ``start_tls`` after the plain-text
   dialogue for SMTP and FTP), so the probe reports what asyncsp would negotiate. TLS 1.0 and
   1.1 are tried under the legacy opt-out by default (a handshake only, inside the probe).
2. **Suites** per version, in the server's order, from bare ClientHellos (`_probe_suites`).
3. **Groups, ALPN, chain**: what the server picks, one offer at a time.
4. **Resumption**, alone so its timings are honest (`_probe_resume`).

Where a kind of change belongs: the wire format in `_probe_hello`, connections in
`_probe_wire`, wording of failures in `_probe_explain`, what is a finding here, layout in
`_probe_render`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence

from ._certinfo import (
    CertificateFacts,
    ChainReport,
    certificate_findings,
    describe_certificate,
    describe_chain,
)
from ._errors import (
    AsyncspError,
    CertificateVerificationError,
    ConnectError,
    FtpError,
    SmtpError,
    StartTlsUnavailableError,
    TimeoutError,
)
from ._manager import ConnectionManager
from ._policy import TlsPolicy
from ._probe_explain import explain, explain_untrusted, explain_wire
from ._probe_report import LEGACY, VERSIONS, Extras, Handshake, ProbeReport, VersionResult
from ._probe_resume import accepted_alpn, measure_resumption
from ._probe_suites import VersionSuites, enumerate_groups, enumerate_suites
from ._probe_target import Target, parse_target
from ._probe_wire import NotTls, Silent, Wire, probe_context
from ._protocols import SecurityProtocol

__all__ = [
    "VERSIONS",
    "ProbeReport",
    "Target",
    "VersionResult",
    "explain",
    "explain_untrusted",
    "parse_target",
    "run_probe",
    "steps",
]

PROBE_CONCURRENCY = 4
"""Connections in flight at once against one target: enough to be quick, few enough to be polite."""
ENUMERATION_BUDGET = 60.0
"""Seconds the suites, groups, ALPN and resumption phases may take together."""


async def run_probe(
    target: Target,
    policy: TlsPolicy,
    *,
    target_text: str,
    legacy: bool = True,
    every_opt_out: bool = False,
    enumerate: bool = True,
    timeout: float,
    budget: float = ENUMERATION_BUDGET,
    on_step: Callable[[], None] = lambda: None,
) -> ProbeReport:
    """Probe *target*; never raises for a server's behaviour, which ends up in the report.

    *legacy* tries TLS 1.0 and 1.1 under the opt-out; *every_opt_out* (``--insecure-legacy``)
    tries every version under it as well; *enumerate* runs phases 2 to 4.
    """
    started = time.perf_counter()
    limit = asyncio.Semaphore(PROBE_CONCURRENCY)
    plans = [(name, *_plans(policy, m, target, legacy, every_opt_out)) for name, m in VERSIONS]

    async def run(plan: TlsPolicy | str | None) -> Handshake | None:
        if plan is None:
            return None
        if isinstance(plan, str):
            return Handshake(tried=False, error=plan)
        try:
            async with limit:
                return await _attempt(target, plan, timeout)
        finally:
            on_step()

    results: list[tuple[Handshake | None, Handshake | None]] = await asyncio.gather(
        *(asyncio.gather(run(own), run(opt)) for _, own, opt in plans)
    )
    handshakes: dict[str, tuple[Handshake, Handshake | None]] = {}
    for (name, _, _), (own, opt) in zip(plans, results, strict=True):
        assert own is not None  # every version has a plan under the policy
        handshakes[name] = (own, opt)
    tried = [name for name, (own, opt) in handshakes.items() if own.tried or (opt and opt.tried)]
    extras = Extras()
    if enumerate and tried and not _all_unreachable(handshakes):
        extras = await _enumerate(target, tried, timeout, budget, on_step)
    versions = []
    for name, (own, opt) in handshakes.items():
        suites = extras.suites.get(name)
        versions.append(VersionResult(version=name, policy=own, opt_out=opt, suites=suites))
    extras = dataclasses.replace(extras, seconds=time.perf_counter() - started)
    return _report(target, target_text, policy, legacy, tuple(versions), extras)


def steps(policy: TlsPolicy, target: Target, legacy: bool, every_opt_out: bool = False) -> int:
    """How many version handshakes `run_probe` will attempt (for a progress bar)."""
    return sum(
        isinstance(plan, TlsPolicy)
        for _, member in VERSIONS
        for plan in _plans(policy, member, target, legacy, every_opt_out)
    )


def _plans(
    policy: TlsPolicy, member: SecurityProtocol, target: Target, legacy: bool, every: bool
) -> tuple[TlsPolicy | str, TlsPolicy | str | None]:
    """The policy for one version, or why it is not tried; then the same for the opt-out."""
    own: TlsPolicy | str
    is_legacy = bool(member & LEGACY)
    if policy.is_explicit and not policy.protocols.allows(member):
        own = f"not tried: the policy allows {_names(policy.protocols)} only"
    elif is_legacy and policy.strong_crypto:
        own = "not tried under the policy: strong crypto forbids it"
    else:
        own = dataclasses.replace(policy, protocols=member, alpn=target.alpn)
    if not policy.strong_crypto:
        return own, None  # the policy already is the opt-out
    if is_legacy and not legacy:
        return (own if isinstance(own, TlsPolicy) else "not tried: --no-legacy"), None
    if (is_legacy and not isinstance(own, TlsPolicy)) or every:
        return own, dataclasses.replace(
            policy, protocols=member, strong_crypto=False, alpn=target.alpn
        )
    return own, None


async def _attempt(target: Target, policy: TlsPolicy, timeout: float) -> Handshake:
    try:
        return await _handshake(target, policy, timeout)
    except CertificateVerificationError as exc:
        refused = exc
    except AsyncspError as exc:
        return _failed(exc, target)
    # The certificate was refused, so the server did negotiate this version: look again
    # without verification to learn the suite and the certificate it presents.
    try:
        seen = await _handshake(target, dataclasses.replace(policy, verify=False), timeout)
    except AsyncspError as exc:
        return dataclasses.replace(_failed(exc, target), refused=refused)
    return dataclasses.replace(seen, refused=refused)


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
            tried=True, accepted=True, cipher=info.cipher, alpn=info.alpn, certificate=certificate
        )


def _failed(exc: AsyncspError, target: Target) -> Handshake:
    unreachable = isinstance(exc, ConnectError | StartTlsUnavailableError | SmtpError | FtpError)
    silent = isinstance(exc, TimeoutError)
    return Handshake(
        tried=True,
        error=explain(exc, target.address),
        unreachable=unreachable or (silent and target.starttls is not None),
        silent=silent,
    )


def _all_unreachable(handshakes: dict[str, tuple[Handshake, Handshake | None]]) -> bool:
    tried = [h for pair in handshakes.values() for h in pair if h and h.tried]
    return bool(tried) and all(h.unreachable for h in tried)


async def _enumerate(
    target: Target, versions: list[str], timeout: float, budget: float, on_step: Callable[[], None]
) -> Extras:
    wire = Wire(target, timeout=timeout, concurrency=PROBE_CONCURRENCY)
    extras = Extras(complete=False)
    try:
        async with asyncio.timeout(budget):
            extras = await _phases(wire, target, versions, extras, on_step)
            extras = dataclasses.replace(extras, complete=True)
    except TimeoutError:
        extras = dataclasses.replace(extras, complete=False)
    finally:
        await wire.aclose()
    return extras


async def _phases(
    wire: Wire, target: Target, versions: list[str], extras: Extras, on_step: Callable[[], None]
) -> Extras:
    async def one(version: str) -> VersionSuites:
        try:
            return await enumerate_suites(wire, version)
        except (AsyncspError, NotTls, Silent, OSError) as exc:
            return VersionSuites(
                version=version, error=explain_wire(exc, target.address, wire.timeout)
            )
        finally:
            on_step()

    found = await asyncio.gather(*(one(v) for v in versions))
    suites = {v.version: v for v in found}
    extras = dataclasses.replace(extras, suites=suites)
    accepted = [v for v in found if v.suites]
    if not accepted:
        return extras
    newest = accepted[-1]
    chain = _chain([v for v in accepted if v.version != "TLSv1.3"])
    try:
        groups = await enumerate_groups(wire, newest.version, [r.suite for r in newest.suites])
        alpn = await accepted_alpn(wire, newest.version) if target.web else None
        if chain is None:
            chain = await _chain_by_handshake(wire, newest.version)
    except (AsyncspError, NotTls, Silent, OSError):
        groups, alpn = ((), None), None
    extras = dataclasses.replace(
        extras, groups_version=newest.version, groups=groups, alpn=alpn, chain=chain
    )
    resumption = await measure_resumption(wire, [v.version for v in accepted])
    return dataclasses.replace(extras, resumption=resumption)


def _chain(accepted: Sequence[VersionSuites]) -> ChainReport | None:
    """The chain as sent in clear under TLS 1.2 or older (the newest such version first)."""
    for result in reversed(accepted):
        if result.first is not None and result.first.certificates:
            try:
                return describe_chain(result.first.certificates)
            except ValueError:
                return None
    return None


async def _chain_by_handshake(wire: Wire, version: str) -> ChainReport | None:
    """Under TLS 1.3 the chain travels encrypted: read it from a handshake, where Python
    offers it (3.13's ``get_unverified_chain``)."""
    async with wire.connection() as stream:
        tls, _ = await wire.handshake(stream, probe_context(version))
        read = getattr(tls, "get_unverified_chain", None)
        if read is None:
            return None
        ders = [c if isinstance(c, bytes) else c.public_bytes() for c in read() or ()]
    return describe_chain(ders) if ders else None


def _report(
    target: Target,
    target_text: str,
    policy: TlsPolicy,
    legacy: bool,
    versions: tuple[VersionResult, ...],
    extras: Extras,
) -> ProbeReport:
    from ._probe_findings import findings_for

    facts = _certificate(versions)
    own_cas = policy.cafile is not None or policy.cadata is not None
    refused = next(
        (h.refused for v in versions for h in (v.policy, v.opt_out) if h and h.refused), None
    )
    untrusted = (
        explain_untrusted(refused, target.address, chain=extras.chain, own_cas=own_cas)
        if refused is not None
        else None
    )
    cert_findings = certificate_findings(facts, target.host) if facts else []
    findings, notes = findings_for(target, policy, versions, extras, untrusted, cert_findings)
    return ProbeReport(
        target=target,
        target_text=target_text,
        policy=policy,
        legacy_probed=legacy,
        versions=versions,
        certificate=facts,
        trusted=None if facts is None else refused is None,
        untrusted=untrusted,
        extras=extras,
        findings=tuple(findings),
        notes=tuple(notes),
        unreachable=_all_unreachable({v.version: (v.policy, v.opt_out) for v in versions}),
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


def _names(protocols: SecurityProtocol) -> str:
    by_member = {member: name for name, member in VERSIONS}
    return ", ".join(by_member.get(m, m.name or "?") for m in protocols.members)
