"""Prompt-to-pixels: time from sending a prompt to the first decoded frame generated from it.

Frames of the synthetic generator carry their prompt's tag in the frame marker
(``gpu.frame_marker.prompt_tag``), so a client can tell which prompt each frame came from. Pure
code: the caller feeds in what it sent, what it was told and what it decoded, with its own clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpu.frame_marker import FrameMarker, prompt_tag

__all__ = ["PromptProbe"]


@dataclass
class _Sent:
    prompt: str
    at: float
    tags: set[int] = field(default_factory=set)


class PromptProbe:
    """Matches decoded frames to the prompts sent before them."""

    def __init__(self) -> None:
        self._pending: list[_Sent] = []
        self.latencies_s: list[float] = []
        self.superseded = 0  # prompts overtaken by a newer one before any of their frames showed

    @property
    def pending(self) -> int:
        """Prompts sent whose frames have not shown yet."""
        return len(self._pending)

    def sent(self, prompt: str, at: float) -> None:
        """``prompt`` was sent at ``at`` (seconds, the caller's clock)."""
        self._pending.append(_Sent(prompt, at, {prompt_tag(prompt)}))

    def acknowledged(self, prompt: str, prompt_used: str) -> None:
        """The server said it generates ``prompt`` as ``prompt_used`` (enhanced): frames carry that tag."""
        for sent in self._pending:
            if sent.prompt == prompt:
                sent.tags.add(prompt_tag(prompt_used))

    def frame(self, marker: FrameMarker | None, at: float) -> float | None:
        """A frame decoded at ``at``; returns the latency it completes, if it is a prompt's first frame."""
        if marker is None:
            return None
        for index in range(len(self._pending) - 1, -1, -1):
            sent = self._pending[index]
            if marker.prompt_tag in sent.tags:
                latency = at - sent.at
                self.latencies_s.append(latency)
                self.superseded += index
                del self._pending[: index + 1]
                return latency
        return None
