"""TlsPolicy: validation when built, the one TLS factory, secure defaults and the opt-outs."""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import ssl
from collections.abc import Callable

import pytest
import trustme

import asyncsp
from asyncsp import InsecurePolicyWarning, PolicyError, SecurityProtocol, TlsPolicy
from asyncsp._contexts import CONTEXTS
from asyncsp._policy import STRONG_CIPHERS

SP = SecurityProtocol


def test_policy_is_frozen_hashable_and_keyword_only() -> None:
    a = TlsPolicy(protocols=SP.TLS12)
    b = TlsPolicy(protocols=SP.TLS12)
    assert a == b and hash(a) == hash(b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.verify = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        TlsPolicy(SP.TLS12)  # type: ignore[misc]
    assert dataclasses.replace(a, protocols=SP.TLS13).protocols == SP.TLS13


def test_defaults_are_secure() -> None:
    p = TlsPolicy()
    assert p.protocols == SP.SYSTEM_DEFAULT
    assert p.strong_crypto and p.verify and p.resume_sessions
    assert p.pins == frozenset() and p.alpn == ()


def test_equal_policies_share_one_context(ca_pem: str) -> None:
    first = TlsPolicy(cadata=ca_pem, protocols=SP.TLS12 | SP.TLS13)
    second = TlsPolicy(cadata=ca_pem, protocols=SP.TLS12 | SP.TLS13)
    assert first is not second
    assert first.ssl_context() is second.ssl_context()
    builds = CONTEXTS.builds
    for _ in range(1000):
        TlsPolicy(cadata=ca_pem, protocols=SP.TLS12 | SP.TLS13).ssl_context()
    assert CONTEXTS.builds == builds


def test_strong_context_is_the_same_on_every_build(ca_pem: str) -> None:
    # CPython's own list (python.org and pyenv builds), set explicitly: a build that keeps
    # OpenSSL's DEFAULT list instead (Debian's) must not change what strong crypto means.
    ctx = TlsPolicy(cadata=ca_pem).ssl_context()
    reference = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    reference.set_ciphers(STRONG_CIPHERS)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert ctx.hostname_checks_common_name is False
    if asyncsp.system_tls_config().min_version is None:
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    ours = {c["name"] for c in ctx.get_ciphers()}
    assert ours == {c["name"] for c in reference.get_ciphers()}
    for weak in ("RC4", "3DES", "DES-CBC", "NULL", "EXP", "MD5", "ADH", "AECDH"):
        assert not any(weak in name for name in ours), weak
    # No CBC with SHA-1 and no finite-field DHE with SHA-1 (in OpenSSL's DEFAULT list).
    assert not any(name.endswith("-SHA") for name in ours)


def test_legacy_tls_needs_explicit_opt_out() -> None:
    with pytest.raises(PolicyError, match="strong_crypto=False"):
        TlsPolicy(protocols=SP.TLS11)
    with pytest.raises(PolicyError, match="strong_crypto=False"):
        TlsPolicy(protocols=SP.TLS | SP.TLS12)


def test_ssl3_is_a_clear_error() -> None:
    with pytest.raises(PolicyError, match=r"SSL 3\.0"):
        TlsPolicy(protocols=SP.SSL3, strong_crypto=False)


def test_legacy_opt_out_warns_once_and_lowers_security_level(ca_pem: str) -> None:
    policy = TlsPolicy(cadata=ca_pem, protocols=SP.TLS | SP.TLS12, strong_crypto=False, alpn=("x",))
    with pytest.warns(InsecurePolicyWarning, match="legacy"):
        ctx = policy.ssl_context()
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.security_level == 0  # type: ignore[attr-defined]
    # Built once: the second call neither builds nor warns (warnings are errors here).
    assert policy.ssl_context() is ctx


def test_verify_false_warns(ca_pem: str) -> None:
    policy = TlsPolicy(verify=False, alpn=("verify-false-test",))
    with pytest.warns(InsecurePolicyWarning, match="does not verify"):
        ctx = policy.ssl_context()
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


def test_explicit_versions_set_the_range(ca_pem: str) -> None:
    ctx = TlsPolicy(cadata=ca_pem, protocols=SP.TLS13).ssl_context()
    assert ctx.minimum_version == ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    ctx = TlsPolicy(cadata=ca_pem, protocols=SP.TLS12).ssl_context()
    assert ctx.minimum_version == ctx.maximum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cafile": "/nonexistent/ca.pem"}, "cafile"),
        ({"crlfile": "/nonexistent/crl.pem"}, "crlfile"),
        ({"client_cert": ("/nonexistent/c.pem", None)}, "client_cert"),
        ({"ciphers": "NOT-A-CIPHER"}, "ciphers"),
        ({"ciphers": "RC4-MD5"}, "ciphers"),
        ({"pins": frozenset({"abc"})}, "pins"),
        ({"pins": "a" * 64}, "pins"),
        ({"alpn": "h2"}, "alpn"),
        ({"protocols": 1024}, "protocols"),
        ({"verify": "yes"}, "verify"),
        ({"cadata": 42}, "cadata"),
        ({"validator": "not callable"}, "validator"),
    ],
)
def test_invalid_settings_raise_policy_error_naming_the_field(
    kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(PolicyError, match=field) as info:
        TlsPolicy(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_bad_ca_data_is_a_policy_error_when_the_context_is_built(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(PolicyError, match="cafile"):
        TlsPolicy(cafile=bad).ssl_context()


def test_pins_are_normalised(server_cert: trustme.LeafCert) -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    colon = ":".join(digest[i : i + 2] for i in range(0, 64, 2)).upper()
    assert TlsPolicy(pins=frozenset({colon})).pins == frozenset({digest})


def test_client_cert_and_cafile_load(
    tmp_path: pathlib.Path, ca: trustme.CA, server_cert: trustme.LeafCert
) -> None:
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    client = ca.issue_cert("client@example.test")
    chain = tmp_path / "client.pem"
    client.private_key_and_cert_chain_pem.write_to_path(str(chain))
    ctx = TlsPolicy(cafile=cafile, client_cert=(str(chain), None)).ssl_context()
    assert ctx.cert_store_stats()["x509_ca"] == 1


def test_repr_shows_only_changed_fields() -> None:
    assert repr(TlsPolicy()) == "TlsPolicy()"
    assert "protocols" in repr(TlsPolicy(protocols=SP.TLS13))


def test_validator_policies_differ_by_callable() -> None:
    def accept(info: asyncsp.TlsInfo, der: bytes) -> bool:
        return True

    def other(info: asyncsp.TlsInfo, der: bytes) -> bool:
        return True

    check: Callable[[asyncsp.TlsInfo, bytes], bool] = accept
    assert TlsPolicy(validator=check) == TlsPolicy(validator=accept)
    assert TlsPolicy(validator=accept) != TlsPolicy(validator=other)


def test_custom_ciphers_cannot_lower_the_security_level_under_strong_crypto() -> None:
    ctx = TlsPolicy(ciphers="DEFAULT:@SECLEVEL=0", alpn=("seclevel-test",)).ssl_context()
    assert ctx.security_level == 2  # type: ignore[attr-defined]
    names = {c["name"] for c in ctx.get_ciphers()}
    assert not any("RC4" in n or "3DES" in n or "NULL" in n for n in names)


def test_a_context_in_use_stays_the_policys_context_after_lru_eviction(ca_pem: str) -> None:
    from asyncsp._contexts import _CONTEXT_CACHE_SIZE

    policy = TlsPolicy(cadata=ca_pem, alpn=("kept-alive",))
    held = policy.ssl_context()  # a live connection would hold its context like this
    for n in range(_CONTEXT_CACHE_SIZE + 5):
        TlsPolicy(cadata=ca_pem, alpn=(f"filler-{n}",)).ssl_context()
    builds = CONTEXTS.builds
    assert policy.ssl_context() is held
    assert CONTEXTS.builds == builds


def test_repr_sums_up_inline_trust(ca_pem: str) -> None:
    """The repr is in every handshake's DEBUG record: a CA given inline is named, not dumped."""
    shown = repr(TlsPolicy(cadata=ca_pem + ca_pem, protocols=SP.TLS13))
    assert shown == (
        "TlsPolicy(protocols=<SecurityProtocol.TLS13: 12288>, cadata=<PEM, 2 certificate(s)>)"
    )
    assert repr(TlsPolicy(cadata=b"\x30\x82" + bytes(10))) == "TlsPolicy(cadata=<DER, 12 bytes>)"
