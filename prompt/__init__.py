"""Prompt pipeline: LLM providers, the enhancer (enhance / auto_extend / rewrite) and the safety filter.

Knows nothing of transports or the server; the server uses it through the names exported here.
The safety filter needs the optional fastText dependency only when it is used.
"""

from prompt.enhancer import DEFAULT_REWRITE_COUNT, DEFAULT_TIMEOUT_MS, PromptEnhancer
from prompt.providers import (
    AllProvidersFailedError,
    CerebrasProvider,
    GroqProvider,
    LLMConfigError,
    LLMMessage,
    LLMProvider,
    LLMProviderError,
    LLMRequest,
    LLMResponse,
    LLMTimeoutError,
    OpenAICompatibleProvider,
    ProviderSpec,
    build_provider,
    build_providers,
    create_http_client,
    open_providers,
)
from prompt.rewrite import RewriteOptions, RewriteResult, build_rewrite, split_alternatives
from prompt.safety import (
    PromptSafetyFilter,
    SafetyDecision,
    SafetyResult,
    first_blocked,
)
from prompt.system_prompts import DEFAULT_SYSTEM_PROMPTS, OPERATIONS

__all__ = [
    "DEFAULT_REWRITE_COUNT",
    "DEFAULT_SYSTEM_PROMPTS",
    "DEFAULT_TIMEOUT_MS",
    "OPERATIONS",
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
    "PromptEnhancer",
    "PromptSafetyFilter",
    "ProviderSpec",
    "RewriteOptions",
    "RewriteResult",
    "SafetyDecision",
    "SafetyResult",
    "build_provider",
    "build_providers",
    "build_rewrite",
    "create_http_client",
    "first_blocked",
    "open_providers",
    "split_alternatives",
]
