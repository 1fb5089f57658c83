"""The system's word: what the administrator's OpenSSL configuration decides for TLS clients.

On Linux the system-wide TLS configuration is OpenSSL's: the ``system_default`` section of the
configuration file the process loads (``OPENSSL_CONF``, else OpenSSL's own ``openssl.cnf``),
often through ``.include`` files (crypto-policies write exactly that). OpenSSL applies it to
every new ``SSL_CTX``; CPython's ``ssl.SSLContext`` then overwrites part of it (its minimum of
TLS 1.2 and, on most builds, its own cipher list), so asyncsp reads the settings back and
re-applies them to every context it builds (`asyncsp._contexts`): the system can tighten a policy,
never loosen it.

The values are exact: they are asked of a fresh ``SSL_CTX`` made by the very libssl the
``ssl`` module loaded (through ``ctypes``), so they are what OpenSSL itself made of the file,
``.include`` and all. The file is read only to say where each setting came from. Where the
library cannot be asked, `SystemTlsConfig.readable` is ``False`` with the reason, and nothing
is guessed.

Everything about reading the system's configuration lives here; what a policy makes of it
lives in `asyncsp._contexts`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import glob
import os
import re
import ssl
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["ConfigSource", "SystemTlsConfig", "system_tls_config"]

_SSL_CTRL_GET_MIN_PROTO_VERSION = 130
_SSL_CTRL_GET_MAX_PROTO_VERSION = 131
_MAX_INCLUDES = 64
"""Files read at most while looking for where a setting came from (``.include`` can nest)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where one ``system_default`` setting was written: file, line and the text there."""

    file: str
    line: int
    setting: str
    value: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} ({self.setting} = {self.value})"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SystemTlsConfig:
    """The TLS client settings of the system's OpenSSL configuration, as OpenSSL applies them."""

    path: str | None
    """The configuration file OpenSSL loads (``OPENSSL_CONF``, else its own default)."""
    readable: bool
    """Whether OpenSSL could be asked; when ``False`` no system bound is applied (``reason``)."""
    reason: str | None = None
    """Why the settings could not be read."""
    min_version: ssl.TLSVersion | None = None
    """``MinProtocol``: the oldest version any connection may use, or ``None`` (no bound)."""
    max_version: ssl.TLSVersion | None = None
    """``MaxProtocol``: the newest version any connection may use, or ``None`` (no bound)."""
    security_level: int | None = None
    """OpenSSL's security level for a new context (``@SECLEVEL``, else the library's own)."""
    ciphers: tuple[str, ...] | None = None
    """The TLS 1.2-and-older suites ``CipherString`` allows, when it narrows OpenSSL's
    ``DEFAULT`` list; ``None`` when the system leaves the list alone."""
    tls13_suites: tuple[str, ...] = ()
    """The TLS 1.3 suites a new context offers (``Ciphersuites``; CPython keeps them)."""
    sources: Mapping[str, ConfigSource] = dataclasses.field(default_factory=dict)
    """Setting name (``MinProtocol``, ``CipherString``...) to where the file sets it."""

    @property
    def sets_security_level(self) -> bool:
        """Whether the administrator chose the security level (``@SECLEVEL`` in the file)."""
        source = self.sources.get("CipherString")
        return source is not None and "@SECLEVEL" in source.value.upper()

    def describe(self, setting: str) -> str:
        """Where *setting* came from, for messages: the file and line, else the file."""
        source = self.sources.get(setting)
        if source is not None:
            return str(source)
        return f"{self.path or 'the OpenSSL configuration'} ({setting})"


@functools.cache
def system_tls_config() -> SystemTlsConfig:
    """The system's TLS client configuration, read once: OpenSSL reads its file once per process."""
    path = os.environ.get("OPENSSL_CONF") or None
    try:
        library = _Libssl.loaded()
        if path is None:
            path = library.default_config_file() or None
        return dataclasses.replace(library.read(path), sources=_sources(path))
    except (OSError, AttributeError, ValueError) as exc:
        return SystemTlsConfig(
            path=path,
            readable=False,
            reason=f"cannot ask the OpenSSL library the ssl module uses: {exc}",
        )


# -- asking OpenSSL ----------------------------------------------------------------------------


