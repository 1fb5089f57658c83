"""Pool keys for sessions that logged in: a keyed hash of the secret, never the secret.

SMTP and FTP pool sessions per credentials. A key holding the password (or its plain hash,
which a dictionary attack reverses for weak passwords) would keep it readable in every pool
structure, repr and heap dump; an HMAC under a per-process random key shows nothing and
still matches equal secrets within the process.
"""

from __future__ import annotations

import hashlib
import hmac
import os

__all__ = ["credential_digest"]

_KEY_SALT = os.urandom(16)
"""The per-process HMAC key: digests never compare across processes, nor reveal anything."""


def credential_digest(secret: str | None) -> bytes | None:
    """A keyed hash of *secret* for pool keys: equal secrets match, the secret never shows."""
    if secret is None:
        return None
    # surrogatepass encodes every str, lone surrogates included, one to one.
    return hmac.new(_KEY_SALT, secret.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
