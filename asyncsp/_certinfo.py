"""Describe a peer's leaf certificate and what is weak about it (the command line's view).

Parses the DER with `cryptography`, which only the command line needs; the library itself
never imports this module.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import ipaddress
import itertools

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

__all__ = [
    "CertificateFacts",
    "ChainReport",
    "certificate_findings",
    "describe_certificate",
    "describe_chain",
    "names_host",
]

EXPIRY_WARNING = datetime.timedelta(days=30)
"""A certificate that expires sooner than this is flagged, so it can be renewed in time."""
MIN_RSA_BITS = 2048
"""Smallest RSA (and DSA) modulus accepted as strong (NIST SP 800-57: 112-bit security)."""
MIN_EC_BITS = 256
"""Smallest elliptic-curve size accepted as strong (P-256 and up)."""
_WEAK_SIGNATURE_HASHES = frozenset({"md5", "sha1"})
"""Signature digests with practical collisions (SHA-1: SHAttered, 2017)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CertificateFacts:
    """What a leaf certificate says, as the probe reports it."""

    subject: str
    """The subject as an RFC 4514 string (``CN=example.org,O=...``)."""
    issuer: str
    """The issuer as an RFC 4514 string."""
    san: tuple[str, ...]
    """DNS names and IP addresses of the subjectAltName extension."""
    not_before: datetime.datetime
    not_after: datetime.datetime
    sha256: str
    """Lower-case hex SHA-256 of the DER (what `TlsPolicy.pins` takes)."""
    key: str
    """The public key, e.g. ``"RSA 2048"`` or ``"EC secp256r1"``."""
    key_is_weak: bool
    signature_hash: str | None
    """The signature's digest (``"sha256"``), ``None`` for Ed25519/Ed448."""

    self_signed: bool = False
    """Issued by itself (subject and issuer alike, and its own key verifies its signature)."""
    is_ca: bool = False
    """basicConstraints says CA."""

    def to_json(self) -> dict[str, object]:
        """The certificate object of ``asyncsp probe --json`` (the contract's fields first)."""
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "san": list(self.san),
            "not_after": self.not_after.isoformat(),
            "sha256": self.sha256,
            "not_before": self.not_before.isoformat(),
            "key": self.key,
            "key_bits": self.key_bits,
            "signature_hash": self.signature_hash,
        }

    @property
    def key_bits(self) -> int | None:
        """The key's size in bits (``"RSA 2048 bits"``: 2048; ``"EC secp256r1"``: 256)."""
        for word in self.key.replace("secp", " ").replace("r1", " ").split():
            if word.isdigit():
                return int(word)
        return {"Ed25519": 256, "Ed448": 456}.get(self.key)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ChainReport:
    """The certificates a server sent, in its order, and what is wrong with their order."""

    certificates: tuple[CertificateFacts, ...]
    findings: tuple[str, ...]
    notes: tuple[str, ...]
    """What is worth knowing but weakens nothing (a root sent along)."""

    def to_json(self) -> dict[str, object]:
        return {
            "count": len(self.certificates),
            "certificates": [
                {
                    "subject": c.subject,
                    "issuer": c.issuer,
                    "key": c.key,
                    "key_bits": c.key_bits,
                    "signature_hash": c.signature_hash,
                    "self_signed": c.self_signed,
                    "ca": c.is_ca,
                    "not_after": c.not_after.isoformat(),
                    "sha256": c.sha256,
                }
                for c in self.certificates
            ],
            "findings": list(self.findings),
            "notes": list(self.notes),
        }

    @property
    def top(self) -> CertificateFacts | None:
        """The last certificate that chains from the leaf (where the server's chain ends)."""
        if not self.certificates:
            return None
        top = self.certificates[0]
        for cert in self.certificates[1:]:
            if cert.subject != top.issuer:
                break
            top = cert
        return top


