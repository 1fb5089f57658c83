"""The ``asyncsp`` command line: an offline demo, a TLS probe, one HTTP request, an SMTP check.

Exit codes: 0 success, 1 a finding or a failed request, 2 a usage error. Every error is one
line on stderr; ``--debug`` adds the traceback. Optional libraries (the ``cli`` extra) are
imported inside the commands only, so a missing one is a clear message, not a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import sys
import traceback
import urllib.parse
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

import anyio

from ._errors import AsyncspError, InsecurePolicyWarning, PolicyError
from ._output import printable
from ._policy import TlsPolicy
from ._policyinfo import describe, environment_sources, render
from ._protocols import SecurityProtocol

if TYPE_CHECKING:
    from ._http import Response

__all__ = ["EXIT_FINDING", "EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_FINDING = 1
"""A finding, an unreachable target or a failed request."""
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
"""128 + SIGINT, as shells report an interrupted command."""
DEFAULT_TIMEOUT = 10.0
"""Seconds each step (connect, handshake, reply, read) may take."""
CHUNK_SIZE = 64 * 1024
"""Bytes read at a time when a body is saved or counted (bounded memory)."""
_LEGACY = SecurityProtocol.TLS | SecurityProtocol.TLS11
_OPT_OUT_PROTOCOLS = _LEGACY | SecurityProtocol.TLS12 | SecurityProtocol.TLS13
"""What the opt-out allows when no --protocol is given."""

_REQUIREMENTS = {
    "demo": ("rich", "trustme", "aiosmtpd", "pyftpdlib", "OpenSSL"),
    "probe": ("rich", "cryptography"),
    "get": ("rich",),
    "smtp-check": ("rich", "cryptography"),
    "policy": (),
}
_INSTALL_HINT = 'pip install "asyncsp[cli]"'


class UsageError(Exception):
    """A command line that cannot run as given (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line instead of the usage text and a message."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    from . import __version__

    debug = _Parser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks and asyncio's log",
    )
    tls = _Parser(add_help=False)
    tls.add_argument(
        "--protocol",
        metavar="VERSIONS",
        help='TLS versions allowed, as SecurityProtocol.parse reads them ("Tls12,Tls13", '
        '"TLSv1.3", "12288"); default: $ASYNCSP_SECURITY_PROTOCOL or SystemDefault',
    )
    tls.add_argument("--cafile", metavar="PEM", help="trust these CAs instead of the system store")
    tls.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"bound on each step: connect, handshake, each reply (default {DEFAULT_TIMEOUT:g})",
    )

    parser = _Parser(
        prog="asyncsp",
        description="Async service points: one TLS policy for HTTP, SMTP, FTPS and raw streams.",
        epilog="Exit codes: 0 success, 1 a finding or a failed request, 2 a usage error.",
    )
    parser.add_argument("--version", action="version", version=f"asyncsp {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and asyncio's log")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser(
        "demo",
        parents=[debug],
        help="an offline tour on loopback servers (no network needed)",
        description="Start loopback HTTPS, legacy TLS 1.1, SMTP and FTPS servers under a "
        "throwaway CA and show, step by step, what the TLS policy decides.",
    )

    probe = commands.add_parser(
        "probe",
        parents=[debug, tls],
        help="versions, suites, groups, chain and resumption a server accepts; weak findings",
        description="Probe each TLS version (TLSv1 to TLSv1.3) through asyncsp's own handshake "
        "path with a policy pinned to that version; then, with bare ClientHellos, the suites "
        "each version accepts in the server's order, the groups, ALPN, the certificate chain "
        "as sent and session resumption. Exits 1 when there is a finding or the target "
        "cannot be reached.",
    )
    probe.add_argument(
        "target",
        metavar="TARGET",
        help="https://host[:port], host:port (TLS from the first byte), smtp://host[:port] "
        "(STARTTLS), smtps://, ftp://host[:port] (AUTH TLS) or ftps://",
    )
    probe.add_argument(
        "--no-legacy",
        action="store_true",
        help="skip TLSv1 and TLSv1.1 (tried by default under the legacy opt-out, inside the "
        "probe only; nothing but the handshake is sent)",
    )
    probe.add_argument(
        "--insecure-legacy",
        action="store_true",
        help="also probe TLSv1.2 and TLSv1.3 with the legacy opt-out (strong_crypto=False), "
        "to learn whether a server the policy refuses is reachable at all",
    )
    probe.add_argument(
        "--quick",
        action="store_true",
        help="versions and certificate only: no suites, groups, ALPN, chain or resumption",
    )
    probe.add_argument("--json", action="store_true", help="print one JSON object (see README)")

    get = commands.add_parser(
        "get",
        parents=[debug, tls],
        help="one HTTP(S) request under the policy",
        description="GET a URL under the policy; print the status and the negotiated TLS. "
        "Exits 1 when the request fails or the status is 400 or above.",
    )
    get.add_argument("url", metavar="URL", help="http:// or https:// URL")
    get.add_argument("-o", "--output", metavar="FILE", help="write the body to FILE")
    get.add_argument(
        "--insecure-legacy",
        action="store_true",
        help="use the legacy opt-out (strong_crypto=False; TLSv1 to TLSv1.3 unless --protocol)",
    )

    smtp = commands.add_parser(
        "smtp-check",
        parents=[debug, tls],
        help="an SMTP server's STARTTLS: capabilities before and after, negotiated TLS",
        description="Connect, read the greeting, EHLO, STARTTLS, EHLO again; report the "
        "capabilities before and after TLS and the negotiated TLS. AUTH offered before TLS "
        "is a finding (exit 1), as is a server without STARTTLS. Port 465 uses implicit TLS.",
    )
    smtp.add_argument("server", metavar="HOST[:PORT]", help="the server (port 25 by default)")
    smtp.add_argument(
        "--ehlo", metavar="NAME", help="the name to greet with (default: our address)"
    )
    smtp.add_argument(
        "--insecure-legacy",
        action="store_true",
        help="use the legacy opt-out (strong_crypto=False; TLSv1 to TLSv1.3 unless --protocol)",
    )
    policy = commands.add_parser(
        "policy",
        parents=[debug],
        help="the effective TLS policy here, and where each setting came from",
        description="Print the versions, security level, suites and groups a new connection "
        "offers under the process defaults (or URL's service point), after the system's "
        "OpenSSL configuration, and where each setting came from: asyncsp's default, "
        "ASYNCSP_*, or the configuration file and line.",
    )
    policy.add_argument("url", metavar="URL", nargs="?", help="a service point's URL")
    policy.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 finding/failure, 2 usage)."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    debug = bool(getattr(args, "debug", False))
    name = f"asyncsp {args.command}"
    if not debug:
        # Our own messages explain every failure; asyncio's log would repeat them as tracebacks.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    missing = [m for m in _REQUIREMENTS[args.command] if importlib.util.find_spec(m) is None]
    if missing:
        return _fail(
            f"{name} needs {', '.join(missing)}, which is not installed: {_INSTALL_HINT}",
            EXIT_USAGE,
        )
    try:
        _check_environment()
    except ValueError as exc:  # InvalidSecurityProtocolError, PolicyError: naming the variable
        return _fail(f"{name}: error: {exc}", EXIT_USAGE, debug)
    try:
        return asyncio.run(_COMMANDS[args.command](args))
    except UsageError as exc:
        return _fail(f"{name}: error: {exc}", EXIT_USAGE, debug)
    except AsyncspError as exc:
        return _fail(f"{name}: {exc}", EXIT_FINDING, debug)
    except KeyboardInterrupt:
        return _fail(f"{name}: interrupted", EXIT_INTERRUPTED, debug)
    except BrokenPipeError:
        # The reader went away (``| head``): nothing left to say, and nobody to say it to.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FINDING
    except Exception as exc:
        return _fail(
            f"{name}: unexpected {type(exc).__name__}: {exc} (--debug shows the traceback)",
            EXIT_FINDING,
            debug,
        )


