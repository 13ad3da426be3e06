"""Who a request comes from: bearer tokens from the environment, or signed JWTs (``auth`` config).

Secrets are read once, when the server starts (a missing one is a configuration error then, not a
401 later). Pure apart from that: no I/O per request.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from rtc_server.config import AuthConfig

__all__ = [
    "WS_PROTOCOL",
    "AuthSetupError",
    "Authenticator",
    "Principal",
    "Unauthorized",
    "bearer_token",
    "is_loopback_host",
    "websocket_token",
]

WS_PROTOCOL = "rtcvs"  # the subprotocol the server answers with
WS_TOKEN_PREFIX = "bearer."  # a browser cannot set headers on a WebSocket: the token rides as a subprotocol


class Unauthorized(Exception):
    """A request without valid credentials; the message says what was wrong, never the token."""


class AuthSetupError(Exception):
    """The ``auth`` section cannot be used: a secret or key is missing (a configuration error)."""


@dataclass(frozen=True)
class Principal:
    """An authenticated client: its subject (the per-client limits key) and its own session cap, if any."""

    subject: str
    max_sessions: int | None = None


def is_loopback_host(host: str) -> bool:
    """True when ``host`` (a bind address) reaches this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def websocket_token(query_token: str | None, protocols: list[str]) -> str | None:
    """The token of a WebSocket upgrade: a ``bearer.<token>`` subprotocol, else ``?token=``."""
    for protocol in protocols:
        if protocol.startswith(WS_TOKEN_PREFIX) and len(protocol) > len(WS_TOKEN_PREFIX):
            return protocol[len(WS_TOKEN_PREFIX) :]
    return query_token or None


class Authenticator:
    """Checks credentials against the ``auth`` config; ``required`` is False in mode none (or without auth)."""

    def __init__(self, config: AuthConfig | None, *, environ: Mapping[str, str] = os.environ) -> None:
        self._config = config
        self._mode = config.mode if config is not None else "none"
        self._tokens: dict[str, bytes] = {}
        self._key: Any = None
        self._algorithm = "HS256"
        if config is None or config.mode == "none":
            return
        if config.mode == "token":
            self._tokens = {name: _secret(environ, name, "token").encode() for name in config.token_envs}
        elif config.secret_env is not None:
            self._key = _secret(environ, config.secret_env, "JWT secret")
        else:
            assert config.public_key_path is not None
            self._key = _public_key(config.public_key_path)
            self._algorithm = "RS256"

    @property
    def required(self) -> bool:
        return self._mode != "none"

    @property
    def loopback_only(self) -> bool:
        """No auth section at all: the server may serve this machine only (``auth: {mode: none}`` is a choice)."""
        return self._config is None

    def authenticate(self, token: str | None) -> Principal | None:
        """The principal of ``token``; None when no auth is required; Unauthorized when it is and fails."""
        if not self.required:
            return None
        if token is None:
            raise Unauthorized("an access token is required (Authorization: Bearer <token>)")
        if self._mode == "token":
            return self._static(token)
        return self._jwt(token)

    def _static(self, token: str) -> Principal:
        offered = token.encode()
        for name, accepted in self._tokens.items():
            if hmac.compare_digest(offered, accepted):  # constant time: no timing oracle on the token
                return Principal(subject=f"token:{name}")
        raise Unauthorized("the access token is not valid")

    def _jwt(self, token: str) -> Principal:
        config = self._config
        assert config is not None
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway_seconds,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("the access token has expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"the access token is not valid: {exc}") from exc
        return Principal(subject=f"jwt:{claims['sub']}", max_sessions=_max_sessions(claims))


def _max_sessions(claims: Mapping[str, Any]) -> int | None:
    value = claims.get("max_sessions")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Unauthorized("the access token's max_sessions claim must be a non-negative int")
    return value


def _secret(environ: Mapping[str, str], name: str, what: str) -> str:
    value = environ.get(name, "")
    if not value:
        raise AuthSetupError(f"auth: the {what} environment variable {name} is not set (or empty)")
    return value


def _public_key(path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AuthSetupError(f"auth.public_key_path {path}: {exc.strerror or exc}") from exc
    if b"PUBLIC KEY" not in data:
        raise AuthSetupError(f"auth.public_key_path {path}: not a PEM public key")
    return data
