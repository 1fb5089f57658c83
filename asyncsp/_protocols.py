"""`SecurityProtocol`: which SSL/TLS versions a connection may use, with .NET's numbers."""

from __future__ import annotations

import enum
import re
import ssl

from ._errors import InvalidSecurityProtocolError

__all__ = ["SecurityProtocol"]


class SecurityProtocol(enum.IntFlag):
    """The SSL/TLS versions new connections may negotiate.

    The values are those of .NET's ``SecurityProtocolType``, so numbers from existing
    configuration carry over. ``SYSTEM_DEFAULT`` (0) lets OpenSSL and the system configuration
    choose; any other value is an explicit set, checked against every established connection.
    """

    SYSTEM_DEFAULT = 0
    SSL3 = 48
    TLS = 192
    TLS11 = 768
    TLS12 = 3072
    TLS13 = 12288

    @classmethod
    def validate(cls, value: object) -> SecurityProtocol:
        """Return *value* as a `SecurityProtocol`, or raise `InvalidSecurityProtocolError`.

        Accepts a member, a combination of members or an ``int`` with only known bits;
        ``SYSTEM_DEFAULT`` cannot be combined with other flags (it has no bits, so only an
        explicit ``SYSTEM_DEFAULT | x`` coming from text can ask for that; see `parse`).
        """
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidSecurityProtocolError(
                f"security protocol must be a SecurityProtocol or int, not {type(value).__name__}"
                f" ({value!r}); valid names: {_valid_names()}"
            )
        # .NET's values use two bits per version; a value is valid only as a union of whole
        # members, so a lone half (1024) is as wrong as an unknown bit (1).
        whole = sum(int(m) for m in _VERSION_ORDER if int(value) & int(m) == int(m))
        if int(value) != whole:
            raise InvalidSecurityProtocolError(
                f"security protocol {int(value)} is not a combination of known versions; "
                "valid values: " + ", ".join(f"{m.name}={m.value}" for m in _ALL_MEMBERS)
            )
        return cls(int(value))

    @classmethod
    def parse(cls, text: str) -> SecurityProtocol:
        """Parse a configuration string into a `SecurityProtocol`.

        Tokens are separated by ``,``, ``|``, ``+`` or white space. Each token is a member name in
        any case (``TLS12``), a .NET spelling (``Tls12``, ``SystemDefault``), an OpenSSL spelling
        (``TLSv1.2``) or a decimal number (``12288``). An empty string or an unknown token raises
        `InvalidSecurityProtocolError` naming the token and listing the valid names.
        """
        if not isinstance(text, str):
            raise InvalidSecurityProtocolError(
                f"SecurityProtocol.parse() takes a str, not {type(text).__name__}"
            )
        tokens = [t for t in _SEPARATORS.split(text.strip()) if t]
        if not tokens:
            raise InvalidSecurityProtocolError(
                f"empty security protocol {text!r}; valid names: {_valid_names()}"
            )
        result = 0
        saw_system_default = False
        for token in tokens:
            if token.isascii() and token.isdigit():
                if len(token) > 6:  # no valid value has more digits than 15360
                    raise InvalidSecurityProtocolError(
                        f"security protocol number {token[:12]!r} is too large; valid values: "
                        + ", ".join(f"{m.name}={m.value}" for m in _ALL_MEMBERS)
                    )
                value = int(cls.validate(int(token)))
            else:
                found = _ALIASES.get(_normalise(token))
                if found is None:
                    raise InvalidSecurityProtocolError(
                        f"unknown security protocol {token!r} in {text!r}; valid names: "
                        f"{_valid_names()}"
                    )
                value = int(found)
            saw_system_default |= value == 0
            result |= value
        if saw_system_default and result:
            raise InvalidSecurityProtocolError(
                f"SystemDefault cannot be combined with other versions in {text!r}"
            )
        return cls(result)

    @property
    def members(self) -> tuple[SecurityProtocol, ...]:
        """The single-version members in this set, oldest first."""
        return tuple(m for m in _VERSION_ORDER if self & m == m)

    def allows(self, version: SecurityProtocol) -> bool:
        """Whether the single-version member *version* is in this set."""
        return bool(version) and self & version == version

    @property
    def tls_version(self) -> ssl.TLSVersion:
        """The `ssl.TLSVersion` of a single-version member."""
        try:
            return _TO_TLS_VERSION[self]
        except KeyError:
            raise InvalidSecurityProtocolError(f"{self!r} is not a single version") from None

    @classmethod
    def from_version_string(cls, version: str) -> SecurityProtocol:
        """The member for a version string as `ssl.SSLObject.version()` reports it."""
        try:
            return _FROM_VERSION_STRING[version]
        except KeyError:
            raise InvalidSecurityProtocolError(f"unknown TLS version string {version!r}") from None


_SEPARATORS = re.compile(r"[\s,|+]+")
_VERSION_ORDER = (
    SecurityProtocol.SSL3,
    SecurityProtocol.TLS,
    SecurityProtocol.TLS11,
    SecurityProtocol.TLS12,
    SecurityProtocol.TLS13,
)
_ALL_MEMBERS = (SecurityProtocol.SYSTEM_DEFAULT, *_VERSION_ORDER)
_TO_TLS_VERSION = {
    SecurityProtocol.SSL3: ssl.TLSVersion.SSLv3,
    SecurityProtocol.TLS: ssl.TLSVersion.TLSv1,
    SecurityProtocol.TLS11: ssl.TLSVersion.TLSv1_1,
    SecurityProtocol.TLS12: ssl.TLSVersion.TLSv1_2,
    SecurityProtocol.TLS13: ssl.TLSVersion.TLSv1_3,
}
_FROM_VERSION_STRING = {
    "SSLv3": SecurityProtocol.SSL3,
    "TLSv1": SecurityProtocol.TLS,
    "TLSv1.1": SecurityProtocol.TLS11,
    "TLSv1.2": SecurityProtocol.TLS12,
    "TLSv1.3": SecurityProtocol.TLS13,
}


def _normalise(token: str) -> str:
    # "TLSv1.2", "Tls12", "tls_1_2" and "TLS1.2" all become "tls12".
    return re.sub(r"[._\-]", "", token.lower()).replace("tlsv", "tls").replace("sslv", "ssl")


_ALIASES: dict[str, SecurityProtocol] = {
    "systemdefault": SecurityProtocol.SYSTEM_DEFAULT,
    "default": SecurityProtocol.SYSTEM_DEFAULT,
    "ssl3": SecurityProtocol.SSL3,
    "tls": SecurityProtocol.TLS,
    "tls1": SecurityProtocol.TLS,
    "tls10": SecurityProtocol.TLS,
    "tls11": SecurityProtocol.TLS11,
    "tls12": SecurityProtocol.TLS12,
    "tls13": SecurityProtocol.TLS13,
}


def _valid_names() -> str:
    return (
        "SystemDefault, Ssl3, Tls, Tls11, Tls12, Tls13 (any case), "
        "TLSv1, TLSv1.1, TLSv1.2, TLSv1.3, or their numbers 0, 48, 192, 768, 3072, 12288"
    )