def _check_environment() -> None:
    """Read the ``ASYNCSP_*`` variables now, so every command refuses a bad value alike.

    `asyncsp.defaults` reads them on first use; without this a command that never needs
    them would run, and one that does would fail halfway.
    """
    from ._defaults import defaults

    defaults.policy  # noqa: B018 (the read is the check)


def _fail(message: str, code: int, debug: bool = False) -> int:
    """Print *message* as one line on stderr (after the traceback with ``--debug``).

    Messages quote what peers sent: control characters are shown as escapes, never
    passed to the terminal.
    """
    if debug:
        print(printable(traceback.format_exc(), keep="\t\n"), end="", file=sys.stderr)
    print(" ".join(printable(message, keep="\t\n").split()), file=sys.stderr, flush=True)
    return code


# -- the policy from options ---------------------------------------------------------------


def policy_from(args: argparse.Namespace, *, opt_out: bool = False) -> TlsPolicy:
    """The process default policy with the command line's changes; `UsageError` if invalid.

    *opt_out* makes it the legacy opt-out (strong crypto off; TLSv1 to TLSv1.3 unless
    ``--protocol`` says otherwise).
    """
    from ._defaults import defaults

    changes: dict[str, object] = {}
    try:
        if args.protocol is not None:
            changes["protocols"] = SecurityProtocol.parse(args.protocol)
        elif opt_out:
            changes["protocols"] = _OPT_OUT_PROTOCOLS
        if opt_out:
            changes["strong_crypto"] = False
        if args.cafile is not None:
            changes["cafile"] = args.cafile
            changes["cadata"] = None
        return dataclasses.replace(defaults.policy, **changes)  # type: ignore[arg-type]
    except PolicyError as exc:
        legacy_refused = "strong_crypto" in str(exc) and not opt_out
        hint = "; on the command line, --insecure-legacy is the opt-out" if legacy_refused else ""
        raise UsageError(f"{exc}{hint}") from exc
    except ValueError as exc:  # InvalidSecurityProtocolError
        raise UsageError(f"--protocol: {exc}") from exc


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0")
    return value


