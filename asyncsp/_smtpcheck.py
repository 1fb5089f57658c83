"""``asyncsp smtp-check``: what an SMTP server offers before and after STARTTLS."""

from __future__ import annotations

import urllib.parse
from typing import TextIO

from ._certinfo import certificate_findings, describe_certificate
from ._dialogues import SmtpTranscript, name_as, smtp_starttls
from ._endpoint import Endpoint, normalise_host
from ._errors import AsyncspError, CertificateVerificationError, StartTlsUnavailableError, TlsError
from ._manager import ConnectionManager
from ._output import Output
from ._policy import TlsPolicy
from ._probe_explain import explain, explain_untrusted
from ._tls import TlsInfo

__all__ = ["DEFAULT_PORT", "IMPLICIT_TLS_PORT", "parse_server", "run_smtp_check"]

DEFAULT_PORT = 25
"""Where servers receive mail from other servers, and where STARTTLS matters most."""
IMPLICIT_TLS_PORT = 465
"""Submission over implicit TLS (RFC 8314 §3.3): TLS from the first byte, no STARTTLS."""
_WIDTH = 12


def parse_server(text: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port``; `ValueError` says what is wrong."""
    parts = urllib.parse.urlsplit(f"//{text.strip()}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 0 < port < 65536:
        shown = text.strip().rpartition(":")[2]
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535, not {shown!r}")
    if not parts.hostname or parts.username or parts.path or parts.query or text.endswith(":"):
        raise ValueError(f"{text!r}: give HOST or HOST:PORT, e.g. mail.example.org:25")
    return parts.hostname, port or DEFAULT_PORT


async def run_smtp_check(
    host: str,
    port: int,
    policy: TlsPolicy,
    *,
    timeout: float,
    ehlo: str | None,
    out_stream: TextIO,
) -> int:
    """Check one server and print the report; return 1 when there is a finding, else 0."""
    out = Output(out_stream)
    implicit = port == IMPLICIT_TLS_PORT
    transcript = SmtpTranscript()
    findings: list[str] = []
    certificate: bytes | None = None
    address = Endpoint("smtps" if implicit else "smtp", normalise_host(host), port).address
    async with ConnectionManager(policy=policy) as mgr:
        try:
            async with mgr.open_stream(
                host, port, tls=implicit, server_hostname=host, timeout=timeout
            ) as stream:
                try:
                    await smtp_starttls(stream, host, transcript, name=ehlo, implicit=implicit)
                except StartTlsUnavailableError as exc:
                    findings.append(str(exc))
                except CertificateVerificationError as exc:
                    untrusted = explain_untrusted(exc, address)
                    findings.append(f"certificate not trusted: {untrusted}")
                except TlsError as exc:
                    findings.append(f"TLS failed: {explain(exc, address)}")
                certificate = stream.service_point.certificate
        except AsyncspError as exc:
            name_as(exc, address)
            raise
    _report(out, address, transcript, implicit)
    auth_before = (transcript.before or {}).get("AUTH")
    if auth_before is not None:
        findings.append(
            f"AUTH {auth_before} is offered before TLS: a client may send its password in clear"
        )
    if transcript.tls is not None:
        auth_after = transcript.after.get("AUTH")
        if auth_after is None:
            status = "not offered"
        elif auth_before is None and not implicit:
            status = f"offered only after TLS ({auth_after})"
        else:
            status = f"offered ({auth_after})"
        out.field("AUTH", status, width=_WIDTH)
    if certificate is not None and transcript.tls is not None:
        facts = describe_certificate(certificate)
        out.field("certificate", f"{facts.subject} (issuer {facts.issuer})", width=_WIDTH)
        out.field("not after", facts.not_after.isoformat(), width=_WIDTH)
        findings += certificate_findings(facts, host)
    if findings:
        out.line(f"{len(findings)} finding(s)", "head")
        for finding in findings:
            out.line(finding, "bad")
        return 1
    out.line("no findings", "ok")
    return 0


def _report(out: Output, address: str, transcript: SmtpTranscript, implicit: bool) -> None:
    width = _WIDTH
    out.line(f"{address} ({'implicit TLS' if implicit else 'STARTTLS'})", "head")
    if transcript.greeting is not None:
        out.field("greeting", _one_line(str(transcript.greeting)), width=width)
    if transcript.before is not None:
        out.field("before TLS", _keywords(transcript.before), width=width)
    if transcript.starttls is not None:
        out.field("STARTTLS", _one_line(str(transcript.starttls)), width=width)
    if transcript.tls is not None:
        out.field("TLS", _tls(transcript.tls), width=width)
        out.field("after TLS", _keywords(transcript.after), width=width)


def _keywords(extensions: dict[str, str]) -> str:
    if not extensions:
        return "(none)"
    return ", ".join(f"{k} {v}".strip() for k, v in extensions.items())


def _tls(info: TlsInfo) -> str:
    return f"{info.version} {info.cipher} ({info.bits} bits)"


def _one_line(text: str) -> str:
    return " / ".join(text.splitlines())
