"""`asyncsp policy`: the effective TLS policy on this machine, and where each setting came from.

What a new connection offers is decided in two places: asyncsp (the policy, from its default,
``ASYNCSP_*`` or code) and the system (the OpenSSL configuration's ``system_default``).
`describe` puts both side by side so an operator can see who decided what.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

from ._policy import STRONG_SECURITY_LEVEL, TlsPolicy, cipher_string
from ._protocols import SecurityProtocol
from ._system import SystemTlsConfig, system_tls_config, version_name

__all__ = ["describe", "render"]

ASYNCSP_DEFAULT = "asyncsp default"


def describe(
    policy: TlsPolicy,
    *,
    protocols_source: str = ASYNCSP_DEFAULT,
    strong_crypto_source: str = ASYNCSP_DEFAULT,
    service_point: str | None = None,
) -> dict[str, Any]:
    """The effective settings of *policy* here, each with its source (JSON-ready).

    Raises `PolicyError` when the system forbids every version the policy asks for.
    """
    system = system_tls_config()
    context = policy.ssl_context()  # PolicyError when the system forbids every version
    suites = [c["name"] for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"]
    level = int(cipher_string(policy, system).rsplit("@SECLEVEL=", 1)[1])
    groups = system.sources.get("Groups")
    tls13 = system.sources.get("Ciphersuites")
    return {
        "service_point": service_point,
        "versions": [_version_string(m) for m in policy.offered_versions().members],
        "protocols": (
            " | ".join(m.name or "" for m in policy.protocols.members)
            if policy.is_explicit
            else "SystemDefault"
        ),
        "strong_crypto": policy.strong_crypto,
        "security_level": level,
        "ciphers": len(suites),
        "tls13_suites": list(system.tls13_suites),
        "groups": groups.value if groups is not None else None,
        "system_config": system.path,
        "system_config_readable": system.readable,
        "system_config_problem": system.reason,
        "sources": {
            "protocols": protocols_source,
            "strong_crypto": strong_crypto_source,
            "min_version": _min_source(policy, system),
            "max_version": _max_source(policy, system),
            "security_level": _level_source(policy, system, level),
            "ciphers": _cipher_source(policy, system),
            "tls13_suites": f"system: {tls13}" if tls13 is not None else "OpenSSL default",
            "groups": f"system: {groups}" if groups is not None else "OpenSSL default",
        },
    }


def _version_string(member: SecurityProtocol) -> str:
    return version_name(member.tls_version)


def _min_source(policy: TlsPolicy, system: SystemTlsConfig) -> str:
    own = policy.protocols.members[0].tls_version if policy.is_explicit else ssl.TLSVersion.TLSv1_2
    if system.min_version is not None and system.min_version > own:
        return f"system: {system.describe('MinProtocol')}"
    return (
        "policy protocols" if policy.is_explicit else f"{ASYNCSP_DEFAULT} (TLSv1.2 at the oldest)"
    )


def _max_source(policy: TlsPolicy, system: SystemTlsConfig) -> str:
    own = policy.protocols.members[-1].tls_version if policy.is_explicit else None
    if system.max_version is not None and (own is None or system.max_version < own):
        return f"system: {system.describe('MaxProtocol')}"
    return "policy protocols" if policy.is_explicit else "OpenSSL (the newest it supports)"


def _level_source(policy: TlsPolicy, system: SystemTlsConfig, level: int) -> str:
    if policy.strong_crypto:
        if level > STRONG_SECURITY_LEVEL:
            return f"system: {system.describe('CipherString')}"
        return f"{ASYNCSP_DEFAULT} (strong crypto)"
    if system.sets_security_level:
        return f"system: {system.describe('CipherString')}"
    return "asyncsp legacy opt-out (level 0)"


def _cipher_source(policy: TlsPolicy, system: SystemTlsConfig) -> str:
    own = (
        "policy ciphers"
        if policy.ciphers
        else f"{ASYNCSP_DEFAULT} (strong crypto)"
        if policy.strong_crypto
        else "OpenSSL DEFAULT (legacy opt-out)"
    )
    if system.ciphers is None:
        return own
    return f"{own}, narrowed by the system: {system.describe('CipherString')}"


def environment_sources() -> tuple[str, str]:
    """Where the process defaults' protocols and strong crypto come from."""
    protocols = "ASYNCSP_SECURITY_PROTOCOL" if os.environ.get("ASYNCSP_SECURITY_PROTOCOL") else None
    strong = "ASYNCSP_STRONG_CRYPTO" if os.environ.get("ASYNCSP_STRONG_CRYPTO") else None
    return protocols or ASYNCSP_DEFAULT, strong or ASYNCSP_DEFAULT


def render(info: dict[str, Any]) -> str:
    """The human-readable form of `describe`'s result."""
    sources = info["sources"]
    lines = []
    if info["service_point"]:
        lines.append(f"service point:   {info['service_point']}")
    lines += [
        f"versions:        {', '.join(info['versions'])}",
        f"  oldest from    {sources['min_version']}",
        f"  newest from    {sources['max_version']}",
        f"protocols:       {info['protocols']}  ({sources['protocols']})",
        f"strong crypto:   {'on' if info['strong_crypto'] else 'OFF (legacy opt-out)'}"
        f"  ({sources['strong_crypto']})",
        f"security level:  {info['security_level']}  ({sources['security_level']})",
        f"TLS 1.2 suites:  {info['ciphers']}  ({sources['ciphers']})",
        f"TLS 1.3 suites:  {', '.join(info['tls13_suites']) or '-'}  ({sources['tls13_suites']})",
        f"groups:          {info['groups'] or 'OpenSSL default'}  ({sources['groups']})",
    ]
    if info["system_config_readable"]:
        lines.append(f"system config:   {info['system_config'] or '(none)'}")
    else:
        lines.append(
            f"system config:   {info['system_config'] or '(unknown)'}: NOT READ, so not "
            f"applied ({info['system_config_problem']})"
        )
    return "\n".join(lines)
