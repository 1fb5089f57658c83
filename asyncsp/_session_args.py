"""The arguments SMTP and FTP sessions share: port, security mode, step timeout.

Both protocols take ``security="starttls" | "tls" | "none"`` with implicit TLS the default on
one well-known port, and a ``timeout`` for every step; checking them here keeps the two
protocols' messages and rules the same.
"""

from __future__ import annotations

import dataclasses

from ._endpoint import normalise_host

__all__ = ["SECURITY_MODES", "SessionTarget", "session_target"]

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


def session_target(
    host: str,
    port: object,
    *,
    security: str | None,
    timeout: object,
    schemes: tuple[str, str],
    implicit_tls_port: int,
) -> SessionTarget:
    """Check a session's arguments and name its service point.

    *schemes* is the protocol's (plain, implicit TLS) pair, e.g. ``("smtp", "smtps")``; the
    implicit one is used for ``security="tls"``, which is the default on *implicit_tls_port*.
    `ValueError` names the argument that is wrong.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port must be an int from 1 to 65535, not {port!r}")
    if security is None:
        security = "tls" if port == implicit_tls_port else "starttls"
    if security not in SECURITY_MODES:
        raise ValueError(f"security must be one of {', '.join(SECURITY_MODES)}, not {security!r}")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise ValueError(f"timeout must be a number of seconds > 0 or None, not {timeout!r}")
    host = normalise_host(host)
    netloc = f"[{host}]" if ":" in host else host
    scheme = schemes[1] if security == "tls" else schemes[0]
    return SessionTarget(
        address=f"{scheme}://{netloc}:{port}",
        security=security,
        timeout=None if timeout is None else float(timeout),
    )
