"""Provider-agnostic prompt operations for the streaming server.

- ``enhance``: polish a user prompt (cinematic detail, fixed syntax);
- ``auto_extend``: write a follow-on prompt from the prompts so far, for continuous generation;
- ``rewrite``: write alternatives to a seed prompt (split into a list by :mod:`prompt.rewrite`).

All three share one orchestration: providers are tried in priority order, each under a per-call
deadline; a retryable failure moves on to the next provider, a non-retryable one stops at once (a bad
request or a rejected key will not get better elsewhere and should be seen). System prompts come
from ``system_prompt_dir`` and can be re-read at run time with :meth:`PromptEnhancer.reload_system_prompts`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from prompt.messages import auto_extend_messages, clean_reply, enhance_messages, rewrite_messages
from prompt.providers.base import (
    AllProvidersFailedError,
    LLMMessage,
    LLMProvider,
    LLMProviderError,
    LLMRequest,
    LLMResponse,
    LLMTimeoutError,
)
from prompt.system_prompts import Operation, load_system_prompts

__all__ = ["DEFAULT_REWRITE_COUNT", "DEFAULT_TIMEOUT_MS", "PromptEnhancer"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 20_000  # 20 s per provider call
DEFAULT_REWRITE_COUNT = 3
_TOKENS_PER_ALTERNATIVE = 128  # tokens; rewrite raises max_tokens so `count` prompts of ~80 words fit

PostProcess = Callable[[str], str]


def _keep(content: str) -> str:
    return content


class PromptEnhancer:
    """Runs prompt operations over a priority-ordered provider list with fallback on retryable errors.

    ``timeout_ms`` bounds each provider call (not the whole fallback chain). ``model`` is the default
    model id; a provider configured with its own model uses that instead.
    """

    def __init__(
        self,
        *,
        providers: Sequence[LLMProvider],
        model: str | None = None,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        temperature: float = 0.7,
        max_tokens: int | None = 256,
        system_prompt_dir: str | Path | None = None,
    ) -> None:
        if not providers:
            raise ValueError("PromptEnhancer requires at least one LLMProvider")
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be positive, got {timeout_ms}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1 or None, got {max_tokens}")
        self._providers = list(providers)
        self._model = model
        self._timeout_ms = timeout_ms
        self._temperature = temperature
        self._max_tokens = max_tokens
        self._system_prompt_dir = system_prompt_dir
        self._system_prompts = load_system_prompts(system_prompt_dir)

    @property
    def providers(self) -> tuple[LLMProvider, ...]:
        """The providers in the order they are tried."""
        return tuple(self._providers)

    @property
    def system_prompts(self) -> Mapping[Operation, str]:
        """The system prompt in use for each operation."""
        return self._system_prompts

    @property
    def timeout_ms(self) -> int:
        return self._timeout_ms

    def register_provider(self, provider: LLMProvider, *, priority: int = -1) -> None:
        """Insert a provider: ``priority=0`` makes it primary; ``-1`` (default) appends it as the last fallback."""
        if priority < 0:
            self._providers.append(provider)
        else:
            self._providers.insert(priority, provider)

    def reload_system_prompts(self) -> None:
        """Re-read the system prompt files (blocking file I/O: call through ``asyncio.to_thread``)."""
        # One assignment of a fresh mapping: a concurrent call sees the old set or the new, never a mix.
        self._system_prompts = load_system_prompts(self._system_prompt_dir)
        logger.info("prompt enhancer: reloaded system prompts from %s", self._system_prompt_dir or "defaults")

    async def enhance(self, prompt: str, *, temperature: float | None = None) -> LLMResponse:
        """The user's ``prompt`` improved for the video model; ValueError if it is empty."""
        messages = enhance_messages(self._system_prompts["enhance"], prompt)
        return await self.complete(messages, temperature=temperature, postprocess=clean_reply)

    async def auto_extend(self, prior_prompts: Sequence[str], *, temperature: float | None = None) -> LLMResponse:
        """A prompt for the next segment that follows on from ``prior_prompts`` (oldest first)."""
        messages = auto_extend_messages(self._system_prompts["auto_extend"], prior_prompts)
        return await self.complete(messages, temperature=temperature, postprocess=clean_reply)

    async def rewrite(
        self, seed_prompt: str, *, count: int = DEFAULT_REWRITE_COUNT, temperature: float | None = None
    ) -> LLMResponse:
        """The raw reply holding ``count`` alternatives to ``seed_prompt``, one per line."""
        messages = rewrite_messages(self._system_prompts["rewrite"], seed_prompt, count=count)
        max_tokens = None if self._max_tokens is None else max(self._max_tokens, count * _TOKENS_PER_ALTERNATIVE)
        return await self.complete(messages, temperature=temperature, max_tokens=max_tokens)

    async def complete(
        self,
        messages: Sequence[LLMMessage],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        postprocess: PostProcess = _keep,
    ) -> LLMResponse:
        """Send ``messages`` to the providers in order until one answers.

        ``postprocess`` turns the reply into the content returned; an empty result counts as a
        retryable failure of that provider. Raises the first non-retryable
        :class:`LLMProviderError`, or :class:`AllProvidersFailedError` when every provider failed.
        """
        request = LLMRequest(
            messages=tuple(messages),
            model=self._model,
            temperature=self._temperature if temperature is None else temperature,
            max_tokens=self._max_tokens if max_tokens is None else max_tokens,
            timeout_s=self._timeout_ms / 1000.0,
        )
        errors: list[LLMProviderError] = []
        providers = list(self._providers)  # a register_provider() during the await must not shift the loop
        for index, provider in enumerate(providers):
            try:
                response = await self._attempt(provider, request)
                content = postprocess(response.content)
                if not content:
                    raise LLMProviderError(f"{provider.name}: reply was empty after clean-up", provider=provider.name)
            except LLMProviderError as exc:
                if exc.provider is None:
                    exc.provider = provider.name
                if not exc.retryable:
                    logger.warning("prompt enhancer: %s failed, not retryable: %s", provider.name, exc)
                    raise
                errors.append(exc)
                if index + 1 < len(providers):
                    logger.warning(
                        "prompt enhancer: %s failed (%s); falling back to %s",
                        provider.name,
                        exc,
                        providers[index + 1].name,
                    )
                continue
            return replace(response, content=content, fallback_used=index > 0)
        raise AllProvidersFailedError(errors) from errors[-1]

    async def _attempt(self, provider: LLMProvider, request: LLMRequest) -> LLMResponse:
        """One provider call under the per-call deadline (which also covers non-HTTP providers)."""
        try:
            async with asyncio.timeout(self._timeout_ms / 1000.0):
                return await provider.complete(request)
        except TimeoutError as exc:
            raise LLMTimeoutError(
                f"{provider.name}: no reply within {self._timeout_ms} ms", provider=provider.name
            ) from exc
