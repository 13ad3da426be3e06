"""One session's prompt work that awaits the LLM or the safety filter.

User prompts are checked (and enhanced when asked) on arrival, in arrival order, then handed to
the GenerationPolicy; the next segment's prompt gets the LLM answers the policy asks for, waited
for at most the configured wait budget (a slow provider delays nothing: a late answer serves a
later segment); rewrite requests are answered on the side.

LLM work is bounded per session, so that one client cannot run up the server's LLM bill or
crowd out other sessions:

- at most one call of each kind in flight: one rewrite (another one meanwhile is refused with
  ``rate_limited``), one enhancement (a user prompt's enhancement pre-empts the server's own
  enhancement of a curated prompt; of user prompts queued behind one, only the newest is
  enhanced, the older ones are answered ``rate_limited``: the newest replaces them anyway), one
  auto-extension;
- a budget of LLM operations per minute (a token bucket) shared by everything the session
  causes. Beyond it a rewrite is refused with a retry-after, a user prompt is used un-enhanced
  (the client is told once per spell), and the server's own calls (auto-extension, curated
  enhancement) are skipped, so the stream repeats its last prompt. The server's own calls
  leave ``BACKGROUND_RESERVE_CALLS`` of the budget to the client.

An operation is one enhancer call, which may try each configured provider once (fallback).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

from prompt import SafetyDecision
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
from rtc_server.rate_limit import TokenBucket
from rtc_server.session_events import SessionEvents

__all__ = ["BACKGROUND_RESERVE_CALLS", "DEFAULT_LLM_CALLS_PER_MINUTE", "PromptIntake"]

Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]

DEFAULT_LLM_CALLS_PER_MINUTE = 30  # LLM operations per session: one every 2 s once the burst is spent
BACKGROUND_RESERVE_CALLS = 1  # operations the server's own LLM work leaves in the budget for the client's
SECONDS_PER_MINUTE = 60.0
QUOTED_PROMPT_CHARS = 60  # characters of a client's prompt quoted back in an error
REMEMBERED_ENHANCEMENTS = 256  # curated/default prompts whose enhancement a session keeps


def _quoted(text: str) -> str:
    """``text`` quoted for an error message, cut short: errors never echo unbounded input."""
    return repr(text if len(text) <= QUOTED_PROMPT_CHARS else text[:QUOTED_PROMPT_CHARS] + "...")


class PromptIntake:
    """Safety, enhancement and auto-extension for one session's prompts, within its LLM budget."""

    def __init__(
        self,
        *,
        policy: GenerationPolicy,
        prompts: PromptPipeline,
        events: SessionEvents,
        wait_s: float,
        spawn: Spawn,
        on_user_prompt: Callable[[], int],
        llm_calls_per_minute: int = DEFAULT_LLM_CALLS_PER_MINUTE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``on_user_prompt`` is called once a user prompt is queued and returns the segment it lands on;
        ``llm_calls_per_minute`` is the session's LLM budget (a burst of that many, then one every
        ``60 / llm_calls_per_minute`` s), measured on ``clock`` (the bucket refuses a budget below 1)."""
        self._policy = policy
        self._prompts = prompts
        self._events = events
        self._wait_s = wait_s
        self._spawn = spawn
        self._on_user_prompt = on_user_prompt
        self._lock = asyncio.Lock()  # user prompts are handled in arrival order
        self._answered = asyncio.Event()
        self._calls_per_minute = llm_calls_per_minute
        self._budget = TokenBucket(
            rate_per_s=llm_calls_per_minute / SECONDS_PER_MINUTE, burst=llm_calls_per_minute, clock=clock
        )
        self._newest: SegmentPromptSource | None = None  # the last user prompt to arrive
        self._rewriting: RewriteSeedPrompts | None = None  # the rewrite in flight
        self._enhancing = asyncio.Lock()  # one enhancement call at a time, user's or server's
        self._background_enhancement: asyncio.Task[Any] | None = None  # the server's, while it holds the lock
        self._extending = asyncio.Lock()
        # Curated and default prompts come round again and again: each is enhanced once per session,
        # so only real LLM calls are charged to the budget.
        self._remembered: OrderedDict[str, str] = OrderedDict()
        self._client_told = False  # the client knows its prompts are used un-enhanced for now
        self._skip_logged = False  # the log says the server's own LLM work is being skipped

    # -- user prompts -------------------------------------------------------------------------

    async def accept(self, message: SegmentPromptSource) -> None:
        """Check, enhance when asked (and allowed), queue, and acknowledge a user prompt."""
        self._newest = message
        async with self._lock:
            if await self._rejected(message.prompt):
                return
            enhanced: str | None = None
            if self._policy.enhancement and self._prompts.can_enhance:
                if message is not self._newest:  # the newest replaces it anyway: spend no LLM call on it
                    self._superseded(message)
                    return
                async with self._enhancement_slot():
                    if message is not self._newest:  # arrived while the server's own call gave way
                        self._superseded(message)
                        return
                    enhanced = await self._enhance_user(message.prompt)
                if enhanced is not None and await self._rejected(enhanced, sent=message.prompt):
                    return
            self._queue_user_prompt(message, enhanced)

    def _queue_user_prompt(self, message: SegmentPromptSource, enhanced: str | None) -> None:
        """Hand a checked user prompt to the policy and tell the client which segment it lands on."""
        text = enhanced if enhanced is not None else message.prompt
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
        was_enhanced = enhanced is not None
        self._events.log(
            "prompt_received", prompt=message.prompt, prompt_used=text, enhanced=was_enhanced, segment_idx=segment_idx
        )
        self._events.send(
            PromptReceived(
                prompt=message.prompt,
                prompt_used=text,
                source=message.source,
                enhanced=was_enhanced,
                segment_idx=segment_idx,
            )
        )

    def _enhancement_slot(self) -> asyncio.Lock:
        """The enhancement lock, for a user prompt: the server's own enhancement in flight gives way
        (its prompt is about to be replaced by the user's anyway; it is asked again later)."""
        task = self._background_enhancement
        if task is not None and not task.done():
            task.cancel()
        return self._enhancing

    async def _enhance_user(self, prompt: str) -> str | None:
        """The enhanced prompt; None when the LLM failed or the budget is spent (the client is told once)."""
        if not self._budget.try_take():
            self._tell_over_budget()
            return None
        self._client_told = False
        used = await self._prompts.enhance(prompt)
        return used.text if used.enhanced else None

    def _superseded(self, message: SegmentPromptSource) -> None:
        self._events.log("prompt_superseded", prompt=message.prompt)
        self._events.error(
            "rate_limited",
            f"prompt {_quoted(message.prompt)} was replaced by a newer one before it could be enhanced",
        )

    def _tell_over_budget(self) -> None:
        if self._client_told:
            return
        self._client_told = True
        self._events.error(
            "rate_limited",
            f"this session's LLM budget of {self._calls_per_minute} calls per minute is used up: prompts are "
            f"used without enhancement for the next {self._budget.retry_after_s():.1f} s",
            retryable=True,
        )

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
        if blocked.decision is SafetyDecision.UNAVAILABLE:
            reason, label = "the safety filter could not check it", "unchecked"
        elif sent is None:
            reason, label = "blocked by the safety filter", "unsafe"
        else:
            reason, label = "its enhanced version was blocked by the safety filter", "unsafe"
        self._events.send(PromptRejected(prompt=sent or text, reason=reason, label=label, score=blocked.unsafe_score))
        return True

    # -- the next segment's prompt ------------------------------------------------------------

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
                answer = await self._auto_extend(lookup)
            else:
                answer = await self._enhance_curated(lookup.text)
        finally:
            # Answered even when the call failed or was skipped: an open question would hold every
            # later segment. A skipped answer is asked again for a later segment.
            self._policy.answered(lookup, answer)
            self._answered.set()

    async def _auto_extend(self, lookup: Lookup) -> str | None:
        if self._extending.locked() or not self._take_background("auto_extension"):
            return None
        async with self._extending:
            return await self._prompts.auto_extend(list(lookup.history))

    async def _enhance_curated(self, text: str) -> str | None:
        remembered = self._remembered.get(text)
        if remembered is not None:
            self._remembered.move_to_end(text)
            return remembered
        if self._enhancing.locked() or not self._take_background("enhancement"):
            return None
        async with self._enhancing:
            self._background_enhancement = asyncio.current_task()
            try:
                enhanced = await self._prompts.enhance(text, cached=True)
            finally:
                self._background_enhancement = None
        if not enhanced.enhanced:
            return None
        self._remembered[text] = enhanced.text
        if len(self._remembered) > REMEMBERED_ENHANCEMENTS:
            self._remembered.popitem(last=False)
        return enhanced.text

    def _take_background(self, kind: str) -> bool:
        """Charge one of the server's own LLM calls to the budget, leaving the client's reserve; False: skip it."""
        if self._budget.tokens >= 1 + BACKGROUND_RESERVE_CALLS and self._budget.try_take():
            self._skip_logged = False
            return True
        if not self._skip_logged:
            self._skip_logged = True
            self._events.log("llm_skipped", kind=kind, reason="budget", calls_per_minute=self._calls_per_minute)
        return False

    async def _wait_for_answers(self) -> None:
        deadline = time.monotonic() + self._wait_s
        while self._policy.awaiting_answers and (remaining := deadline - time.monotonic()) > 0:
            self._answered.clear()
            try:
                await asyncio.wait_for(self._answered.wait(), remaining)
            except TimeoutError:
                return

    # -- rewrite ------------------------------------------------------------------------------

    async def rewrite(self, message: RewriteSeedPrompts) -> None:
        """Answer a rewrite_seed_prompts request with alternatives from the LLM (one at a time, within the budget)."""
        if not self._prompts.can_enhance:
            self._events.error("invalid_message", "prompt rewriting is not enabled on this server")
            return
        if self._rewriting is not None:
            self._events.error(
                "rate_limited",
                f"a rewrite of {_quoted(self._rewriting.seed_prompt)} is still in progress for this session; "
                "send the next one after its rewrite_seed_prompts_complete or error",
                retryable=True,
            )
            return
        if not self._budget.try_take():
            self._events.error(
                "rate_limited",
                f"this session's LLM budget of {self._calls_per_minute} calls per minute is used up; "
                f"retry in {self._budget.retry_after_s():.1f} s",
                retryable=True,
            )
            return
        self._rewriting = message
        try:
            await self._rewrite(message)
        finally:
            self._rewriting = None

    async def _rewrite(self, message: RewriteSeedPrompts) -> None:
        self._events.send(RewriteSeedPromptsStarted(seed_prompt=message.seed_prompt))
        try:
            result = await self._prompts.rewrite(message.seed_prompt, message.count)
        except PromptUnavailable as exc:
            # The providers' own words (HTTP error bodies, addresses) stay in the session's log.
            self._events.log("rewrite_failed", seed_prompt=message.seed_prompt, reason=str(exc))
            self._events.error(
                "upstream_timeout", "prompt rewrite failed: no LLM provider answered in time", retryable=True
            )
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
