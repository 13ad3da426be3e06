"""The LLM provider contract: request/response value objects, the protocol, the error tree.

Pure data and a Protocol; no I/O. Errors::

    LLMProviderError          a provider failed; ``retryable`` says whether another may succeed
    ├── LLMTimeoutError       the call ran past its deadline (always retryable)
    ├── LLMConfigError        the provider is misconfigured: no API key, no model (never retryable)
    └── AllProvidersFailedError  every provider of an enhancer failed with a retryable error
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "AllProvidersFailedError",
    "LLMConfigError",
    "LLMMessage",
    "LLMProvider",
    "LLMProviderError",
    "LLMRequest",
    "LLMResponse",
    "LLMTimeoutError",
    "Role",
]

Role = Literal["system", "user", "assistant"]


class LLMProviderError(RuntimeError):
    """A provider failed a request; ``retryable`` tells the enhancer whether to try the next one.

    Settable per instance so one type covers transport failures (5xx, 429: retryable) and client
    errors (401, 400: not) without a subclass per status family.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        provider: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.provider = provider
        self.status = status


class LLMTimeoutError(LLMProviderError):
    """A provider call ran past its deadline; always retryable."""

    def __init__(self, message: str, *, provider: str | None = None) -> None:
        super().__init__(message, retryable=True, provider=provider)


class LLMConfigError(LLMProviderError):
    """A provider cannot be called as configured (missing API key or model); never retryable."""

    def __init__(self, message: str, *, provider: str | None = None) -> None:
        super().__init__(message, retryable=False, provider=provider)


class AllProvidersFailedError(LLMProviderError):
    """Every provider failed with a retryable error; ``errors`` holds each failure in order."""

    def __init__(self, errors: Sequence[LLMProviderError]) -> None:
        summary = "; ".join(f"{err.provider or '?'}: {err}" for err in errors)
        super().__init__(f"all {len(errors)} LLM providers failed: {summary}", retryable=True)
        self.errors = tuple(errors)


@dataclass(frozen=True)
class LLMMessage:
    """One chat message."""

    role: Role
    content: str


@dataclass(frozen=True, kw_only=True)
class LLMRequest:
    """A chat completion request. ``model`` may be left to the provider's own configured model."""

    messages: tuple[LLMMessage, ...]
    model: str | None = None
    temperature: float = 0.7
    max_tokens: int | None = 256
    timeout_s: float | None = None  # per-call deadline; None leaves the HTTP client's default


@dataclass(frozen=True, kw_only=True)
class LLMResponse:
    """A completion: the reply text and where it came from."""

    content: str
    provider: str
    model: str
    latency_ms: float
    fallback_used: bool = False  # set by the enhancer when a provider other than the first answered


@runtime_checkable
class LLMProvider(Protocol):
    """What every LLM adapter implements.

    Async because every built-in provider talks HTTP; a synchronous backend wraps its call in
    ``asyncio.to_thread``. Failures raise :class:`LLMProviderError` (or a subclass), never anything
    from the layer below.
    """

    @property
    def name(self) -> str: ...

    async def complete(self, request: LLMRequest) -> LLMResponse: ...
