"""Which prompt the next segment uses (DESIGN.md §3). Pure code, no I/O.

Order: the newest user prompt; with loop generation on, the next curated prompt
(cycling); with auto-extension on, a follow-on prompt (asked of the enhancer by
the controller); else the last prompt again. Before anything was generated, the
first curated prompt or the configured default starts the stream.
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
    """A prompt and the per-prompt overrides that travel with it."""

    text: str
    origin: PromptOrigin
    negative_prompt: str | None = None
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None


class PromptSchedule:
    """Holds the pending user prompt, the curated list and the last prompt used."""

    def __init__(self, *, default_prompt: str, curated: list[str] | None = None, loop: bool = False) -> None:
        self._default = default_prompt
        self._curated = [p for p in (curated or []) if p.strip()]
        self._cursor = 0
        self.loop_enabled = loop
        self.auto_extension_enabled = False
        self._pending: PromptChoice | None = None
        self._last: PromptChoice | None = None

    @property
    def last(self) -> PromptChoice | None:
        return self._last

    @property
    def has_pending_user_prompt(self) -> bool:
        return self._pending is not None

    @property
    def wants_auto_extension(self) -> bool:
        """True when the next prompt should come from the enhancer's auto-extension."""
        return (
            self._pending is None
            and self.auto_extension_enabled
            and self._last is not None
            and not (self.loop_enabled and self._curated)
        )

    def submit_user(self, choice: PromptChoice) -> None:
        """Queue a user prompt; a newer one replaces one not yet used."""
        self._pending = choice

    def set_curated(self, prompts: list[str]) -> None:
        self._curated = [p for p in prompts if p.strip()]
        self._cursor = 0

    def next(self) -> PromptChoice:
        """Take the prompt for the next segment and remember it as the last one."""
        choice = self._pick()
        self._last = choice
        return choice

    def accept_auto_extension(self, text: str) -> PromptChoice:
        """Record a follow-on prompt produced by auto-extension; it keeps the last prompt's overrides."""
        base = self._last or PromptChoice(text=text, origin=PromptOrigin.AUTO_EXTENSION)
        self._last = replace(base, text=text, origin=PromptOrigin.AUTO_EXTENSION)
        return self._last

    def _pick(self) -> PromptChoice:
        if self._pending is not None:
            choice, self._pending = self._pending, None
            return choice
        if self._curated and (self.loop_enabled or self._last is None):
            text = self._curated[self._cursor % len(self._curated)]
            self._cursor += 1
            return PromptChoice(text=text, origin=PromptOrigin.CURATED)
        if self._last is not None:
            return replace(self._last, origin=PromptOrigin.REPEAT)
        return PromptChoice(text=self._default, origin=PromptOrigin.DEFAULT)
