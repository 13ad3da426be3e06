"""Which prompt the next segment uses (DESIGN.md §3). Pure code, no I/O.

Order: the newest user prompt; with loop generation on, the next curated prompt
(cycling); else the last prompt again. Before anything was generated, the first
curated prompt or the configured default starts the stream. Auto-extension (a
follow-on prompt from the enhancer) is decided by the GenerationPolicy, which
also owns the last prompt used: the schedule is told it, never keeps it.
"""

from __future__ import annotations

import enum
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
    """The pending user prompt and the curated list with its cursor."""

    def __init__(self, *, default_prompt: str, curated: list[str] | None = None, loop: bool = False) -> None:
        self._default = default_prompt
        self._curated = [p for p in (curated or []) if p.strip()]
        self._cursor = 0
        self._version = 0  # bumped by every new curated list, so a saved cursor knows which list it counts in
        self.loop_enabled = loop
        self._pending: PromptChoice | None = None

    @property
    def has_pending_user_prompt(self) -> bool:
        return self._pending is not None

    @property
    def pending(self) -> PromptChoice | None:
        """The user prompt queued for the next segment, if any."""
        return self._pending

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

    def restore(self, *, curated: list[str], cursor: int, pending: PromptChoice | None) -> None:
        """Put the schedule back where a saved one stood (a resumed stream); the list counts as current."""
        self._curated = [p for p in curated if p.strip()]
        self._cursor = max(0, cursor)
        self._pending = pending

    @property
    def cycles_curated(self) -> bool:
        """True when the stream follows the curated list (loop on, list not empty)."""
        return self.loop_enabled and bool(self._curated)

    def submit_user(self, choice: PromptChoice) -> None:
        """Queue a user prompt; a newer one replaces one not yet used."""
        self._pending = choice

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
        if self._pending is not None:
            choice = self._pending
            if advance:
                self._pending = None
            return choice
        if self._curated and (self.loop_enabled or last is None):
            text = self._curated[self._cursor % len(self._curated)]
            if advance:
                self._cursor += 1
            return PromptChoice(text=text, origin=PromptOrigin.CURATED)
        if last is not None:
            return replace(last, origin=PromptOrigin.REPEAT)
        return PromptChoice(text=self._default, origin=PromptOrigin.DEFAULT)