def describe_chain(ders: list[bytes]) -> ChainReport:
    """Describe the certificates a server sent (leaf first); `ValueError` if one cannot be
    parsed."""
    chain = tuple(describe_certificate(der) for der in ders)
    findings: list[str] = []
    notes: list[str] = []
    for index, (cert, following) in enumerate(itertools.pairwise(chain)):
        if following.subject != cert.issuer:
            findings.append(
                f"chain out of order: certificate {index + 2} ({following.subject}) did not "
                f"issue certificate {index + 1} ({cert.subject})"
            )
            break
    for index, cert in enumerate(chain[1:], start=2):
        if cert.self_signed:
            notes.append(
                f"the server sends its root along ({cert.subject}, certificate {index}): "
                "clients never use it, it only costs bytes in every handshake"
            )
            continue
        if cert.key_is_weak:
            findings.append(f"weak key in the chain: {cert.subject} has {cert.key}")
        if cert.signature_hash in _WEAK_SIGNATURE_HASHES:
            findings.append(
                f"weak signature in the chain: {cert.subject} is signed with {cert.signature_hash}"
            )
    return ChainReport(certificates=chain, findings=tuple(findings), notes=tuple(notes))


def describe_certificate(der: bytes) -> CertificateFacts:
    """Parse a DER certificate; `ValueError` if it cannot be parsed."""
    cert = x509.load_der_x509_certificate(der)
    try:
        san_ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san: tuple[str, ...] = ()
    else:
        san = (
            *san_ext.get_values_for_type(x509.DNSName),
            *(ip.compressed for ip in san_ext.get_values_for_type(x509.IPAddress)),
        )
    key, weak = _describe_key(cert)
    try:
        digest = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        digest = None
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertificateFacts(
        self_signed=_self_signed(cert),
        is_ca=is_ca,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        san=san,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sha256=hashlib.sha256(der).hexdigest(),
        key=key,
        key_is_weak=weak,
        signature_hash=digest.name if isinstance(digest, hashes.HashAlgorithm) else None,
    )


def certificate_findings(
    facts: CertificateFacts, host: str, now: datetime.datetime | None = None
) -> list[str]:
    """What is weak or wrong about *facts* for a server reached as *host*."""
    now = now or datetime.datetime.now(datetime.UTC)
    found = []
    if facts.not_after <= now:
        found.append(f"certificate expired on {facts.not_after.isoformat()}")
    elif facts.not_after - now < EXPIRY_WARNING:
        days = (facts.not_after - now).days
        found.append(f"certificate expires soon: in {days} day(s), {facts.not_after.isoformat()}")
    if facts.not_before > now:
        found.append(f"certificate is not valid before {facts.not_before.isoformat()}")
    if facts.key_is_weak:
        found.append(f"weak key: {facts.key}")
    if facts.signature_hash in _WEAK_SIGNATURE_HASHES:
        found.append(f"weak signature: the certificate is signed with {facts.signature_hash}")
    if not names_host(facts, host):
        names = ", ".join(facts.san) or "none"
        found.append(f"hostname mismatch: the certificate names {names}, not {host}")
    return found


def names_host(facts: CertificateFacts, host: str) -> bool:
    """Whether the certificate's subjectAltName covers *host* (RFC 6125 §6.4).

    No common-name fallback (as in the TLS factory), and a wildcard only as the whole
    left-most label, matching exactly one label.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return any(_same_ip(name, ip) for name in facts.san)
    wanted = host.lower().rstrip(".").split(".")
    for name in facts.san:
        labels = name.lower().rstrip(".").split(".")
        if len(labels) != len(wanted):
            continue
        if labels[0] == "*" and len(labels) > 2 and labels[1:] == wanted[1:]:
            return True
        if labels == wanted:
            return True
    return False


def _same_ip(name: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(name) == ip
    except ValueError:
        return False


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, UnsupportedAlgorithm, InvalidSignature):
        return False
    return True


def _describe_key(cert: x509.Certificate) -> tuple[str, bool]:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size} bits", key.key_size < MIN_RSA_BITS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}", key.curve.key_size < MIN_EC_BITS
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", False
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", False
    if isinstance(key, dsa.DSAPublicKey):
        # DSA is withdrawn for signatures (FIPS 186-5): weak whatever its size.
        return f"DSA {key.key_size} bits", True
    return type(key).__name__, False
