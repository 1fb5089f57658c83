"""Describe a peer's leaf certificate and what is weak about it (the command line's view).

Parses the DER with `cryptography`, which only the command line needs; the library itself
never imports this module.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import ipaddress

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

__all__ = ["CertificateFacts", "certificate_findings", "describe_certificate", "names_host"]

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

    def to_json(self) -> dict[str, object]:
        """The certificate object of ``asyncsp probe --json``."""
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "san": list(self.san),
            "not_after": self.not_after.isoformat(),
            "sha256": self.sha256,
        }


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
    return CertificateFacts(
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
