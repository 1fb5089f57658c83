"""`asyncsp.defaults`: the process-wide settings, .NET's ``ServicePointManager`` statics."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from ._errors import InvalidSecurityProtocolError, PolicyError
from ._policy import TlsPolicy
from ._protocols import SecurityProtocol

__all__ = [
    "Defaults",
    "check_limit",
    "check_optional_seconds",
    "check_seconds",
    "defaults",
    "policy_from_environment",
]

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


class Defaults:
    """Process-wide settings that managers made without their own values follow, live.

    Like .NET's ``ServicePointManager``: a change reaches new connections only. Every setter
    validates first, so a failed assignment leaves the previous value in force.
    """

    def __init__(
        self, policy: TlsPolicy | None = None, *, environ: Mapping[str, str] | None = None
    ) -> None:
        """Defaults with *policy*, or else the policy *environ* names, read on first use."""
        self._policy = policy
        self._environ = environ
        self._connection_limit = 10
        self._max_idle_time = 15.0
        self._lease_timeout: float | None = None
        self._dns_refresh_timeout = 120.0

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
        if not isinstance(value, TlsPolicy):
            raise TypeError(f"policy must be a TlsPolicy, not {type(value).__name__}")
        self._policy = value

    @property
    def security_protocol(self) -> SecurityProtocol:
        """The versions new connections may use (the policy's `protocols`)."""
        return self.policy.protocols

    @security_protocol.setter
    def security_protocol(self, value: SecurityProtocol | int) -> None:
        self._policy = dataclasses.replace(self.policy, protocols=SecurityProtocol.validate(value))

    @property
    def default_connection_limit(self) -> int:
        """Sockets open at once to one endpoint, for service points without their own limit."""
        return self._connection_limit

    @default_connection_limit.setter
    def default_connection_limit(self, value: int) -> None:
        self._connection_limit = check_limit("default_connection_limit", value)

    @property
    def max_idle_time(self) -> float:
        """Seconds a pooled connection may stay idle before it is closed."""
        return self._max_idle_time

    @max_idle_time.setter
    def max_idle_time(self, value: float) -> None:
        self._max_idle_time = check_seconds("max_idle_time", value)

    @property
    def connection_lease_timeout(self) -> float | None:
        """Seconds after which a pooled connection is not reused (``None``: unlimited)."""
        return self._lease_timeout

    @connection_lease_timeout.setter
    def connection_lease_timeout(self, value: float | None) -> None:
        self._lease_timeout = check_optional_seconds("connection_lease_timeout", value)

    @property
    def dns_refresh_timeout(self) -> float:
        """Seconds a service point reuses its resolved addresses."""
        return self._dns_refresh_timeout

    @dns_refresh_timeout.setter
    def dns_refresh_timeout(self, value: float) -> None:
        self._dns_refresh_timeout = check_seconds("dns_refresh_timeout", value)

    def __repr__(self) -> str:
        return (
            f"Defaults(policy={self._policy or 'from the environment'!r}, default_connection_limit="
            f"{self._connection_limit}, max_idle_time={self._max_idle_time}, "
            f"connection_lease_timeout={self._lease_timeout}, "
            f"dns_refresh_timeout={self._dns_refresh_timeout})"
        )


defaults = Defaults(environ=os.environ)
