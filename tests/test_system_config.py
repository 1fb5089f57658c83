"""The system's word: the administrator's OpenSSL configuration bounds every policy.

OpenSSL reads its configuration once per process, so each case runs its client in a
subprocess whose ``OPENSSL_CONF`` names a file written here; the servers run in this process,
under no such file, with trustme certificates. Every refusal checks the server received no
application byte.
"""

from __future__ import annotations

import json
import os
import pathlib
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

import asyncsp
from asyncsp import SecurityProtocol, TlsPolicy

from .servers import ThreadedServer, server_context

CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys, warnings
    import asyncsp
    from asyncsp import ConnectionManager, SecurityProtocol, TlsPolicy

    args = json.loads(sys.argv[1])

    async def main():
        warnings.simplefilter("ignore", asyncsp.InsecurePolicyWarning)
        config = asyncsp.system_tls_config()
        result = {
            "config": {
                "path": config.path,
                "min": config.min_version and config.min_version.name,
                "max": config.max_version and config.max_version.name,
                "level": config.security_level,
                "sources": {k: [v.file, v.line] for k, v in config.sources.items()},
            }
        }
        try:
            policy = TlsPolicy(
                cafile=args.get("cafile"),
                protocols=SecurityProtocol.parse(args.get("protocols", "SystemDefault")),
                strong_crypto=args.get("strong", True),
            )
            context = policy.ssl_context()
            result["suites"] = len([c for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"])
            result["offered"] = [m.name for m in policy.offered_versions().members]
            if args.get("port"):
                async with ConnectionManager(policy=policy) as mgr:
                    stream_cm = mgr.open_stream("localhost", args["port"], tls=True, timeout=5)
                    async with stream_cm as s:
                        s.write(b"x")
                        await s.readexactly(6)
                        result["version"] = s.tls.version
        except asyncsp.AsyncspError as exc:
            result["error"] = type(exc).__name__
            result["message"] = str(exc)
        return result

    print(json.dumps(asyncio.run(main())))
    """
)

SYSTEM_SECTION = """\
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
"""


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("system") / "ca.pem"
    ca.cert_pem.write_to_path(path)
    return str(path)


def config_file(tmp_path: pathlib.Path, *settings: str) -> str:
    path = tmp_path / "openssl.cnf"
    path.write_text(SYSTEM_SECTION + "\n".join(settings) + "\n")
    return str(path)


def run_client(
    config: str | None, cafile: str | None, *, environ: dict[str, str] | None = None, **args: Any
) -> dict[str, Any]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENSSL_", "ASYNCSP_", "SSL_CERT_"))
    }
    env.update(environ or {})
    if config is not None:
        env["OPENSSL_CONF"] = config
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, json.dumps({"cafile": cafile, **args})],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def servers(server_cert: trustme.LeafCert) -> Iterator[dict[str, ThreadedServer]]:
    """Echo servers pinned to one version each, and one speaking TLS 1.2 and 1.3."""
    ranges = {
        "TLSv1": ("TLSv1", "TLSv1"),
        "TLSv1.2": ("TLSv1.2", "TLSv1.2"),
        "TLSv1.3": ("TLSv1.3", "TLSv1.3"),
        "both": ("TLSv1.2", "TLSv1.3"),
    }
    running = {
        name: ThreadedServer(server_context(server_cert, low, high))
        for name, (low, high) in ranges.items()
    }
    for server in running.values():
        server.__enter__()
    try:
        yield running
    finally:
        for server in running.values():
            server.close()


def no_application_bytes(server: ThreadedServer) -> bool:
    return server.record.received == []


def test_min_protocol_refuses_an_older_server(
    servers: dict[str, ThreadedServer], ca_file: str, tmp_path: pathlib.Path
) -> None:
    # Without the file the same script reaches the TLS 1.2 server.
    assert run_client(None, ca_file, port=servers["TLSv1.2"].port)["version"] == "TLSv1.2"
    servers["TLSv1.2"].record.received.clear()

    config = config_file(tmp_path, "MinProtocol = TLSv1.3")
    refused = run_client(config, ca_file, port=servers["TLSv1.2"].port)
    assert refused["error"] == "ProtocolNotAllowedError"
    assert config in refused["message"] and "MinProtocol" in refused["message"]
    assert no_application_bytes(servers["TLSv1.2"])
    assert refused["offered"] == ["TLS13"]

    accepted = run_client(config, ca_file, port=servers["TLSv1.3"].port)
    assert accepted["version"] == "TLSv1.3"
    assert accepted["config"]["sources"]["MinProtocol"] == [config, 7]


def test_max_protocol_caps_the_version(
    servers: dict[str, ThreadedServer], ca_file: str, tmp_path: pathlib.Path
) -> None:
    config = config_file(tmp_path, "MaxProtocol = TLSv1.2")
    result = run_client(config, ca_file, port=servers["both"].port)
    assert result["version"] == "TLSv1.2"
    assert result["offered"] == ["TLS12"]


def test_an_explicit_set_the_system_forbids_is_a_policy_error(
    servers: dict[str, ThreadedServer], ca_file: str, tmp_path: pathlib.Path
) -> None:
    config = config_file(tmp_path, "MaxProtocol = TLSv1.2")
    before = servers["TLSv1.3"].record.connections
    result = run_client(config, ca_file, protocols="Tls13", port=servers["TLSv1.3"].port)
    assert result["error"] == "PolicyError"
    assert config in result["message"] and "MaxProtocol" in result["message"]
    assert servers["TLSv1.3"].record.connections == before  # nothing was sent, not even a SYN


def test_the_legacy_opt_out_reaches_only_what_the_system_allows(
    servers: dict[str, ThreadedServer], ca_file: str, tmp_path: pathlib.Path
) -> None:
    legacy = {"protocols": "Tls, Tls11, Tls12", "strong": False}
    # Without the file the opt-out reaches the TLS 1.0 server.
    assert run_client(None, ca_file, port=servers["TLSv1"].port, **legacy)["version"] == "TLSv1"
    servers["TLSv1"].record.received.clear()

    config = config_file(tmp_path, "MinProtocol = TLSv1.2")
    result = run_client(config, ca_file, port=servers["TLSv1"].port, **legacy)
    assert result["offered"] == ["TLS12"]
    assert result["error"] == "ProtocolNotAllowedError"
    assert config in result["message"] and "MinProtocol" in result["message"]
    assert no_application_bytes(servers["TLSv1"])


def test_a_permissive_system_never_loosens_strong_crypto(
    servers: dict[str, ThreadedServer], ca_file: str, tmp_path: pathlib.Path
) -> None:
    strict = run_client(None, ca_file)
    config = config_file(tmp_path, "MinProtocol = TLSv1", "CipherString = DEFAULT@SECLEVEL=0")
    result = run_client(config, ca_file, port=servers["TLSv1"].port)
    assert result["offered"] == ["TLS12", "TLS13"]
    assert result["suites"] == strict["suites"]
    assert result["error"] == "ProtocolNotAllowedError"
    assert "system" not in result["message"]  # asyncsp's own floor refused it, not the file
    assert no_application_bytes(servers["TLSv1"])


def test_settings_in_an_included_file_hold(
    servers: dict[str, ThreadedServer], ca_file: str, tmp_path: pathlib.Path
) -> None:
    included = tmp_path / "policy.d" / "tight.cnf"
    included.parent.mkdir()
    included.write_text("[system_default_sect]\nMinProtocol = TLSv1.3\n")
    main = tmp_path / "main.cnf"
    main.write_text(
        "openssl_conf = openssl_init\n[openssl_init]\nssl_conf = ssl_sect\n"
        "[ssl_sect]\nsystem_default = system_default_sect\n"
        f".include {included.parent}\n"
    )
    result = run_client(str(main), ca_file, port=servers["TLSv1.2"].port)
    assert result["error"] == "ProtocolNotAllowedError"
    assert result["config"]["sources"]["MinProtocol"] == [str(included), 2]
    assert no_application_bytes(servers["TLSv1.2"])


def test_the_system_security_level_refuses_a_weak_key(
    ca_file: str, tmp_path: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    rsa_ca = trustme.CA(key_type=trustme.KeyType.RSA)  # RSA 2048: 112-bit security
    rsa_ca_file = tmp_path_factory.mktemp("rsa") / "ca.pem"
    rsa_ca.cert_pem.write_to_path(rsa_ca_file)
    leaf = rsa_ca.issue_cert("localhost", key_type=trustme.KeyType.RSA)
    with ThreadedServer(server_context(leaf)) as server:
        assert run_client(None, str(rsa_ca_file), port=server.port)["version"] == "TLSv1.3"
        server.record.received.clear()
        config = config_file(tmp_path, "CipherString = DEFAULT:@SECLEVEL=3")  # 128-bit
        result = run_client(config, str(rsa_ca_file), port=server.port)
        assert result["config"]["level"] == 3
        assert "error" in result, result
        assert server.record.received == []


def test_system_groups_hold(
    ca_file: str, tmp_path: pathlib.Path, server_cert: trustme.LeafCert
) -> None:
    context = server_context(server_cert)
    context.set_ecdh_curve("prime256v1")
    with ThreadedServer(context) as server:
        assert run_client(None, ca_file, port=server.port)["version"] == "TLSv1.3"
        server.record.received.clear()
        config = config_file(tmp_path, "Groups = X448")  # none the server offers
        result = run_client(config, ca_file, port=server.port)
        assert "error" in result, result
        assert server.record.received == []


def test_without_a_system_section_nothing_is_bounded() -> None:
    config = asyncsp.system_tls_config()
    assert config.readable, config.reason
    if "OPENSSL_CONF" not in os.environ and config.min_version is None:
        assert TlsPolicy().offered_versions() == SecurityProtocol.TLS12 | SecurityProtocol.TLS13
    assert isinstance(config.security_level, int)
    assert config.max_version in (None, *ssl.TLSVersion)


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "SSL_CERT_DIR"])
def test_the_system_trust_store_variables_are_honoured(
    servers: dict[str, ThreadedServer], ca_file: str, tmp_path: pathlib.Path, variable: str
) -> None:
    port = servers["both"].port
    refused = run_client(None, None, port=port)
    assert refused["error"] == "CertificateVerificationError"
    if variable == "SSL_CERT_FILE":
        location = ca_file
    else:  # a hashed directory, as c_rehash makes it
        location = str(tmp_path)
        digest = subprocess.run(
            ["openssl", "x509", "-hash", "-noout", "-in", ca_file],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        (tmp_path / f"{digest}.0").write_text(pathlib.Path(ca_file).read_text())
    trusted = run_client(None, None, environ={variable: location}, port=port)
    assert trusted.get("version") in {"TLSv1.2", "TLSv1.3"}, trusted


def _policy_command(
    config: str | None, *args: str, **environ: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENSSL_", "ASYNCSP_"))}
    env.update(environ)
    if config is not None:
        env["OPENSSL_CONF"] = config
    return subprocess.run(
        [sys.executable, "-m", "asyncsp", "policy", *args],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip


def test_the_policy_command_shows_who_decided(tmp_path: pathlib.Path) -> None:
    plain = _policy_command(None, "--json")
    assert plain.returncode == 0, plain.stderr
    before = json.loads(plain.stdout)
    assert before["versions"] == ["TLSv1.2", "TLSv1.3"]
    assert before["strong_crypto"] is True
    assert before["sources"]["protocols"] == "asyncsp default"

    config = config_file(tmp_path, "MinProtocol = TLSv1.3", "CipherString = DEFAULT:@SECLEVEL=3")
    tight = _policy_command(
        config, "https://localhost", "--json", ASYNCSP_SECURITY_PROTOCOL="Tls12, Tls13"
    )
    assert tight.returncode == 0, tight.stderr
    after = json.loads(tight.stdout)
    assert after["versions"] == ["TLSv1.3"]
    assert after["system_config"] == config
    assert after["security_level"] == 3
    assert after["protocols"] == "TLS12 | TLS13"
    assert after["sources"]["protocols"] == "ASYNCSP_SECURITY_PROTOCOL"
    assert after["sources"]["min_version"] == f"system: {config}:7 (MinProtocol = TLSv1.3)"
    assert after["sources"]["security_level"].startswith(f"system: {config}:8")

    text = _policy_command(config)
    assert text.returncode == 0
    assert "versions:        TLSv1.3" in text.stdout
    assert f"{config}:7 (MinProtocol = TLSv1.3)" in text.stdout


def test_the_policy_command_reports_a_forbidden_policy(tmp_path: pathlib.Path) -> None:
    config = config_file(tmp_path, "MaxProtocol = TLSv1.2")
    done = _policy_command(config, ASYNCSP_SECURITY_PROTOCOL="Tls13")
    assert done.returncode == 1
    assert "MaxProtocol" in done.stderr and config in done.stderr
    assert "Traceback" not in done.stderr
