"""One session's prompt work that awaits the LLM or the safety filter.

User prompts are checked (and enhanced when asked) on arrival, in arrival order, then handed to
the GenerationPolicy; the next segment's prompt gets the LLM answers the policy asks for, waited
for at most the configured wait budget (a slow provider delays nothing: a late answer serves a
later segment); rewrite requests are answered on the side.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from rtc_server.generation_policy import GenerationPolicy, Lookup, LookupKind
from rtc_server.prompt_pipeline import PromptPipeline, PromptUnavailable
from rtc_server.prompt_schedule import PromptChoice, PromptOrigin
from rtc_server.protocol import (
    PromptReceived,
    PromptRejected,
    RewriteSeedPrompts,
    RewriteSeedPromptsComplete,
    RewriteSeedPromptsStarted,
    SegmentPromptSource,
)
from rtc_server.session_events import SessionEvents

__all__ = ["PromptIntake"]

Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


class PromptIntake:
    """Safety, enhancement and auto-extension for one session's prompts."""

    def __init__(
        self,
        *,
        policy: GenerationPolicy,
        prompts: PromptPipeline,
        events: SessionEvents,
        wait_s: float,
        spawn: Spawn,
        on_user_prompt: Callable[[], int],
    ) -> None:
        """``on_user_prompt`` is called once a user prompt is queued and returns the segment it lands on."""
        self._policy = policy
        self._prompts = prompts
        self._events = events
        self._wait_s = wait_s
        self._spawn = spawn
        self._on_user_prompt = on_user_prompt
        self._lock = asyncio.Lock()  # user prompts are handled in arrival order
        self._answered = asyncio.Event()

    async def accept(self, message: SegmentPromptSource) -> None:
        """Check, enhance when asked, queue, and acknowledge a user prompt."""
        async with self._lock:
            if await self._rejected(message.prompt):
                return
            used = await self._prompts.enhance(message.prompt) if self._policy.enhancement else None
            if used is not None and used.enhanced and await self._rejected(used.text, sent=message.prompt):
                return
            text = used.text if used is not None else message.prompt
            self._policy.submit_user(
                PromptChoice(
                    text=text,
                    origin=PromptOrigin.USER,
                    negative_prompt=message.negative_prompt,
                    seed=message.seed,
                    num_inference_steps=message.num_inference_steps,
                    guidance_scale=message.guidance_scale,
                    checked=True,
                )
            )
            segment_idx = self._on_user_prompt()
            enhanced = used is not None and used.enhanced
            self._events.log("prompt_received", prompt=message.prompt, prompt_used=text, enhanced=enhanced, segment_idx=segment_idx)
            self._events.send(
                PromptReceived(
                    prompt=message.prompt, prompt_used=text, source=message.source, enhanced=enhanced, segment_idx=segment_idx
                )
            )

    async def next_choice(self) -> PromptChoice | None:
        """The next segment's prompt, checked; None when nothing safe is left (the policy then waits for the user)."""
        for lookup in self._policy.lookups():
            self._policy.asked(lookup)
            self._spawn(self._ask(lookup))
        await self._wait_for_answers()
        choice = self._policy.take()
        if choice.checked or not await self._rejected(choice.text):
            return choice
        return self._policy.refused(choice)

    async def _ask(self, lookup: Lookup) -> None:
        answer: str | None = None
        try:
            if lookup.kind is LookupKind.AUTO_EXTENSION:
                answer = await self._prompts.auto_extend(list(lookup.history))
            else:
                enhanced = await self._prompts.enhance(lookup.text, cached=True)
                answer = enhanced.text if enhanced.enhanced else None
        finally:
            # Answered even when the call failed: an open question would hold every later segment.
            self._policy.answered(lookup, answer)
            self._answered.set()

    async def _wait_for_answers(self) -> None:
        deadline = time.monotonic() + self._wait_s
        while self._policy.awaiting_answers and (remaining := deadline - time.monotonic()) > 0:
            self._answered.clear()
            try:
                await asyncio.wait_for(self._answered.wait(), remaining)
            except TimeoutError:
                return

    async def _rejected(self, text: str, *, sent: str | None = None) -> bool:
        """True (and the client told) when the safety filter blocks ``text``.

        ``sent`` is the client's own prompt when ``text`` is its enhanced version: the client
        is told about what it sent, and the LLM's text is not echoed back.
        """
        blocked = await self._prompts.check(text)
        if blocked is None:
            return False
        self._events.log("prompt_rejected", prompt=text, score=blocked.unsafe_score)
        self._events.metrics.errors.labels(code="prompt_rejected").inc()
        reason = "blocked by the safety filter" if sent is None else "its enhanced version was blocked by the safety filter"
        self._events.send(PromptRejected(prompt=sent or text, reason=reason, label="unsafe", score=blocked.unsafe_score))
        return True

    async def rewrite(self, message: RewriteSeedPrompts) -> None:
        """Answer a rewrite_seed_prompts request with alternatives from the LLM."""
        if not self._prompts.can_enhance:
            self._events.error("invalid_message", "prompt rewriting is not enabled on this server")
            return
        self._events.send(RewriteSeedPromptsStarted(seed_prompt=message.seed_prompt))
        try:
            result = await self._prompts.rewrite(message.seed_prompt, message.count)
        except PromptUnavailable as exc:
            self._events.error("upstream_timeout", str(exc), retryable=True)
            return
        self._events.send(
            RewriteSeedPromptsComplete(
                seed_prompt=message.seed_prompt,
                alternatives=list(result.alternatives),
                provider=result.provider,
                model=result.model,
                latency_ms=round(result.latency_ms, 2),
                fallback_used=result.fallback_used,
            )
        )
