"""`asyncsp.defaults`: the process-wide settings, .NET's ``ServicePointManager`` statics."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar, overload

from ._errors import InvalidSecurityProtocolError, PolicyError
from ._policy import TlsPolicy
from ._protocols import SecurityProtocol
from ._resolve import HAPPY_EYEBALLS_DELAY

__all__ = [
    "FOLLOW",
    "Defaults",
    "ProtocolsOf",
    "Setting",
    "check_interleave",
    "check_limit",
    "check_optional_seconds",
    "check_policy",
    "check_seconds",
    "defaults",
    "policy_from_environment",
]

T = TypeVar("T")

ENV_SECURITY_PROTOCOL = "ASYNCSP_SECURITY_PROTOCOL"
ENV_STRONG_CRYPTO = "ASYNCSP_STRONG_CRYPTO"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def check_limit(name: str, value: object) -> int:
    """Validate a connection limit: an int of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, not {value!r}")
    return value


def check_seconds(name: str, value: object) -> float:
    """Validate a duration in seconds: a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e9:
        raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
    return float(value)


def check_optional_seconds(name: str, value: object) -> float | None:
    """Like `check_seconds`, with ``None`` meaning unlimited."""
    return None if value is None else check_seconds(name, value)


def check_interleave(name: str, value: object) -> int | None:
    """Validate an address-family count: an int of at least 1, ``None`` for the default."""
    return None if value is None else check_limit(name, value)


def policy_from_environment(env: Mapping[str, str]) -> TlsPolicy:
    """The policy ``ASYNCSP_SECURITY_PROTOCOL`` and ``ASYNCSP_STRONG_CRYPTO`` ask for."""
    protocols = SecurityProtocol.SYSTEM_DEFAULT
    strong_crypto = True
    raw = env.get(ENV_SECURITY_PROTOCOL)
    if raw is not None:
        try:
            protocols = SecurityProtocol.parse(raw)
        except InvalidSecurityProtocolError as exc:
            raise InvalidSecurityProtocolError(f"{ENV_SECURITY_PROTOCOL}={raw!r}: {exc}") from exc
    raw = env.get(ENV_STRONG_CRYPTO)
    if raw is not None:
        flag = raw.strip().lower()
        if flag not in _TRUE | _FALSE:
            raise PolicyError(f"{ENV_STRONG_CRYPTO}={raw!r}: use 1 (the default) or 0 (opt out)")
        strong_crypto = flag in _TRUE
    try:
        return TlsPolicy(protocols=protocols, strong_crypto=strong_crypto)
    except PolicyError as exc:
        raise PolicyError(
            f"{ENV_SECURITY_PROTOCOL}={env.get(ENV_SECURITY_PROTOCOL)!r} with "
            f"{ENV_STRONG_CRYPTO}={env.get(ENV_STRONG_CRYPTO)!r}: {exc}"
        ) from exc


class _Follow:
    """What a setting whose values include ``None`` stores while it follows its *inherit*."""

    def __repr__(self) -> str:
        return "FOLLOW"


FOLLOW: Any = _Follow()
"""The "not set here" of a setting made with ``none_is_a_value=True`` (also a parameter's
default: a manager not given ``happy_eyeballs_delay`` follows the process defaults)."""


class Setting(Generic[T]):
    """One mutable setting, said once: checked on assignment, inherited when unset.

    ``check(name, value)`` returns the value to keep or raises (``ValueError``,
    ``TypeError``) before anything is stored, so a failed assignment leaves the previous
    value in force. With *inherit*, the stored value ``None`` means "follow
    ``inherit(owner)`` live", and assigning ``None`` follows again. *changed* runs after each
    successful assignment (a service point reschedules its reaper, for one). The value is kept
    in the owner's ``_<name>`` attribute, which the owner may set directly when it is made.

    With ``none_is_a_value=True``, ``None`` is a value like any other (``happy_eyeballs_delay =
    None``: one address at a time) and `FOLLOW` is stored instead while the setting follows;
    ``del owner.setting`` follows again.

    `Setting.generation` counts every change of any setting, anywhere (a policy of the
    defaults included): a hot path that keeps what it read may reuse it while the count has
    not moved, and read again when it has (settings are inherited live, so a change of the
    defaults or a manager can change what a service point reads).
    """

    generation = 0
    """Bumped by each successful assignment or deletion of any setting (see the class)."""

    def __init__(
        self,
        check: Callable[[str, object], T],
        *,
        inherit: Callable[[Any], T] | None = None,
        changed: Callable[[Any], None] | None = None,
        none_is_a_value: bool = False,
        doc: str | None = None,
    ) -> None:
        self._check = check
        self._inherit = inherit
        self._unset: object = FOLLOW if none_is_a_value else None
        self._changed = changed
        self._name = self._store = ""
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name
        self._store = f"_{name}"

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> Setting[T]: ...
    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> T: ...
    def __get__(self, obj: object | None, objtype: type | None = None) -> T | Setting[T]:
        if obj is None:
            return self
        value: T | None = getattr(obj, self._store)
        if value is self._unset and self._inherit is not None:
            return self._inherit(obj)
        return value  # type: ignore[return-value]  # None only where the check allows it

    def __set__(self, obj: object, value: T | None) -> None:
        if value is not self._unset or self._inherit is None:
            value = self._check(self._name, value)
        setattr(obj, self._store, value)
        Setting.generation += 1
        if self._changed is not None:
            self._changed(obj)

    def __delete__(self, obj: object) -> None:
        """Follow *inherit* again (the same as assigning ``None`` where ``None`` is not a
        value)."""
        if self._inherit is None:
            raise AttributeError(f"{self._name} has nothing to follow")
        setattr(obj, self._store, self._unset)
        Setting.generation += 1
        if self._changed is not None:
            self._changed(obj)


def check_policy(name: str, value: object) -> TlsPolicy:
    """Validate a policy: a `TlsPolicy`."""
    if not isinstance(value, TlsPolicy):
        raise TypeError(f"{name} must be a TlsPolicy, not {type(value).__name__}")
    return value


class ProtocolsOf:
    """``security_protocol``: the owner's ``policy.protocols``; setting it keeps the rest of
    the policy. *convert* turns what may be assigned into a `SecurityProtocol` or raises."""

    def __init__(self, convert: Callable[[Any], SecurityProtocol]) -> None:
        self._convert = convert
        self.__doc__ = "The versions new connections may use (the policy's `protocols`)."

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> ProtocolsOf: ...
    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> SecurityProtocol: ...
    def __get__(
        self, obj: object | None, objtype: type | None = None
    ) -> SecurityProtocol | ProtocolsOf:
        if obj is None:
            return self
        protocols: SecurityProtocol = obj.policy.protocols  # type: ignore[attr-defined]
        return protocols

    def __set__(self, obj: object, value: SecurityProtocol | int | str) -> None:
        policy = obj.policy  # type: ignore[attr-defined]
        obj.policy = dataclasses.replace(policy, protocols=self._convert(value))  # type: ignore[attr-defined]


class Defaults:
    """Process-wide settings that managers made without their own values follow, live.

    Like .NET's ``ServicePointManager``: a change reaches new connections only. Every setter
    validates first, so a failed assignment leaves the previous value in force.
    """

    default_connection_limit = Setting(
        check_limit,
        doc="Sockets open at once to one endpoint, for service points without their own limit.",
    )
    max_idle_time = Setting(
        check_seconds, doc="Seconds a pooled connection may stay idle before it is closed."
    )
    connection_lease_timeout = Setting(
        check_optional_seconds,
        doc="Seconds after which a pooled connection is not reused (``None``: unlimited).",
    )
    dns_refresh_timeout = Setting(
        check_seconds, doc="Seconds a service point reuses its resolved addresses."
    )
    happy_eyeballs_delay = Setting(
        check_optional_seconds,
        doc="Seconds before the next resolved address is tried while one is still connecting "
        "(RFC 8305's Connection Attempt Delay; ``None``: one address at a time).",
    )
    interleave = Setting(
        check_interleave,
        doc="Addresses of the first family tried before the other's (RFC 8305's First Address "
        "Family Count; ``None``: 1 when there is a delay).",
    )
    security_protocol = ProtocolsOf(SecurityProtocol.validate)

    def __init__(
        self, policy: TlsPolicy | None = None, *, environ: Mapping[str, str] | None = None
    ) -> None:
        """Defaults with *policy*, or else the policy *environ* names, read on first use."""
        self._policy = policy
        self._environ = environ
        self._default_connection_limit = 10
        self._max_idle_time = 15.0
        self._connection_lease_timeout: float | None = None
        self._dns_refresh_timeout = 120.0
        self._happy_eyeballs_delay: float | None = HAPPY_EYEBALLS_DELAY
        self._interleave: int | None = None
        Setting.generation += 1  # it may replace the defaults a manager follows

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Defaults:
        """Defaults whose policy is read now from the ``ASYNCSP_*`` variables of *environ*."""
        return cls(policy_from_environment(os.environ if environ is None else environ))

    @property
    def policy(self) -> TlsPolicy:
        """The policy of every manager made without its own.

        Read from the environment on first use: a bad ``ASYNCSP_*`` value raises here (and
        again on every use until it is fixed or a policy is set), naming the variable.
        """
        if self._policy is None:
            self._policy = policy_from_environment(
                os.environ if self._environ is None else self._environ
            )
        return self._policy

    @policy.setter
    def policy(self, value: TlsPolicy) -> None:
        self._policy = check_policy("policy", value)
        Setting.generation += 1

    def __repr__(self) -> str:
        return (
            f"Defaults(policy={self._policy or 'from the environment'!r}, default_connection_limit="
            f"{self._default_connection_limit}, max_idle_time={self._max_idle_time}, "
            f"connection_lease_timeout={self._connection_lease_timeout}, "
            f"dns_refresh_timeout={self._dns_refresh_timeout}, "
            f"happy_eyeballs_delay={self._happy_eyeballs_delay}, interleave={self._interleave})"
        )


defaults = Defaults(environ=os.environ)
