"""Provider presets (Cerebras, Groq, any OpenAI-compatible server) and a factory from config specs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, ClassVar, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from prompt.providers.openai_compatible import OpenAICompatibleProvider

__all__ = [
    "CEREBRAS_API_KEY_ENV",
    "CEREBRAS_BASE_URL",
    "GROQ_API_KEY_ENV",
    "GROQ_BASE_URL",
    "CerebrasProvider",
    "GroqProvider",
    "ProviderKind",
    "ProviderSpec",
    "build_provider",
    "build_providers",
    "create_http_client",
    "open_providers",
]

CEREBRAS_BASE_URL = "https://api.cerebras.ai/v1"
CEREBRAS_API_KEY_ENV = "CEREBRAS_API_KEY"
GROQ_BASE_URL = "https://api.groq.com/openai/v1"
GROQ_API_KEY_ENV = "GROQ_API_KEY"

DEFAULT_HTTP_TIMEOUT_S = 30.0  # seconds; the enhancer passes a tighter per-call deadline
DEFAULT_CONNECT_TIMEOUT_S = 5.0  # seconds
DEFAULT_MAX_CONNECTIONS = 32
DEFAULT_KEEPALIVE_CONNECTIONS = 8

ProviderKind = Literal["cerebras", "groq", "openai_compatible"]


class _HostedPreset(OpenAICompatibleProvider):
    """A hosted OpenAI-compatible service: fixed base URL and key variable, key required."""

    BASE_URL: ClassVar[str]
    API_KEY_ENV: ClassVar[str]
    NAME: ClassVar[str]

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        model: str | None = None,
        api_key: str | None = None,
        api_key_env: str | None = None,
        base_url: str | None = None,
        name: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            client=client,
            base_url=base_url or self.BASE_URL,
            name=name or self.NAME,
            model=model,
            api_key=api_key,
            api_key_env=api_key_env or self.API_KEY_ENV,
            require_api_key=True,
            environ=environ,
        )


class CerebrasProvider(_HostedPreset):
    """Cerebras inference; the key comes from ``CEREBRAS_API_KEY`` unless ``api_key`` is given."""

    BASE_URL = CEREBRAS_BASE_URL
    API_KEY_ENV = CEREBRAS_API_KEY_ENV
    NAME = "cerebras"


class GroqProvider(_HostedPreset):
    """Groq inference; same wire format as Cerebras, key from ``GROQ_API_KEY``."""

    BASE_URL = GROQ_BASE_URL
    API_KEY_ENV = GROQ_API_KEY_ENV
    NAME = "groq"


_HOSTED: dict[str, type[_HostedPreset]] = {"cerebras": CerebrasProvider, "groq": GroqProvider}


class ProviderSpec(BaseModel):
    """One provider as listed in config: ``kind`` plus optional overrides.

    ``openai_compatible`` needs ``base_url``; its key is optional (``api_key_env``, sent only when
    set). Keys are only ever named by environment variable, never written in config.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ProviderKind
    name: str | None = Field(default=None, min_length=1)
    base_url: str | None = Field(default=None, min_length=1)
    api_key_env: str | None = Field(default=None, min_length=1)
    model: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _base_url_for_generic(self) -> ProviderSpec:
        if self.kind == "openai_compatible" and not self.base_url:
            raise ValueError("provider kind 'openai_compatible' needs base_url")
        return self


def build_provider(
    spec: ProviderSpec | Mapping[str, Any],
    client: httpx.AsyncClient,
    *,
    environ: Mapping[str, str] | None = None,
) -> OpenAICompatibleProvider:
    """The provider described by ``spec`` (a :class:`ProviderSpec` or a plain dict) on ``client``."""
    spec = spec if isinstance(spec, ProviderSpec) else ProviderSpec.model_validate(spec)
    if spec.kind in _HOSTED:
        # Unset fields fall back to the preset's own base URL, key variable and name.
        return _HOSTED[spec.kind](
            client=client,
            model=spec.model,
            api_key_env=spec.api_key_env,
            base_url=spec.base_url,
            name=spec.name,
            environ=environ,
        )
    assert spec.base_url is not None  # guaranteed by ProviderSpec's validator
    return OpenAICompatibleProvider(
        client=client,
        base_url=spec.base_url,
        name=spec.name or "openai_compatible",
        model=spec.model,
        api_key_env=spec.api_key_env,
        environ=environ,
    )


def build_providers(
    specs: Iterable[ProviderSpec | Mapping[str, Any]],
    client: httpx.AsyncClient,
    *,
    environ: Mapping[str, str] | None = None,
) -> list[OpenAICompatibleProvider]:
    """Providers for ``specs``, in order (the enhancer's priority order); names must be unique."""
    providers = [build_provider(spec, client, environ=environ) for spec in specs]
    names = [p.name for p in providers]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate provider names: {', '.join(duplicates)} (set 'name' to tell them apart)")
    return providers


def create_http_client(
    *,
    timeout_s: float = DEFAULT_HTTP_TIMEOUT_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    trust_env: bool = True,
) -> httpx.AsyncClient:
    """The shared client for all providers: pooled keep-alive connections; the caller closes it.

    ``trust_env`` keeps httpx's reading of proxy and CA settings from the environment; tests turn it off.
    """
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=DEFAULT_KEEPALIVE_CONNECTIONS),
        trust_env=trust_env,
    )


@asynccontextmanager
async def open_providers(
    specs: Iterable[ProviderSpec | Mapping[str, Any]],
    *,
    timeout_s: float = DEFAULT_HTTP_TIMEOUT_S,
    environ: Mapping[str, str] | None = None,
    trust_env: bool = True,
) -> AsyncIterator[list[OpenAICompatibleProvider]]:
    """Open one shared HTTP client, yield the providers built on it, close the client on exit.

    Fits an aiohttp ``cleanup_ctx`` generator: ``async with open_providers(cfg) as providers: yield``.
    """
    client = create_http_client(timeout_s=timeout_s, trust_env=trust_env)
    try:
        yield build_providers(specs, client, environ=environ)
    finally:
        await client.aclose()
