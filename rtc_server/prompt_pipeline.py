"""The server's use of prompt/: safety on every prompt, enhancement that never stalls a stream, rewrite.

Shared by all sessions. Blocking calls (fastText, reading system prompts) go
through threads; LLM calls get an overall deadline, after which the raw prompt
is used and the fact logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from prompt import LLMProviderError, PromptEnhancer, RewriteOptions, RewriteResult, SafetyDecision, build_rewrite
from prompt.safety import PromptSafetyFilter, SafetyResult

__all__ = ["EnhancedPrompt", "PromptPipeline", "PromptUnavailable"]

logger = logging.getLogger(__name__)

ENHANCE_CACHE_SIZE = 256  # enhanced curated prompts remembered, so a looping list is enhanced once


class PromptUnavailable(RuntimeError):
    """The requested prompt operation is not configured or its providers failed."""


@dataclass(frozen=True)
class EnhancedPrompt:
    """The text to generate from, and whether an LLM produced it."""

    text: str
    enhanced: bool


class PromptPipeline:
    """Enhancer and safety filter as the sessions see them; either may be absent."""

    def __init__(
        self,
        *,
        enhancer: PromptEnhancer | None,
        safety: PromptSafetyFilter | None,
        deadline_s: float,
    ) -> None:
        self._enhancer = enhancer
        self._safety = safety
        self._deadline_s = deadline_s
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._unavailable_logged = False

    @property
    def can_enhance(self) -> bool:
        return self._enhancer is not None

    async def check(self, text: str) -> SafetyResult | None:
        """The safety result when ``text`` is refused, else None. An enabled filter that cannot decide
        refuses (fail closed): its model was checked at start, so this is a fault, logged once."""
        if self._safety is None or not self._safety.enabled:
            return None
        result = await asyncio.to_thread(self._safety.classify, text)
        if result.decision is SafetyDecision.UNAVAILABLE:
            if not self._unavailable_logged:
                self._unavailable_logged = True
                logger.error("safety filter unavailable, prompts are refused: %s", result.reason)
            return result
        return result if result.blocked else None

    async def enhance(self, text: str, *, cached: bool = False) -> EnhancedPrompt:
        """The enhanced text, or ``text`` itself when no provider answers within the deadline."""
        if self._enhancer is None:
            return EnhancedPrompt(text, False)
        if cached and text in self._cache:
            self._cache.move_to_end(text)
            return EnhancedPrompt(self._cache[text], True)
        try:
            response = await asyncio.wait_for(self._enhancer.enhance(text), self._deadline_s)
        except (LLMProviderError, ValueError, TimeoutError) as exc:
            logger.warning("prompt enhancement failed, using the raw prompt: %s", exc or type(exc).__name__)
            return EnhancedPrompt(text, False)
        if cached:
            self._cache[text] = response.content
            if len(self._cache) > ENHANCE_CACHE_SIZE:
                self._cache.popitem(last=False)
        return EnhancedPrompt(response.content, True)

    async def auto_extend(self, prior_prompts: Sequence[str]) -> str | None:
        """A follow-on prompt, or None when auto-extension is off or failed (the stream then repeats)."""
        if self._enhancer is None or not prior_prompts:
            return None
        try:
            response = await asyncio.wait_for(self._enhancer.auto_extend(list(prior_prompts)), self._deadline_s)
        except (LLMProviderError, ValueError, TimeoutError) as exc:
            logger.warning("auto-extension failed, continuing with the last prompt: %s", exc or type(exc).__name__)
            return None
        return response.content

    async def rewrite(self, seed_prompt: str, count: int) -> RewriteResult:
        """Alternatives to ``seed_prompt``; PromptUnavailable when not configured or every provider failed."""
        if self._enhancer is None:
            raise PromptUnavailable("prompt rewriting is not enabled on this server")
        try:
            return await asyncio.wait_for(
                build_rewrite(self._enhancer, seed_prompt, options=RewriteOptions(count=count)), self._deadline_s
            )
        except (LLMProviderError, ValueError, TimeoutError) as exc:
            raise PromptUnavailable(f"rewrite failed: {exc or type(exc).__name__}") from exc

    async def reload_system_prompts(self) -> bool:
        """Re-read the enhancer's system prompt files; False when there is no enhancer."""
        if self._enhancer is None:
            return False
        await asyncio.to_thread(self._enhancer.reload_system_prompts)
        self._cache.clear()
        return True
