"""Typed router configuration, loaded from YAML (the original system's ``RouterConfig``, on pydantic).

The file holds the keys below at its top level, or under a top-level ``router:`` key as in the
original system's example. Every model forbids unknown keys, so a typo is an error naming the key::

    router:
      host: 0.0.0.0
      port: 9000
      redis_url: redis://127.0.0.1:6379/0
      replicas:
        - {url: http://streamer-a:8080, role: primary}
        - {url: http://streamer-b:8080}            # role: secondary (the default)
      health_check_interval_seconds: 5

The original system's spellings are accepted too: ``primary: true`` on a replica, and a
``health_check: {path, interval_seconds, timeout_seconds, failure_threshold, recovery_threshold}``
block instead of the flat ``health_check_*`` / threshold keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rtc_server.config import ConfigError

__all__ = ["ConfigError", "ReplicaEndpoint", "RouterConfig", "load_router_config", "normalize_url"]

DEFAULT_PORT = 9000
WRAPPER_KEY = "router"  # optional top-level key holding the whole config
# The original system's nested health_check block -> our flat keys.
_HEALTH_CHECK_KEYS = {
    "path": "health_check_path",
    "interval_seconds": "health_check_interval_seconds",
    "timeout_seconds": "health_check_timeout_seconds",
    "failure_threshold": "failure_threshold",
    "recovery_threshold": "recovery_threshold",
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def normalize_url(url: str) -> str:
    """A replica's base URL in one spelling: lower-case scheme and host, no trailing slash."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}"


class ReplicaEndpoint(_Section):
    """One streaming server the router can place sessions on."""

    url: str = Field(description="HTTP base URL, e.g. http://streamer-a:8080; the WebSocket URL is derived from it.")
    role: Literal["primary", "secondary"] = Field(
        "secondary", description="primary: preferred while healthy (at most one); secondary: the fallbacks, in order."
    )
    name: str | None = Field(None, description="A label for /status and the metrics; the URL when unset.")

    @model_validator(mode="before")
    @classmethod
    def _accept_primary_flag(cls, data: Any) -> Any:
        # The original system wrote `primary: true`; keep its files working.
        if isinstance(data, dict) and "primary" in data:
            data = dict(data)
            flag = data.pop("primary")
            if not isinstance(flag, bool):
                raise ValueError("primary must be true or false")
            role = "primary" if flag else "secondary"
            if "role" in data and data["role"] != role:
                raise ValueError(f"primary: {str(flag).lower()} contradicts role: {data['role']}")
            data["role"] = role
        return data

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parts = urlsplit(url.strip())
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError(f"{url!r}: a replica URL has no query or fragment")
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
        except ValueError as exc:
            raise ValueError(f"{url!r}: {exc}") from exc
        return normalize_url(url)

    @property
    def primary(self) -> bool:
        """The original system's flag: this replica is preferred while healthy."""
        return self.role == "primary"

    @property
    def label(self) -> str:
        return self.name or self.url


class RouterConfig(_Section):
    """The whole router configuration; defaults are the original system's."""

    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    replicas: list[ReplicaEndpoint] = Field(min_length=1, description="Servers to route to; order breaks ties.")
    health_check_path: str = Field("/health", description="Probed on every replica; a 2xx answer is a success.")
    health_check_interval_seconds: float = Field(5.0, gt=0, description="Time between probe rounds.")
    health_check_timeout_seconds: float = Field(2.0, gt=0, description="A probe not answered within it failed.")
    failure_threshold: int = Field(3, ge=1, description="Failures in a row that make a healthy replica unhealthy.")
    recovery_threshold: int = Field(2, ge=1, description="Successes in a row that make an unhealthy replica healthy.")
    redis_url: str | None = Field(
        None,
        description="Redis holding the session -> replica map, shared by every router. Unset: a map in this "
        "process, so only one router may run.",
    )
    key_prefix: str = Field("rtcvs:", description="Prefix of the router's Redis keys (as store.key_prefix).")
    session_ttl_seconds: float = Field(
        86400.0, gt=0, description="Lifetime of a map entry, renewed whenever the session is looked up."
    )
    proxy_timeout_seconds: float = Field(
        60.0, gt=0, description="Longest wait for a replica's answer to a proxied request (offers included)."
    )
    heartbeat_seconds: float | None = Field(
        20.0, gt=0, description="Ping/pong keep-alive with WebSocket clients; null: off."
    )
    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0, description="Largest request body relayed (413 above).")
    max_message_bytes: int = Field(
        96 * 1024 * 1024,
        gt=0,
        description="Largest WebSocket frame relayed from a client; keep it at least twice the replicas' "
        "server.max_message_bytes, their own hard limit.",
    )
    admin_token: str | None = Field(
        None, description="When set, /status and /metrics need Authorization: Bearer <it>; unset: open."
    )
    web_client_dir: str | None = Field(None, description="Directory served at /; the packaged page when unset.")

    @model_validator(mode="before")
    @classmethod
    def _flatten_health_check(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "health_check" not in data:
            return data
        data = dict(data)
        block = data.pop("health_check")
        if not isinstance(block, dict):
            raise ValueError("health_check must be a mapping")  # noqa: TRY004 - pydantic reports ValueError only
        for key, value in block.items():
            flat = _HEALTH_CHECK_KEYS.get(key)
            if flat is None:
                raise ValueError(f"health_check.{key}: unknown key (known: {', '.join(_HEALTH_CHECK_KEYS)})")
            if flat in data:
                raise ValueError(f"health_check.{key} and {flat} are both set")
            data[flat] = value
        return data

    @field_validator("replicas")
    @classmethod
    def _check_replicas(cls, replicas: list[ReplicaEndpoint]) -> list[ReplicaEndpoint]:
        seen: set[str] = set()
        for endpoint in replicas:
            if endpoint.url in seen:
                raise ValueError(f"{endpoint.url} is listed twice")
            seen.add(endpoint.url)
        primaries = [endpoint.url for endpoint in replicas if endpoint.primary]
        if len(primaries) > 1:
            raise ValueError(f"at most one replica may be primary, got {len(primaries)}: {', '.join(primaries)}")
        return replicas

    @field_validator("health_check_path")
    @classmethod
    def _check_path(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError(f"{path!r} must start with /")
        return path

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, url: str | None) -> str | None:
        if url is not None and urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"{url!r} is not a redis://, rediss:// or unix:// URL")
        return url


def _format_errors(path: Path, exc: ValidationError, prefix: str) -> str:
    lines = [f"{path}: invalid router configuration"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        lines.append(f"  {prefix}{key or '<root>'}: {error['msg']}")
    return "\n".join(lines)


def load_router_config(path: str | Path) -> RouterConfig:
    """Read and validate a router YAML file; ConfigError names the file and the bad key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    prefix = ""
    if set(raw) == {WRAPPER_KEY}:
        raw, prefix = raw[WRAPPER_KEY], f"{WRAPPER_KEY}."
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: {WRAPPER_KEY} must be a mapping, got {type(raw).__name__}")
    try:
        return RouterConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(path, exc, prefix)) from exc
