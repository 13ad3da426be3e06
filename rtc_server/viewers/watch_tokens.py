"""Watch tokens: the secret a session's owner hands to viewers. Pure: no I/O.

A token is 32 random bytes (URL-safe base64); only its SHA-256 is kept, compared in constant time.
It is separate from the resume token: a viewer can watch, never take the session over.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["WATCH_TOKEN_BYTES", "WatchToken", "hash_watch_token", "new_watch_token"]

WATCH_TOKEN_BYTES = 32  # 256 bits of randomness


def new_watch_token() -> str:
    """A fresh watch token."""
    return secrets.token_urlsafe(WATCH_TOKEN_BYTES)


def hash_watch_token(token: str) -> str:
    """What is kept of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class WatchToken:
    """One session's watch token: the plain text only until it has been sent, then only its hash."""

    def __init__(self, token: str | None = None) -> None:
        plain = token if token is not None else new_watch_token()
        self._plain: str | None = plain
        self._hash = hash_watch_token(plain)

    def take(self) -> str | None:
        """The plain token, once (for ``session_info``); None afterwards."""
        plain, self._plain = self._plain, None
        return plain

    def matches(self, offered: str | None) -> bool:
        """Whether ``offered`` is this token (constant time; None never matches)."""
        if not offered:
            return False
        return hmac.compare_digest(hash_watch_token(offered).encode("ascii"), self._hash.encode("ascii"))
