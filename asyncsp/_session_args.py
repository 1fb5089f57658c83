"""The arguments SMTP and FTP sessions share: port, security mode, step timeout.

Both protocols take ``security="starttls" | "tls" | "none"`` with implicit TLS the default on
one well-known port, and a ``timeout`` for every step; checking them here keeps the two
protocols' messages and rules the same.
"""

from __future__ import annotations

import dataclasses

from ._endpoint import normalise_host

__all__ = ["SECURITY_MODES", "SessionKind", "SessionTarget"]

SECURITY_MODES = ("starttls", "tls", "none")
"""``starttls``: upgrade in place (required); ``tls``: implicit TLS; ``none``: plain text."""


@dataclasses.dataclass(frozen=True, slots=True)
class SessionTarget:
    """Where a session goes and how: checked arguments of ``mgr.smtp`` or ``mgr.ftp``."""

    address: str
    """The service point, ``plain://host:port`` or ``tls://host:port`` in the protocol's schemes."""
    security: str
    """One of `SECURITY_MODES`; the port's default when none was given."""
    timeout: float | None
    """Seconds each step may take (``None``: the protocol's own limits)."""


@dataclasses.dataclass(frozen=True, slots=True)
class SessionKind:
    """A protocol's sessions: its (plain, implicit TLS) schemes and its implicit-TLS port."""

    plain_scheme: str
    tls_scheme: str
    implicit_tls_port: int
    """The port where ``security="tls"`` is the default (``"starttls"`` on every other)."""

    def target(
        self, host: str, port: object, *, security: str | None, timeout: object
    ) -> SessionTarget:
        """Check a session's arguments and name its service point.

        `ValueError` names the argument that is wrong.
        """
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port must be an int from 1 to 65535, not {port!r}")
        if security is None:
            security = "tls" if port == self.implicit_tls_port else "starttls"
        if security not in SECURITY_MODES:
            raise ValueError(
                f"security must be one of {', '.join(SECURITY_MODES)}, not {security!r}"
            )
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise ValueError(f"timeout must be a number of seconds > 0 or None, not {timeout!r}")
        host = normalise_host(host)
        netloc = f"[{host}]" if ":" in host else host
        scheme = self.tls_scheme if security == "tls" else self.plain_scheme
        return SessionTarget(
            address=f"{scheme}://{netloc}:{port}",
            security=security,
            timeout=None if timeout is None else float(timeout),
        )
