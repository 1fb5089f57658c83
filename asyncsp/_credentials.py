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


def credential_digest(secret: str | None) -> bytes:
    """A keyed hash of *secret* for pool keys: equal secrets match, the secret never shows.

    ``None`` is the empty secret: a login without a password sends exactly what a login
    with ``""`` sends, so both must file and find sessions under one key.
    """
    if not secret:
        return _EMPTY  # every session opened without credentials asks for this one
    # surrogatepass encodes every str, lone surrogates included, one to one.
    data = secret.encode("utf-8", "surrogatepass")
    return hmac.new(_KEY_SALT, data, hashlib.sha256).digest()


_EMPTY = hmac.new(_KEY_SALT, b"", hashlib.sha256).digest()
