"""A TLS ClientHello built byte by byte, and the server's first flight read back (sans I/O).

The probe learns what a server *chooses* from what it answers in clear: the ServerHello
(version, suite, group, ALPN under TLS 1.2), a HelloRetryRequest (TLS 1.3 suite and group),
and under TLS 1.2 and older the Certificate and ServerKeyExchange messages (the chain as sent,
the DH prime or the curve). No key is ever derived: after the first flight the connection is
dropped, so offering a suite costs the server one ServerHello, as with sslscan or nmap.

Everything here is pure: `client_hello` returns bytes, `ServerFlight` is fed bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import struct
from collections.abc import Sequence

__all__ = [
    "GROUPS",
    "TLS13_SUITES",
    "WIRE_VERSIONS",
    "FlightError",
    "ServerFlight",
    "client_hello",
    "key_exchange_facts",
]

WIRE_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
VERSION_NAMES = {code: name for name, code in WIRE_VERSIONS.items()} | {0x0300: "SSLv3"}

TLS13_SUITES = {
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0x1304: "TLS_AES_128_CCM_SHA256",
    0x1305: "TLS_AES_128_CCM_8_SHA256",
}
"""Every TLS 1.3 suite (RFC 8446 §B.4)."""

GROUPS = {
    "x25519": 0x001D,
    "secp256r1": 0x0017,
    "x448": 0x001E,
    "secp521r1": 0x0019,
    "secp384r1": 0x0018,
    "ffdhe2048": 0x0100,
    "ffdhe3072": 0x0101,
    "ffdhe4096": 0x0102,
    "ffdhe6144": 0x0103,
    "ffdhe8192": 0x0104,
    "X25519MLKEM768": 0x11EC,
    "SecP256r1MLKEM768": 0x11EB,
    "SecP384r1MLKEM1024": 0x11ED,
}
"""Named groups (RFC 8446 §4.2.7, RFC 7919, draft-ietf-tls-ecdhe-mlkem), in OpenSSL 3.0's
default order first."""
GROUP_NAMES = {code: name for name, code in GROUPS.items()}

_SIGNATURE_ALGORITHMS = (
    0x0403, 0x0503, 0x0603, 0x0807, 0x0808, 0x0804, 0x0805, 0x0806,  # ECDSA, EdDSA, RSA-PSS
    0x0809, 0x080A, 0x080B, 0x0401, 0x0501, 0x0601, 0x0303, 0x0301,  # PSS-PSS, PKCS#1
    0x0302, 0x0402, 0x0502, 0x0602, 0x0203, 0x0201, 0x0202,  # DSA, SHA-1 (for old servers)
)  # fmt: skip
"""Every signature scheme a server might need to sign its key exchange with: the probe asks
what the server accepts, not what a client should."""

_RENEGOTIATION_SCSV = 0x00FF
"""RFC 5746 §3.3: signals secure renegotiation without the extension."""
_HELLO_RETRY_RANDOM = bytes.fromhex(
    "CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C"
)
"""RFC 8446 §4.1.3: a ServerHello with this random is a HelloRetryRequest."""
MAX_FLIGHT = 256 * 1024
"""Bytes of a first flight read at most (long chains stay far below it)."""


class _Ext(enum.IntEnum):
    SERVER_NAME = 0
    SUPPORTED_GROUPS = 10
    EC_POINT_FORMATS = 11
    SIGNATURE_ALGORITHMS = 13
    ALPN = 16
    EXTENDED_MASTER_SECRET = 23
    SESSION_TICKET = 35
    SUPPORTED_VERSIONS = 43
    PSK_KEY_EXCHANGE_MODES = 45
    KEY_SHARE = 51


class _Record(enum.IntEnum):
    ALERT = 21
    HANDSHAKE = 22


class _Handshake(enum.IntEnum):
    SERVER_HELLO = 2
    CERTIFICATE = 11
    SERVER_KEY_EXCHANGE = 12
    SERVER_HELLO_DONE = 14


ALERTS = {
    10: "unexpected_message",
    40: "handshake_failure",
    47: "illegal_parameter",
    50: "decode_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    112: "unrecognized_name",
    120: "no_application_protocol",
}


def client_hello(
    version: str,
    suites: Sequence[int],
    *,
    server_name: str | None = None,
    groups: Sequence[int] = tuple(GROUPS.values())[:10],
    key_shares: Sequence[int] = (GROUPS["x25519"],),
    alpn: Sequence[str] = (),
) -> bytes:
    """One ClientHello record offering *suites* at *version* (``"TLSv1"`` to ``"TLSv1.3"``).

    A TLS 1.3 hello carries key shares only for X25519 (a random point: nothing is derived)
    among *key_shares*; a server preferring another group answers with a HelloRetryRequest,
    which says the group as well. An empty *key_shares* asks for exactly that retry.
    """
    tls13 = version == "TLSv1.3"
    legacy_version = min(WIRE_VERSIONS[version], 0x0303)
    suite_list = list(suites) + ([] if tls13 else [_RENEGOTIATION_SCSV])
    extensions = []
    if server_name:
        name = server_name.encode("ascii")
        entry = b"\x00" + _u16(len(name)) + name
        extensions.append(_ext(_Ext.SERVER_NAME, _u16(len(entry)) + entry))
    extensions.append(_ext(_Ext.SUPPORTED_GROUPS, _vector16(b"".join(map(_u16, groups)))))
    extensions.append(_ext(_Ext.EC_POINT_FORMATS, b"\x01\x00"))
    schemes = b"".join(map(_u16, _SIGNATURE_ALGORITHMS))
    extensions.append(_ext(_Ext.SIGNATURE_ALGORITHMS, _vector16(schemes)))
    if alpn:
        names = b"".join(bytes([len(p)]) + p.encode("ascii") for p in alpn)
        extensions.append(_ext(_Ext.ALPN, _vector16(names)))
    extensions.append(_ext(_Ext.EXTENDED_MASTER_SECRET, b""))
    extensions.append(_ext(_Ext.SESSION_TICKET, b""))
    if tls13:
        extensions.append(_ext(_Ext.SUPPORTED_VERSIONS, b"\x02\x03\x04"))
        extensions.append(_ext(_Ext.PSK_KEY_EXCHANGE_MODES, b"\x01\x01"))
        shares = b"".join(
            _u16(g) + _vector16(os.urandom(32)) for g in key_shares if g == GROUPS["x25519"]
        )
        extensions.append(_ext(_Ext.KEY_SHARE, _vector16(shares)))
    body = (
        _u16(legacy_version)
        + os.urandom(32)
        + (b"\x20" + os.urandom(32) if tls13 else b"\x00")  # RFC 8446 §D.4 compatibility
        + _vector16(b"".join(map(_u16, suite_list)))
        + b"\x01\x00"  # no compression
        + _vector16(b"".join(extensions))
    )
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return bytes([_Record.HANDSHAKE]) + _u16(0x0301) + _u16(len(message)) + message


class FlightError(ValueError):
    """The answer is not TLS, or is malformed TLS."""


@dataclasses.dataclass(slots=True)
class ServerFlight:
    """The server's answer to one ClientHello, fed as it arrives."""

    version: int | None = None
    """The version the server chose (TLS 1.3: from ``supported_versions``)."""
    cipher: int | None = None
    group: int | None = None
    """TLS 1.3: the key share's group (or the one a retry asks for)."""
    retry: bool = False
    """A HelloRetryRequest: the suite and group are chosen, no key share yet."""
    alpn: str | None = None
    session_id: bytes = b""
    ticket_extension: bool = False
    """The ServerHello echoed the session_ticket extension (RFC 5077: it will issue one)."""
    certificates: list[bytes] = dataclasses.field(default_factory=list)
    key_exchange: bytes | None = None
    """The ServerKeyExchange body (TLS 1.2 and older)."""
    alert: str | None = None
    done: bool = False
    _buffer: bytearray = dataclasses.field(default_factory=bytearray)
    _handshake: bytearray = dataclasses.field(default_factory=bytearray)
    _seen: int = 0

    @property
    def chosen(self) -> bool:
        """Whether the server accepted the hello (a suite was chosen)."""
        return self.cipher is not None

    def feed(self, data: bytes) -> None:
        """Take bytes from the server; `FlightError` if they are not TLS."""
        self._seen += len(data)
        if self._seen > MAX_FLIGHT:
            raise FlightError(f"the first flight exceeds {MAX_FLIGHT} bytes")
        self._buffer += data
        while not self.done and len(self._buffer) >= 5:
            kind, major = self._buffer[0], self._buffer[1]
            if kind not in (20, 21, 22, 23) or major != 3:
                raise FlightError("not TLS")
            length = struct.unpack_from("!H", self._buffer, 3)[0]
            if len(self._buffer) < 5 + length:
                return
            fragment = bytes(self._buffer[5 : 5 + length])
            del self._buffer[: 5 + length]
            if kind == _Record.ALERT:
                code = fragment[1] if len(fragment) > 1 else -1
                self.alert = ALERTS.get(code, f"alert {code}")
                self.done = True
            elif kind == _Record.HANDSHAKE:
                self._handshake += fragment
                self._messages()
            else:  # ChangeCipherSpec or encrypted records: TLS 1.3 past its ServerHello
                self.done = True

    def _messages(self) -> None:
        while len(self._handshake) >= 4 and not self.done:
            kind = self._handshake[0]
            length = int.from_bytes(self._handshake[1:4], "big")
            if len(self._handshake) < 4 + length:
                return
            body = bytes(self._handshake[4 : 4 + length])
            del self._handshake[: 4 + length]
            if kind == _Handshake.SERVER_HELLO:
                self._server_hello(body)
                if self.retry or self.version == WIRE_VERSIONS["TLSv1.3"]:
                    self.done = True  # the rest is encrypted
            elif kind == _Handshake.CERTIFICATE:
                self.certificates = _certificate_list(body)
            elif kind == _Handshake.SERVER_KEY_EXCHANGE:
                self.key_exchange = body
            elif kind == _Handshake.SERVER_HELLO_DONE:
                self.done = True

    def _server_hello(self, body: bytes) -> None:
        try:
            self.version = struct.unpack_from("!H", body, 0)[0]
            self.retry = body[2:34] == _HELLO_RETRY_RANDOM
            sid_len = body[34]
            self.session_id = body[35 : 35 + sid_len]
            offset = 35 + sid_len
            self.cipher = struct.unpack_from("!H", body, offset)[0]
            offset += 3  # the suite and the compression method
            extensions = body[offset + 2 :] if len(body) > offset else b""
        except (IndexError, struct.error) as exc:
            raise FlightError("a malformed ServerHello") from exc
        for ext, data in _extensions(extensions):
            if ext == _Ext.SUPPORTED_VERSIONS and len(data) == 2:
                self.version = struct.unpack("!H", data)[0]
            elif ext == _Ext.KEY_SHARE and len(data) >= 2:
                self.group = struct.unpack_from("!H", data)[0]
            elif ext == _Ext.ALPN and len(data) > 3:
                self.alpn = data[3 : 3 + data[2]].decode("ascii", "replace")
            elif ext == _Ext.SESSION_TICKET:
                self.ticket_extension = True


