"""What the next segment should be, or why not now (DESIGN.md §3). Pure code: no asyncio, no I/O.

The SessionController asks and reports; this module decides:

- gates: the segment cap, waiting for a user prompt after a blocked one, pause, single-clip mode;
- the prompt: the schedule (user prompt, curated loop, repeat), auto-extension and enhancement
  answers from the LLM when they are there, the last prompt used (its one owner) and recent
  history for auto-extension;
- which LLM answers are worth asking for (``lookups``) and which are outstanding: the controller
  asks, and reports each answer with ``answered``; a prompt never waits for one longer than the
  controller's wait budget, a late answer serves a later segment;
- the generation mode: ``continuous`` (the default above: segments follow one another, a newer
  user prompt replaces one not yet shown) or ``per_prompt`` (the original system's rule: each user
  prompt makes exactly one segment, in arrival order, none dropped, at most ``max_queued_prompts``
  waiting; nothing is made without one, and, as there, curated prompts, loop generation,
  auto-extension and enhancement are kept as the client set them but not used);
- where a resumed stream would go on (``resume_state``): the position marked at the last segment
  boundary whose state was stored, with the client's latest choices (toggles, curated list, a user
  prompt not yet shown). Another server restores it with ``restore``.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace

from rtc_server.prompt_schedule import PromptChoice, PromptOrigin, PromptSchedule

__all__ = ["GenerationPolicy", "Hold", "Lookup", "LookupKind", "PolicyPosition", "PolicySettings", "PolicyState"]


class Hold(enum.Enum):
    """Why no segment may be generated now."""

    SEGMENT_CAP = "segment_cap"  # the stream is over
    AWAITING_USER_PROMPT = "awaiting_user_prompt"  # nothing safe to generate until the user sends one
    PAUSED = "paused"
    SINGLE_CLIP_DONE = "single_clip_done"  # single-clip mode: one segment per user prompt
    SUSPENDED = "suspended"  # the session is moving to another server: nothing more is made here
    AWAITING_PROMPT = "awaiting_prompt"  # per_prompt: the next segment waits for its segment_prompt_source


class LookupKind(enum.Enum):
    AUTO_EXTENSION = "auto_extension"
    ENHANCEMENT = "enhancement"


@dataclass(frozen=True)
class Lookup:
    """An LLM answer the next prompt could use: a follow-on to ``history``, or ``text`` enhanced."""

    kind: LookupKind
    text: str = ""
    history: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class PolicySettings:
    """A session's opening settings and the server's limits."""

    default_prompt: str
    curated: Sequence[str] = ()
    loop: bool = False
    auto_extension: bool = False
    enhancement: bool = False
    single_clip: bool = False
    segment_cap: int = 0  # 0: no cap
    history_size: int = 4
    can_enhance: bool = False  # an LLM enhancer is configured
    per_prompt: bool = False  # one segment per user prompt (generation_mode "per_prompt")
    max_queued_prompts: int = 16  # per_prompt: user prompts waiting for their segment, at most


@dataclass(frozen=True, kw_only=True)
class PolicyPosition:
    """Where a stream stands between two segments: what the segments made so far left behind."""

    cursor: int = 0  # curated prompts taken from the current list
    curated_version: int = 0  # the list ``cursor`` counts in (this server's own counter; not persisted)
    last: PromptChoice | None = None
    recent: tuple[str, ...] = ()
    segments_done: int = 0
    awaiting_user: bool = False


@dataclass(frozen=True, kw_only=True)
class PolicyState:
    """A policy's whole state: where the stream stands and what the client chose. What a resumed session restores."""

    position: PolicyPosition = PolicyPosition()
    curated: tuple[str, ...] = ()
    pending: PromptChoice | None = None  # a user prompt not yet shown
    queued: tuple[PromptChoice, ...] = ()  # per_prompt: every user prompt not yet shown, ``pending`` first
    loop: bool = False
    auto_extension: bool = False
    enhancement: bool = False
    single_clip: bool = False
    paused: bool = False