class _Libssl:
    """The libssl the ``ssl`` module loaded, reached through ``ctypes`` (its public C API only)."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)  # already loaded: the same library, configuration and state
        vp, i, c = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
        self._signature(lib.TLS_client_method, vp, [])
        self._signature(lib.SSL_CTX_new, vp, [vp])
        self._signature(lib.SSL_CTX_free, None, [vp])
        self._signature(lib.SSL_CTX_ctrl, c, [vp, i, c, vp])
        self._signature(lib.SSL_CTX_get_security_level, i, [vp])
        self._signature(lib.SSL_CTX_set_cipher_list, i, [vp, ctypes.c_char_p])
        self._signature(lib.SSL_CTX_get_ciphers, vp, [vp])
        self._signature(lib.OPENSSL_sk_num, i, [vp])
        self._signature(lib.OPENSSL_sk_value, vp, [vp, i])
        self._signature(lib.SSL_CIPHER_get_name, ctypes.c_char_p, [vp])
        self._signature(lib.CONF_get1_default_config_file, vp, [])
        self._signature(lib.CRYPTO_free, None, [vp, ctypes.c_char_p, i])
        self._lib = lib

    @staticmethod
    def _signature(function: Any, restype: object, argtypes: list[object]) -> None:
        function.restype = restype
        function.argtypes = argtypes

    @classmethod
    def loaded(cls) -> _Libssl:
        """The libssl mapped into this process (the one ``ssl`` links), found in its maps."""
        try:
            with open("/proc/self/maps", encoding="utf-8") as maps:
                for line in maps:
                    path = line.rsplit(maxsplit=1)[-1]
                    if re.search(r"/libssl[.-][^/]*\.so|/libssl\.so", path):
                        return cls(path)
        except OSError as exc:
            raise OSError(f"cannot list the process's libraries ({exc})") from None
        raise OSError("the ssl module's libssl is not mapped into the process")

    def default_config_file(self) -> str | None:
        pointer = self._lib.CONF_get1_default_config_file()
        if not pointer:
            return None
        try:
            return ctypes.string_at(pointer).decode("utf-8", "replace")
        finally:
            self._lib.CRYPTO_free(pointer, None, 0)

    def read(self, path: str | None) -> SystemTlsConfig:
        """The settings of a fresh client context: the system section, applied by OpenSSL."""
        lib = self._lib
        fresh, reference = self._new(), self._new()
        try:
            if lib.SSL_CTX_set_cipher_list(reference, b"DEFAULT") != 1:
                raise ValueError("OpenSSL refused its own DEFAULT cipher list")
            ciphers = self._ciphers(fresh)
            legacy = tuple(name for name in ciphers if not name.startswith("TLS_"))
            default = tuple(n for n in self._ciphers(reference) if not n.startswith("TLS_"))
            return SystemTlsConfig(
                path=path,
                readable=True,
                min_version=_version(
                    lib.SSL_CTX_ctrl(fresh, _SSL_CTRL_GET_MIN_PROTO_VERSION, 0, None)
                ),
                max_version=_version(
                    lib.SSL_CTX_ctrl(fresh, _SSL_CTRL_GET_MAX_PROTO_VERSION, 0, None)
                ),
                security_level=int(lib.SSL_CTX_get_security_level(fresh)),
                ciphers=None if legacy == default else legacy,
                tls13_suites=tuple(name for name in ciphers if name.startswith("TLS_")),
            )
        finally:
            lib.SSL_CTX_free(fresh)
            lib.SSL_CTX_free(reference)

    def _new(self) -> int:
        ctx = self._lib.SSL_CTX_new(self._lib.TLS_client_method())
        if not ctx:
            raise ValueError("SSL_CTX_new failed")
        return int(ctx)

    def _ciphers(self, ctx: int) -> tuple[str, ...]:
        lib = self._lib
        stack = lib.SSL_CTX_get_ciphers(ctx)
        if not stack:
            return ()
        return tuple(
            lib.SSL_CIPHER_get_name(lib.OPENSSL_sk_value(stack, n)).decode("ascii")
            for n in range(lib.OPENSSL_sk_num(stack))
        )


def _version(number: int) -> ssl.TLSVersion | None:
    if number <= 0:
        return None  # no bound
    try:
        return ssl.TLSVersion(number)
    except ValueError:
        return None  # a DTLS or unknown number: not a bound on TLS


# -- where each setting was written --------------------------------------------------------------


def _sources(path: str | None) -> dict[str, ConfigSource]:
    """Setting name to the line of *path* (or an included file) that sets it in the section
    OpenSSL applies to new contexts: ``openssl_conf`` -> ``ssl_conf`` -> ``system_default``."""
    if path is None:
        return {}
    sections: dict[str, dict[str, ConfigSource]] = {}
    try:
        for section, source in _entries(path):
            sections.setdefault(section, {}).setdefault(source.setting.lower(), source)
    except (OSError, UnicodeDecodeError):
        return {}
    name = "default"
    for link in ("openssl_conf", "ssl_conf", "system_default"):
        found = sections.get(name, {}).get(link)
        if found is None:
            return {}
        name = found.value
    return {source.setting: source for source in sections.get(name, {}).values()}


def _entries(path: str) -> Iterator[tuple[str, ConfigSource]]:
    """(section, setting) pairs of an OpenSSL configuration file, following ``.include``."""
    budget = [_MAX_INCLUDES]
    section = ["default"]
    yield from _file_entries(path, section, budget)


def _file_entries(
    path: str, section: list[str], budget: list[int]
) -> Iterator[tuple[str, ConfigSource]]:
    budget[0] -= 1
    if budget[0] < 0:
        return
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            section[0] = line.strip("[] \t")
            continue
        if line.startswith(".include"):
            target = line[len(".include") :].lstrip(" \t=").strip()
            for included in _included(target, path):
                yield from _file_entries(included, section, budget)
            continue
        if line.startswith(".") or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        yield section[0], ConfigSource(path, number, key, value.strip("\"'"))


def _included(target: str, including: str) -> list[str]:
    """The files an ``.include`` names: a file, or a directory's ``*.cnf``/``*.conf``."""
    if not os.path.isabs(target):
        base = os.environ.get("OPENSSL_CONF_INCLUDE") or os.path.dirname(including)
        target = os.path.join(base, target)
    if os.path.isdir(target):
        return sorted(
            glob.glob(os.path.join(target, "*.cnf")) + glob.glob(os.path.join(target, "*.conf"))
        )
    return [target] if os.path.isfile(target) else []


def version_name(version: ssl.TLSVersion) -> str:
    """``TLSv1.2`` for ``TLSVersion.TLSv1_2``: how OpenSSL and `TlsInfo.version` spell it."""
    return version.name.replace("_", ".")