def key_exchange_facts(body: bytes, kea: str) -> tuple[int | None, int | None]:
    """(named group, DH prime bits) of a ServerKeyExchange body, by the suite's exchange.

    *kea* is OpenSSL's ``kx-ecdhe`` or ``kx-dhe``; others carry nothing the probe reads.
    """
    try:
        if kea == "kx-ecdhe" and body[0] == 3:  # named_curve (RFC 8422 §5.4)
            return struct.unpack_from("!H", body, 1)[0], None
        if kea == "kx-dhe":
            length = struct.unpack_from("!H", body, 0)[0]
            return None, int.from_bytes(body[2 : 2 + length], "big").bit_length()
    except (IndexError, struct.error):
        pass
    return None, None


def _certificate_list(body: bytes) -> list[bytes]:
    """The DER certificates of a TLS 1.2 Certificate message, leaf first, as sent."""
    total = int.from_bytes(body[0:3], "big")
    data, found, offset = body[3 : 3 + total], [], 0
    while offset + 3 <= len(data):
        length = int.from_bytes(data[offset : offset + 3], "big")
        found.append(data[offset + 3 : offset + 3 + length])
        offset += 3 + length
    return found


def _extensions(data: bytes) -> list[tuple[int, bytes]]:
    found, offset = [], 0
    while offset + 4 <= len(data):
        ext, length = struct.unpack_from("!HH", data, offset)
        found.append((ext, data[offset + 4 : offset + 4 + length]))
        offset += 4 + length
    return found


def _u16(value: int) -> bytes:
    return struct.pack("!H", value)


def _vector16(data: bytes) -> bytes:
    return _u16(len(data)) + data


def _ext(kind: int, data: bytes) -> bytes:
    return _u16(kind) + _vector16(data)