class _Asked(enum.Enum):
    """An auto-extension asked for and not answered yet."""

    PENDING = "pending"


class GenerationPolicy:
    """One session's generation rules and their state."""

    def __init__(self, settings: PolicySettings) -> None:
        self._schedule = PromptSchedule(
            default_prompt=settings.default_prompt,
            curated=list(settings.curated),
            loop=settings.loop,
            per_prompt=settings.per_prompt,
        )
        self._can_enhance = settings.can_enhance
        self._cap = settings.segment_cap
        self._max_queued = settings.max_queued_prompts
        self._arriving = 0  # per_prompt: user prompts admitted and still being checked
        self.auto_extension = settings.auto_extension
        self._enhancement = settings.enhancement
        self.single_clip = settings.single_clip
        self.paused = False
        self.suspended = False
        self._last: PromptChoice | None = None
        self._recent: deque[str] = deque(maxlen=settings.history_size)
        self._awaiting_user = False
        self._segments_done = 0
        self._extension: str | _Asked | None = None  # None: not asked (or it failed); else pending or the answer
        self._enhancing: set[str] = set()
        self._enhanced: dict[str, str] = {}
        self._mark = self.position()
        self._taken: PromptChoice | None = None  # the choice taken since the mark: its segment is not stored yet

    # -- what the client changes --------------------------------------------------------------

    @property
    def loop(self) -> bool:
        return self._schedule.loop_enabled

    @loop.setter
    def loop(self, enabled: bool) -> None:
        self._schedule.loop_enabled = enabled

    @property
    def enhancement(self) -> bool:
        """Whether prompts are enhanced; never per_prompt (the client's choice is kept, as the original does)."""
        return self._enhancement and not self.per_prompt

    @enhancement.setter
    def enhancement(self, enabled: bool) -> None:
        self._enhancement = enabled

    def set_curated(self, prompts: list[str]) -> None:
        self._schedule.set_curated(prompts)

    @property
    def per_prompt(self) -> bool:
        """True in generation_mode ``per_prompt``: one segment per user prompt, in arrival order."""
        return self._schedule.per_prompt

    @property
    def max_queued_prompts(self) -> int:
        return self._max_queued

    @property
    def queued_prompts(self) -> int:
        """User prompts waiting for their segment."""
        return len(self._schedule.queued)

    @property
    def has_pending_user_prompt(self) -> bool:
        return self._schedule.has_pending_user_prompt

    def admit_prompt(self) -> bool:
        """A user prompt arrived: True when it may queue (per_prompt: fewer than ``max_queued_prompts``
        are waiting or being checked); settle each admitted one with ``prompt_settled``."""
        if not self.per_prompt:
            return True
        if self.queued_prompts + self._arriving >= self._max_queued:
            return False
        self._arriving += 1
        return True

    def prompt_settled(self) -> None:
        """An admitted user prompt was queued (``submit_user``) or refused (safety)."""
        if self.per_prompt:
            self._arriving = max(0, self._arriving - 1)

    def submit_user(self, choice: PromptChoice) -> None:
        """Queue a user prompt (already checked, and enhanced when asked); continuous: it is the very
        next one used, replacing one not yet used; per_prompt: it waits behind the others."""
        self._schedule.submit_user(choice)
        self._awaiting_user = False

    # -- what happened ------------------------------------------------------------------------

    @property
    def last(self) -> PromptChoice | None:
        """The prompt of the last segment generated."""
        return self._last

    @property
    def segments_done(self) -> int:
        return self._segments_done

    @property
    def recent(self) -> tuple[str, ...]:
        return tuple(self._recent)

    def generated(self, choice: PromptChoice) -> None:
        """A segment was generated from ``choice``."""
        self._last = replace(choice, checked=True)
        self._recent.append(choice.text)
        self._segments_done += 1

    def retracted(self, choices: Sequence[PromptChoice]) -> None:
        """Generated segments were taken back before being shown (a newer user prompt replaces them)."""
        for choice in reversed(choices):
            self._segments_done = max(0, self._segments_done - 1)
            if self._recent and self._recent[-1] == choice.text:
                self._recent.pop()

    # -- gates --------------------------------------------------------------------------------

    def hold(self) -> Hold | None:
        """Why no segment may start now, or None when one may."""
        if self.suspended:
            return Hold.SUSPENDED
        if self._cap and self._segments_done >= self._cap:
            return Hold.SEGMENT_CAP
        if self._awaiting_user:
            return Hold.AWAITING_USER_PROMPT
        if self.paused:
            return Hold.PAUSED
        if self.per_prompt and not self._schedule.has_pending_user_prompt:
            return Hold.AWAITING_PROMPT
        if self.single_clip and self._segments_done > 0 and not self._schedule.has_pending_user_prompt:
            return Hold.SINGLE_CLIP_DONE
        return None

    # -- LLM help -----------------------------------------------------------------------------

    def _wants_extension(self) -> bool:
        return (
            self.auto_extension
            and not self.per_prompt
            and self._can_enhance
            and self._last is not None
            and not self._schedule.has_pending_user_prompt
            and not self._schedule.cycles_curated
        )

    def _enhancement_source(self) -> str | None:
        """The next prompt's text if it is one the enhancer should rewrite (curated or default)."""
        if not (self.enhancement and self._can_enhance) or self._wants_extension():
            return None
        upcoming = self._schedule.peek(self._last)
        return upcoming.text if upcoming.origin in (PromptOrigin.CURATED, PromptOrigin.DEFAULT) else None

    def lookups(self) -> list[Lookup]:
        """LLM answers the next prompt could use that nobody has asked for yet."""
        if self._wants_extension():
            return [] if self._extension is not None else [Lookup(LookupKind.AUTO_EXTENSION, history=self.recent)]
        source = self._enhancement_source()
        if source is None or source in self._enhancing or source in self._enhanced:
            return []
        return [Lookup(LookupKind.ENHANCEMENT, text=source)]

    def asked(self, lookup: Lookup) -> None:
        """The controller asked the LLM for ``lookup``."""
        if lookup.kind is LookupKind.AUTO_EXTENSION:
            self._extension = _Asked.PENDING
        else:
            self._enhancing.add(lookup.text)

    def answered(self, lookup: Lookup, text: str | None) -> None:
        """An answer arrived (None: the LLM failed; the raw prompt or a repeat is used, and a failed
        auto-extension is asked again for the segment after)."""
        if lookup.kind is LookupKind.AUTO_EXTENSION:
            self._extension = text
            return
        self._enhancing.discard(lookup.text)
        if text is not None:
            self._enhanced[lookup.text] = text

    @property
    def awaiting_answers(self) -> bool:
        """True while an answer the next prompt would use is asked for and not here yet."""
        if self._wants_extension():
            return self._extension is _Asked.PENDING
        source = self._enhancement_source()
        return source is not None and source in self._enhancing

    # -- choosing -----------------------------------------------------------------------------

    def take(self) -> PromptChoice:
        """The next segment's prompt, using the LLM answers that are here (per_prompt: the oldest
        user prompt waiting; only take when ``hold`` is None)."""
        if self.per_prompt and not self._schedule.has_pending_user_prompt:
            raise RuntimeError("per_prompt: no user prompt is waiting; nothing may be generated")
        if self._wants_extension() and isinstance(self._extension, str) and self._last is not None:
            text, self._extension = self._extension, None
            return replace(self._last, text=text, origin=PromptOrigin.AUTO_EXTENSION, checked=False)
        choice = self._schedule.take(self._last)
        if choice.origin in (PromptOrigin.CURATED, PromptOrigin.DEFAULT) and self.enhancement:
            enhanced = self._enhanced.pop(choice.text, None)
            if enhanced is not None:
                choice = replace(choice, text=enhanced)
        self._taken = choice
        return choice

    def refused(self, choice: PromptChoice) -> PromptChoice | None:
        """The safety filter blocked ``choice``: the last prompt again, or None (wait for the user)."""
        del choice  # the blocked text is never used, whatever it was
        if self._last is not None:
            return replace(self._last, origin=PromptOrigin.REPEAT)
        self._awaiting_user = True
        return None


    # -- resuming elsewhere -------------------------------------------------------------------

    def position(self) -> PolicyPosition:
        """Where the stream stands now."""
        return PolicyPosition(
            cursor=self._schedule.cursor,
            curated_version=self._schedule.version,
            last=self._last,
            recent=tuple(self._recent),
            segments_done=self._segments_done,
            awaiting_user=self._awaiting_user,
        )

    @property
    def marked(self) -> PolicyPosition:
        """The position at the last mark: where the segment chosen after it started from."""
        return self._mark

    def mark(self) -> None:
        """A boundary a resumed stream could go on from: the state of the segments made so far is
        stored, and the next segment has not been chosen yet (or is chosen again after a take-back)."""
        self._mark = self.position()
        self._taken = None

    def resume_state(self) -> PolicyState:
        """What a resumed stream restores: the marked position with the client's latest choices. A
        user prompt taken since the mark (its segment not stored yet) is pending again."""
        position = self._mark
        if position.curated_version != self._schedule.version:
            # The client sent a new list since the mark: the live schedule started it from the top.
            position = replace(position, cursor=0, curated_version=self._schedule.version)
        pending = self._schedule.pending
        queued = self._schedule.queued if self.per_prompt else ()
        if self._taken is not None and self._taken.origin is PromptOrigin.USER:
            if self.per_prompt:
                queued = (self._taken, *queued)
                pending = self._taken
            elif pending is None:
                pending = self._taken
        return PolicyState(
            position=position,
            curated=self._schedule.curated,
            pending=pending,
            queued=queued,
            loop=self.loop,
            auto_extension=self.auto_extension,
            enhancement=self._enhancement,
            single_clip=self.single_clip,
            paused=self.paused,
        )

    def restore(self, state: PolicyState) -> None:
        """Continue where ``state`` stood (a session resumed from another server), and mark it."""
        self._schedule.restore(
            curated=list(state.curated), cursor=state.position.cursor, pending=state.pending, queued=state.queued
        )
        self._set_position(state.position)
        self.loop = state.loop
        self.auto_extension = state.auto_extension
        self.enhancement = state.enhancement
        self.single_clip = state.single_clip
        self.paused = state.paused
        self._extension = None
        self._enhancing.clear()
        self._enhanced.clear()
        self.mark()

    def rewind(self, position: PolicyPosition, taken_back: Sequence[PromptChoice]) -> None:
        """The segments chosen since ``position`` were taken back for good (the session is moving to
        another server): go back to ``position``; the newest user prompt among them is pending again
        unless a newer one is. Marks the result."""
        users = [choice for choice in taken_back if choice.origin is PromptOrigin.USER]
        cursor = position.cursor if position.curated_version == self._schedule.version else 0
        if self.per_prompt:  # every prompt taken back is made again, before the waiting ones
            queued = (*users, *self._schedule.queued)
            first = queued[0] if queued else None
            self._schedule.restore(curated=list(self._schedule.curated), cursor=cursor, pending=first, queued=queued)
        else:
            pending = self._schedule.pending or (users[-1] if users else None)
            self._schedule.restore(curated=list(self._schedule.curated), cursor=cursor, pending=pending)
        self._set_position(position)
        self.mark()

    def _set_position(self, position: PolicyPosition) -> None:
        self._last = position.last
        self._recent.clear()
        self._recent.extend(position.recent)
        self._segments_done = position.segments_done
        self._awaiting_user = position.awaiting_user and self._schedule.pending is None