# -- commands --------------------------------------------------------------------------------


async def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return await run_demo(sys.stdout)


async def _probe(args: argparse.Namespace) -> int:
    from . import _probe as probe
    from ._output import Output, progress

    try:
        target = probe.parse_target(args.target)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    policy = policy_from(args, opt_out=_asks_for_legacy(args) and args.insecure_legacy)
    legacy = not args.no_legacy
    with warnings.catch_warnings():
        # The user asked for these handshakes; the report says which ones used the opt-out.
        warnings.simplefilter("ignore", InsecurePolicyWarning)
        total = probe.steps(policy, target, legacy, args.insecure_legacy)
        total += 0 if args.quick else len(probe.VERSIONS)
        with progress(sys.stderr, f"probing {target.address}", total) as advance:
            report = await probe.run_probe(
                target,
                policy,
                target_text=args.target,
                legacy=legacy,
                every_opt_out=args.insecure_legacy,
                enumerate=not args.quick,
                timeout=args.timeout,
                on_step=advance,
            )
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        from ._probe_render import render

        render(report, Output(sys.stdout))
    return EXIT_FINDING if report.findings else EXIT_OK


def _asks_for_legacy(args: argparse.Namespace) -> bool:
    if args.protocol is None:
        return False
    try:
        return bool(SecurityProtocol.parse(args.protocol) & _LEGACY)
    except ValueError:
        return False  # policy_from reports it


async def _get(args: argparse.Namespace) -> int:
    import aiohttp

    from ._manager import ConnectionManager
    from ._output import Output

    url = args.url
    if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
        raise UsageError(f"{url!r} is not an http:// or https:// URL")
    policy = policy_from(args, opt_out=args.insecure_legacy)
    out = Output(sys.stdout)
    # Each step is bounded, not the whole transfer: a large download may take its time.
    timeout = aiohttp.ClientTimeout(total=None, connect=args.timeout, sock_read=args.timeout)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InsecurePolicyWarning)
        async with (
            ConnectionManager(policy=policy) as mgr,
            mgr.request("GET", url, timeout=timeout) as resp,
        ):
            status, reason, tls = resp.status, resp.reason, resp.tls
            size = await _save_body(resp, args.output)
    for warning in caught:
        print(printable(f"warning: {warning.message}"), file=sys.stderr)
    out.line(f"{status} {reason or ''}".rstrip(), "ok" if status < 400 else "warn")
    if tls is not None:
        out.line(
            f"{tls.version} {tls.cipher} ({tls.bits} bits)"
            + (f", ALPN {tls.alpn}" if tls.alpn else "")
            + (", session resumed" if tls.session_reused else "")
        )
    else:
        out.line("no TLS (plain http)", "warn")
    out.line(f"{size} bytes" + (f" written to {args.output}" if args.output else ""), "dim")
    return EXIT_OK if status < 400 else EXIT_FINDING


async def _save_body(resp: Response, path: str | None) -> int:
    content = resp.content
    size = 0
    if path is None:
        async for chunk in content.iter_chunked(CHUNK_SIZE):
            size += len(chunk)
        return size
    partial = f"{path}.part"
    try:
        async with await anyio.open_file(partial, "wb") as file:
            async for chunk in content.iter_chunked(CHUNK_SIZE):
                await file.write(chunk)
                size += len(chunk)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    os.replace(partial, path)  # a failed download never leaves a truncated FILE behind
    return size


async def _smtp_check(args: argparse.Namespace) -> int:
    from ._smtpcheck import parse_server, run_smtp_check

    try:
        host, port = parse_server(args.server)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    policy = policy_from(args, opt_out=args.insecure_legacy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePolicyWarning)
        return await run_smtp_check(
            host, port, policy, timeout=args.timeout, ehlo=args.ehlo, out_stream=sys.stdout
        )


async def _policy(args: argparse.Namespace) -> int:
    from ._manager import ConnectionManager

    protocols, strong = environment_sources()
    async with ConnectionManager() as mgr:
        if args.url is None:
            policy, where = mgr.policy, None
        else:
            try:
                sp = mgr.find_service_point(args.url)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            policy, where = sp.policy, sp.address
    info = describe(
        policy, protocols_source=protocols, strong_crypto_source=strong, service_point=where
    )
    print(json.dumps(info, indent=2) if args.json else render(info))
    return EXIT_OK


_COMMANDS = {
    "demo": _demo,
    "probe": _probe,
    "get": _get,
    "smtp-check": _smtp_check,
    "policy": _policy,
}
