"""Which prompt the next segment uses (DESIGN.md §3). Pure code, no I/O.

Order: the newest user prompt; with loop generation on, the next curated prompt
(cycling); else the last prompt again. Before anything was generated, the first
curated prompt or the configured default starts the stream. Auto-extension (a
follow-on prompt from the enhancer) is decided by the GenerationPolicy, which
also owns the last prompt used: the schedule is told it, never keeps it.

With ``per_prompt`` (the original system's rule) user prompts queue up instead: each
is taken once, in arrival order, none replaces another, and curated prompts are
never taken (the client sends each prompt it wants made).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace

__all__ = ["PromptChoice", "PromptOrigin", "PromptSchedule"]


class PromptOrigin(enum.Enum):
    """Why a prompt was chosen."""

    USER = "user"
    CURATED = "curated"
    DEFAULT = "default"
    REPEAT = "repeat"
    AUTO_EXTENSION = "auto_extension"


@dataclass(frozen=True, kw_only=True)
class PromptChoice:
    """A prompt and the per-prompt overrides that travel with it.

    ``checked`` is True once the safety filter passed the text (user prompts on arrival,
    others when first used), so a repeat is not checked again.
    """

    text: str
    origin: PromptOrigin
    negative_prompt: str | None = None
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    checked: bool = False


class PromptSchedule:
    """The pending user prompt(s) and the curated list with its cursor."""

    def __init__(
        self, *, default_prompt: str, curated: list[str] | None = None, loop: bool = False, per_prompt: bool = False
    ) -> None:
        self._default = default_prompt
        self._curated = [p for p in (curated or []) if p.strip()]
        self._cursor = 0
        self._version = 0  # bumped by every new curated list, so a saved cursor knows which list it counts in
        self.loop_enabled = loop
        self._per_prompt = per_prompt
        # Continuous: at most one (a newer prompt replaces it); per_prompt: every prompt, oldest first.
        self._pending: deque[PromptChoice] = deque()

    @property
    def per_prompt(self) -> bool:
        """True when every user prompt is kept and taken once, in arrival order."""
        return self._per_prompt

    @property
    def has_pending_user_prompt(self) -> bool:
        return bool(self._pending)

    @property
    def pending(self) -> PromptChoice | None:
        """The user prompt queued for the next segment, if any."""
        return self._pending[0] if self._pending else None

    @property
    def queued(self) -> tuple[PromptChoice, ...]:
        """Every user prompt waiting for its segment, the next one first."""
        return tuple(self._pending)

    @property
    def curated(self) -> tuple[str, ...]:
        return tuple(self._curated)

    @property
    def cursor(self) -> int:
        """How many curated prompts have been taken from the current list."""
        return self._cursor

    @property
    def version(self) -> int:
        """Which curated list is current: changes with every ``set_curated``."""
        return self._version

    def restore(
        self, *, curated: list[str], cursor: int, pending: PromptChoice | None, queued: Sequence[PromptChoice] = ()
    ) -> None:
        """Put the schedule back where a saved one stood (a resumed stream); the list counts as current.
        ``queued`` (per_prompt) is every waiting prompt, ``pending`` first; without it ``pending`` alone."""
        self._curated = [p for p in curated if p.strip()]
        self._cursor = max(0, cursor)
        waiting = list(queued) if queued and self._per_prompt else ([pending] if pending is not None else [])
        self._pending = deque(waiting)

    @property
    def cycles_curated(self) -> bool:
        """True when the stream follows the curated list (loop on, list not empty, not per_prompt)."""
        return self.loop_enabled and bool(self._curated) and not self._per_prompt

    def submit_user(self, choice: PromptChoice) -> None:
        """Queue a user prompt; a newer one replaces one not yet used (per_prompt: waits behind it)."""
        if not self._per_prompt:
            self._pending.clear()
        self._pending.append(choice)

    def requeue(self, choices: Sequence[PromptChoice]) -> None:
        """per_prompt: put prompts whose segments were taken back in front of the waiting ones, in order."""
        self._pending.extendleft(reversed(choices))

    def set_curated(self, prompts: list[str]) -> None:
        self._curated = [p for p in prompts if p.strip()]
        self._cursor = 0
        self._version += 1

    def peek(self, last: PromptChoice | None) -> PromptChoice:
        """What :meth:`take` would return now, without taking it."""
        return self._pick(last, advance=False)

    def take(self, last: PromptChoice | None) -> PromptChoice:
        """Take the prompt for the next segment; ``last`` is the prompt the previous segment used."""
        return self._pick(last, advance=True)

    def _pick(self, last: PromptChoice | None, *, advance: bool) -> PromptChoice:
        if self._pending:
            return self._pending.popleft() if advance else self._pending[0]
        if self._curated and (self.loop_enabled or last is None) and not self._per_prompt:
            text = self._curated[self._cursor % len(self._curated)]
            if advance:
                self._cursor += 1
            return PromptChoice(text=text, origin=PromptOrigin.CURATED)
        if last is not None:
            return replace(last, origin=PromptOrigin.REPEAT)
        return PromptChoice(text=self._default, origin=PromptOrigin.DEFAULT)
