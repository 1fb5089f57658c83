"""What a connection negotiated (`TlsInfo`), and the check every handshake passes.

The SSL objects of every context asyncsp makes (`checked_context`, hardened and cached by the
factory in ``_contexts.py``) verify the negotiated version, the pins and the policy's validator
*inside* ``do_handshake``, so a refused connection fails its handshake and no application byte
is ever written on it, whichever transport (asyncio streams, aiohttp, ``start_tls``) drives it.
A `ConnectAttempt` set in a context variable around a connect tells the SSL object which
endpoint it serves, which session to offer, and whom to tell about the result.

Every change to what a handshake must pass belongs in this file; how a policy becomes a
context in ``_contexts.py``, what a policy may say in ``_policy.py``, what the system's OpenSSL
configuration says in ``_system.py``, and how sessions are kept in ``_sessions.py``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import ssl
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._errors import (
    CertificateVerificationError,
    PinMismatchError,
    ProtocolNotAllowedError,
    TlsError,
)
from ._policy import TlsPolicy
from ._protocols import SecurityProtocol

__all__ = [
    "ConnectAttempt",
    "HandshakeRefused",
    "PolicyContext",
    "TlsInfo",
    "checked_context",
    "connect_attempt",
    "established_info",
    "received_close_notify",
]

_INFO_MEMO_SIZE = 16
"""Distinct negotiations (server certificate, version, cipher...) remembered per context; past
it the memo starts again."""
_VERSION_STRINGS = ("SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
"""What `ssl.SSLObject.version` reports, oldest first."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TlsInfo:
    """What one TLS connection actually negotiated."""

    protocol: SecurityProtocol
    """The negotiated version as a single `SecurityProtocol` member."""
    version: str
    """The negotiated version as OpenSSL spells it, e.g. ``"TLSv1.3"``."""
    cipher: str
    """The negotiated cipher suite, e.g. ``"TLS_AES_256_GCM_SHA384"``."""
    bits: int
    """The secret bits of the cipher."""
    alpn: str | None
    """The ALPN protocol the server selected, if any."""
    peer_cert_sha256: str | None
    """Lower-case hex SHA-256 of the peer's leaf certificate (DER), if it sent one."""
    session_reused: bool
    """Whether this connection resumed an earlier TLS session (abbreviated handshake)."""
    group: str | None = None
    """The key-exchange group negotiated (``"x25519"``, ``"X25519MLKEM768"``), where the `ssl`
    module can tell: an `ssl` object with a ``group()`` method (CPython 3.15); None before."""

    @classmethod
    def from_ssl_object(cls, ssl_object: ssl.SSLObject | ssl.SSLSocket) -> TlsInfo:
        """Read the facts of an established connection."""
        version = ssl_object.version()
        cipher = ssl_object.cipher()
        if version is None or cipher is None:
            raise TlsError("the TLS handshake has not completed")
        der = ssl_object.getpeercert(binary_form=True)
        return cls(
            protocol=SecurityProtocol.from_version_string(version),
            version=version,
            cipher=cipher[0],
            bits=cipher[2],
            alpn=ssl_object.selected_alpn_protocol(),
            peer_cert_sha256=hashlib.sha256(der).hexdigest() if der else None,
            session_reused=bool(ssl_object.session_reused),
            group=_negotiated_group(ssl_object),
        )


