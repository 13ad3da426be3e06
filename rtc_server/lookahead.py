"""Segments made ahead of playback that the client has not seen yet, so a newer prompt can replace them.

Pure bookkeeping: whether a segment was delivered, and how to take it back, is asked of its
SegmentOutput (the transport knows). Playback is in order, so once a segment has been delivered
every older one has been too, and a take-back runs from the newest segment down.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from gpu.generator import ContinuationState
from rtc_server.generation_policy import PolicyPosition
from rtc_server.prompt_schedule import PromptChoice
from rtc_server.sink import SegmentOutput

__all__ = ["Lookahead", "PendingSegment"]


@dataclass(eq=False)
class PendingSegment:
    """A segment being made or made, and what it continued from."""

    idx: int
    state_before: ContinuationState | None
    output: SegmentOutput
    choice: PromptChoice
    position_before: PolicyPosition | None = None  # the policy's position before ``choice`` was taken
    generated: bool = False  # the policy counted it
    retracted: bool = False


class Lookahead:
    """The segments not yet delivered, oldest first."""

    def __init__(self) -> None:
        self._pending: deque[PendingSegment] = deque()

    def __len__(self) -> int:
        self._prune()
        return len(self._pending)

    def add(
        self,
        idx: int,
        state_before: ContinuationState | None,
        output: SegmentOutput,
        choice: PromptChoice,
        position_before: PolicyPosition | None = None,
    ) -> PendingSegment:
        """Track a segment whose generation starts now."""
        self._prune()
        pending = PendingSegment(idx, state_before, output, choice, position_before)
        self._pending.append(pending)
        return pending

    def take_back(self) -> list[PendingSegment]:
        """Retract every segment none of whose frames was delivered; oldest first (the first one's
        ``state_before`` is where the stream continues from)."""
        taken: list[PendingSegment] = []
        while self._pending and self._pending[-1].output.retract():
            pending = self._pending.pop()
            pending.retracted = True
            taken.append(pending)
        self._prune()
        taken.reverse()
        return taken

    def _prune(self) -> None:
        while self._pending and self._pending[0].output.delivered:
            self._pending.popleft()
