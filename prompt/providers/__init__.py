"""LLM providers: the protocol and error tree, the OpenAI-compatible adapter, presets and a factory."""

from prompt.providers.base import (
    AllProvidersFailedError,
    LLMConfigError,
    LLMMessage,
    LLMProvider,
    LLMProviderError,
    LLMRequest,
    LLMResponse,
    LLMTimeoutError,
)
from prompt.providers.openai_compatible import OpenAICompatibleProvider, is_retryable_status
from prompt.providers.presets import (
    CerebrasProvider,
    GroqProvider,
    ProviderSpec,
    build_provider,
    build_providers,
    create_http_client,
    open_providers,
)

__all__ = [
    "AllProvidersFailedError",
    "CerebrasProvider",
    "GroqProvider",
    "LLMConfigError",
    "LLMMessage",
    "LLMProvider",
    "LLMProviderError",
    "LLMRequest",
    "LLMResponse",
    "LLMTimeoutError",
    "OpenAICompatibleProvider",
    "ProviderSpec",
    "build_provider",
    "build_providers",
    "create_http_client",
    "is_retryable_status",
    "open_providers",
]
