"""What one probe found, and its JSON (CONTRACT.md, "Command line").

The contract's object is ``{"target", "versions", "certificate", "findings"}`` with each
version's ``{"accepted", "cipher", "alpn", "error"}``; everything else here is added beside
those keys, never in their place, so a reader of the contract's schema keeps working.
"""

from __future__ import annotations

import dataclasses

from ._certinfo import CertificateFacts, ChainReport
from ._errors import CertificateVerificationError
from ._policy import TlsPolicy
from ._probe_resume import Resumption
from ._probe_suites import VersionSuites
from ._probe_target import Target
from ._protocols import SecurityProtocol

__all__ = ["LEGACY", "VERSIONS", "Extras", "Handshake", "ProbeReport", "VersionResult"]

SP = SecurityProtocol
VERSIONS: tuple[tuple[str, SecurityProtocol], ...] = (
    ("TLSv1", SP.TLS),
    ("TLSv1.1", SP.TLS11),
    ("TLSv1.2", SP.TLS12),
    ("TLSv1.3", SP.TLS13),
)
LEGACY = SP.TLS | SP.TLS11
"""Deprecated by RFC 8996; a server that still accepts them is a finding."""


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
    refused: CertificateVerificationError | None = None
    """The policy refused the certificate; the server did negotiate the version."""
    unreachable: bool = False
    """The failure has nothing to do with the version (no connection, no STARTTLS)."""
    silent: bool = False
    """The server never answered within the timeout."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class VersionResult:
    """One TLS version: under the policy, under the opt-out, and what its suites showed."""

    version: str
    policy: Handshake
    opt_out: Handshake | None
    suites: VersionSuites | None = None

    @property
    def handshake_accepted(self) -> bool:
        return self.policy.accepted or bool(self.opt_out and self.opt_out.accepted)

    @property
    def accepted(self) -> bool:
        """The server accepts this version: a handshake completed, or its ServerHello chose a
        suite at this version (a suite this OpenSSL cannot finish, 3DES say, still counts)."""
        return self.handshake_accepted or bool(self.suites and self.suites.suites)

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

    @property
    def cipher(self) -> str | None:
        if self.best.cipher:
            return self.best.cipher
        return self.suites.suites[0].suite.name if self.suites and self.suites.suites else None

    @property
    def error(self) -> str | None:
        if self.accepted:
            return None
        if self.suites is not None and self.suites.error and self.best.tried:
            return self.suites.error  # what a bare hello showed: plain text, silence
        return self.best.error

    def to_json(self) -> dict[str, object]:
        """The ``V`` object of ``asyncsp probe --json``, and the fields added to it."""
        suites = self.suites
        return {
            "accepted": self.accepted,
            "cipher": self.cipher,
            "alpn": self.best.alpn,
            "error": self.error,
            "opt_out_only": self.only_with_opt_out,
            "suites": None if suites is None else [s.to_json() for s in suites.suites],
            "preference": None if suites is None else suites.preference,
        }


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Extras:
    """Phases 2 to 4: suites, groups, ALPN, chain, resumption."""

    suites: dict[str, VersionSuites] = dataclasses.field(default_factory=dict)
    groups_version: str | None = None
    groups: tuple[tuple[str, ...], str | None] = ((), None)
    """(accepted, preferred from this OpenSSL's default offer)."""
    alpn: tuple[str, ...] | None = None
    chain: ChainReport | None = None
    resumption: tuple[Resumption, ...] = ()
    complete: bool = True
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        accepted, preferred = self.groups
        return {
            "groups": None
            if self.groups_version is None
            else {
                "version": self.groups_version,
                "accepted": list(accepted),
                "preferred": preferred,
            },
            "alpn_accepted": None if self.alpn is None else list(self.alpn),
            "chain": None if self.chain is None else self.chain.to_json(),
            "resumption": [r.to_json() for r in self.resumption],
            "enumeration_complete": self.complete,
            "seconds": round(self.seconds, 3),
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
    trusted: bool | None
    untrusted: str | None
    """Why the policy refused the certificate, with the remedy that fits."""
    extras: Extras
    findings: tuple[str, ...]
    notes: tuple[str, ...]
    unreachable: bool

    def to_json(self) -> dict[str, object]:
        """The object ``asyncsp probe --json`` prints: the contract's keys first."""
        certificate = None
        if self.certificate is not None:
            certificate = self.certificate.to_json() | {"trusted": self.trusted}
        return {
            "target": self.target_text,
            "versions": {v.version: v.to_json() for v in self.versions},
            "certificate": certificate,
            "findings": list(self.findings),
            "notes": list(self.notes),
            "legacy_probed": self.legacy_probed,
            **self.extras.to_json(),
        }