def _negotiated_group(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    group = getattr(ssl_object, "group", None)
    if group is None:
        return None
    name = group()
    return name if isinstance(name, str) else None


class _HandshakeCheck:
    """The check every handshake under one policy passes, prepared once per context.

    Connections to one server nearly always negotiate the same facts, so equal facts share
    one (frozen) `TlsInfo`: the common case reads five values from OpenSSL and finds the
    record, instead of hashing the certificate and building it again on every connection.
    """

    __slots__ = ("_infos", "allowed_versions", "policy")

    def __init__(self, policy: TlsPolicy) -> None:
        self.policy = policy
        # OpenSSL can only offer a contiguous range, so a set with a gap offers its whole
        # span; the version strings of the set itself are what a handshake must end with.
        self.allowed_versions: frozenset[str] | None = (
            frozenset(
                version
                for version in _VERSION_STRINGS
                if policy.protocols.allows(SecurityProtocol.from_version_string(version))
            )
            if policy.is_explicit
            else None
        )
        self._infos: dict[tuple[Any, ...], TlsInfo] = {}

    def info(self, ssl_object: ssl.SSLObject | ssl.SSLSocket) -> tuple[TlsInfo, bytes | None]:
        """The `TlsInfo` of an established connection and its peer's leaf DER."""
        der = ssl_object.getpeercert(binary_form=True)
        key = (
            ssl_object.version(),
            ssl_object.cipher(),
            ssl_object.selected_alpn_protocol(),
            ssl_object.session_reused,
            der,
        )
        info = self._infos.get(key)
        if info is None:
            info = TlsInfo.from_ssl_object(ssl_object)  # raises before an unfinished handshake
            if len(self._infos) >= _INFO_MEMO_SIZE:
                self._infos.clear()  # atomic: a context may serve event loops in several threads
            self._infos[key] = info
        return info, der

    def verify(
        self, ssl_object: ssl.SSLObject | ssl.SSLSocket, endpoint: str
    ) -> tuple[TlsInfo, bytes | None]:
        """Check an established connection; return its `TlsInfo` and leaf DER.

        Runs after every handshake, full or resumed, before the first application byte.
        """
        info, der = self.info(ssl_object)
        policy = self.policy
        allowed = self.allowed_versions
        if allowed is not None and info.version not in allowed:
            raise ProtocolNotAllowedError(
                f"{endpoint} negotiated {info.version}, which the policy does not allow "
                f"({policy.protocols!r}); the connection was closed before any data was sent",
                endpoint=endpoint,
            )
        if policy.pins and info.peer_cert_sha256 not in policy.pins:
            raise PinMismatchError(
                f"{endpoint} presented a certificate (sha256 {info.peer_cert_sha256}) that "
                "matches none of the policy's pins; the connection was closed before any data "
                "was sent",
                endpoint=endpoint,
            )
        if policy.validator is not None:
            try:
                accepted = policy.validator(info, der or b"")
            except Exception as exc:
                raise CertificateVerificationError(
                    f"{endpoint}: the policy's validator refused the certificate ({exc!r})",
                    endpoint=endpoint,
                ) from exc
            if accepted is not True:
                raise CertificateVerificationError(
                    f"{endpoint}: the policy's validator refused the certificate",
                    endpoint=endpoint,
                )
        return info, der


@dataclasses.dataclass(slots=True, kw_only=True)
class ConnectAttempt:
    """What the SSL object of one new connection needs to know about it."""

    endpoint: str
    session: ssl.SSLSession | None = None
    session_hostname: str | None = None
    """The server name ``session`` was verified for: it is offered to that name only (a
    resumed handshake checks no host name)."""
    session_required: bool = False
    """Offer ``session`` even when the policy's ``resume_sessions`` is off (an FTP data channel
    must resume its control connection's session; it is not the cross-connection cache)."""
    on_established: Callable[[ssl.SSLObject, TlsInfo, bytes | None], None] | None = None


CURRENT_ATTEMPT: contextvars.ContextVar[ConnectAttempt | None] = contextvars.ContextVar(
    "asyncsp_connect_attempt", default=None
)


@contextlib.contextmanager
def connect_attempt(attempt: ConnectAttempt) -> Iterator[ConnectAttempt]:
    """Make *attempt* the one that connections opened inside this ``with`` block belong to."""
    token = CURRENT_ATTEMPT.set(attempt)
    try:
        yield attempt
    finally:
        CURRENT_ATTEMPT.reset(token)


class HandshakeRefused(ssl.SSLError):
    """Carries our verdict through transports that only expect `ssl.SSLError` from a handshake.

    asyncio treats an `OSError` from the handshake quietly (no "fatal error" log) and hands it
    to whoever awaits the connection; the error boundary unwraps ``error``.
    """

    def __init__(self, error: TlsError) -> None:
        super().__init__(str(error))
        self.error = error


def _standard_class(name: str) -> Any:
    """The standard library's own ``ssl`` class, even when another library (truststore's
    ``inject_into_ssl``) has put a wrapper in its place: asyncsp's checks live in subclasses
    of the real ones, and a wrapper that delegates to an inner context would bypass them."""
    for cls in getattr(ssl, name).__mro__:
        if cls.__module__ == "ssl" and cls.__name__ == name:
            return cls
    raise ImportError(f"ssl.{name} is not the standard library's")  # pragma: no cover


if TYPE_CHECKING:
    from ssl import SSLContext as _SSLContext
    from ssl import SSLObject as _SSLObject
    from ssl import SSLSocket as _SSLSocket
else:
    _SSLContext = _standard_class("SSLContext")
    _SSLObject = _standard_class("SSLObject")
    _SSLSocket = _standard_class("SSLSocket")


class _VerifyingSSLObject(_SSLObject):
    """An SSL object that refuses a connection the policy does not allow, in the handshake."""

    asyncsp_attempt: ConnectAttempt | None = None
    asyncsp_check: _HandshakeCheck
    asyncsp_info: TlsInfo | None = None
    asyncsp_der: bytes | None = None

    def do_handshake(self) -> None:
        super().do_handshake()  # raises SSLWantReadError until the handshake is complete
        self._check()

    def write(self, data: Any) -> int:
        # A caller that writes before the handshake would have OpenSSL run it implicitly,
        # past the check; asyncio never does, so this is one attribute test per write.
        if self.asyncsp_info is None:
            self.do_handshake()
        return super().write(data)

    def _check(self) -> None:
        attempt = self.asyncsp_attempt
        endpoint = attempt.endpoint if attempt else f"tls://{self.server_hostname}"
        try:
            info, der = self.asyncsp_check.verify(self, endpoint)
        except TlsError as exc:
            raise HandshakeRefused(exc) from exc
        self.asyncsp_info, self.asyncsp_der = info, der
        self.__class__ = _VerifiedSSLObject  # its writes need no guard from now on
        if attempt is not None and attempt.on_established is not None:
            attempt.on_established(self, info, der)


class _VerifiedSSLObject(_VerifyingSSLObject):
    """A `_VerifyingSSLObject` whose handshake passed the check: its writes go straight to the
    standard library's (one Python frame less on every write of the connection)."""

    write = _SSLObject.write


class _VerifyingSSLSocket(_SSLSocket):
    """The same check for a blocking library (``http.client``, ``smtplib``, requests) that was
    handed the context: it wraps sockets with ``wrap_socket``, not ``wrap_bio``.

    A refused handshake closes the socket and raises `HandshakeRefused` (an `ssl.SSLError`)
    from ``wrap_socket``/``connect``. A socket wrapped with ``do_handshake_on_connect=False``
    would otherwise let OpenSSL run the handshake implicitly inside the first write, past the
    check, so every read and write finishes (and checks) the handshake first.
    """

    asyncsp_info: TlsInfo | None = None
    asyncsp_der: bytes | None = None

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        context = self.context
        assert isinstance(context, PolicyContext)
        try:
            info, der = context.check.verify(self, f"tls://{self.server_hostname}")
        except TlsError as exc:
            self.close()  # nothing may be sent on it, whatever the caller does next
            raise HandshakeRefused(exc) from exc
        self.asyncsp_info, self.asyncsp_der = info, der

    def _checked(self) -> None:
        if self.asyncsp_info is None and self._connected:  # type: ignore[attr-defined]
            self.do_handshake()

    def send(self, data: Any, flags: int = 0) -> int:
        self._checked()
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._checked()
        super().sendall(data, flags)

    def write(self, data: Any) -> int:
        self._checked()
        return super().write(data)

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        self._checked()
        return super().recv(buflen, flags)

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        self._checked()
        return super().recv_into(buffer, nbytes, flags)

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        self._checked()
        return super().read(len, buffer)


class PolicyContext(_SSLContext):
    """The context of one policy: offers the attempt's session and verifies every handshake."""

    policy: TlsPolicy
    check: _HandshakeCheck

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        attempt = CURRENT_ATTEMPT.get()
        if (
            session is None
            and attempt is not None
            and (self.policy.resume_sessions or attempt.session_required)
            and attempt.session_hostname == server_hostname
        ):
            session = attempt.session
        obj = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        assert isinstance(obj, _VerifyingSSLObject)
        obj.asyncsp_attempt = attempt
        obj.asyncsp_check = self.check
        return obj


def checked_context(policy: TlsPolicy) -> PolicyContext:
    """A client context for *policy* whose every SSL object and socket runs the handshake
    check; the factory (``_contexts.py``) hardens it and loads its trust."""
    ctx = PolicyContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.policy = policy
    ctx.check = _HandshakeCheck(policy)
    ctx.sslobject_class = _VerifyingSSLObject
    ctx.sslsocket_class = _VerifyingSSLSocket
    return ctx


def established_info(ssl_object: Any) -> TlsInfo | None:
    """The `TlsInfo` recorded by the handshake check of *ssl_object*, if it ran."""
    info = getattr(ssl_object, "asyncsp_info", None)
    return info if isinstance(info, TlsInfo) else None


def received_close_notify(ssl_object: ssl.SSLObject) -> bool:
    """Whether the peer's close_notify was read: ask once asyncio has reported the EOF.

    asyncio reports the same EOF for close_notify and for a bare TCP FIN (a truncation); by
    then it has drained every record, so a FIN leaves nothing to read (``SSLWantReadError``)
    or a partial record, and only close_notify gives OpenSSL's zero return.
    """
    try:
        return ssl_object.read(1) == b""
    except ssl.SSLZeroReturnError:  # close_notify after ours went out
        return True
    except (ssl.SSLError, ValueError):
        return False
