"""The generator contract: what every video backend takes and returns.

Pure data types and a Protocol; no I/O. Frames are ``uint8`` arrays of shape
``(num_frames, height, width, 3)`` in RGB order. A backend with sound (``audio_format``
not None) makes PCM with them, ``float32`` ``(samples, channels)``, each chunk's audio
covering exactly its frames (gpu/audio.py). A backend hands frames over in chunks as it
makes them (``on_frames``), so the first frame of a segment can be on its way to the
viewer before the last one exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeGuard, runtime_checkable

import numpy as np

from gpu.audio import AudioFormat, frame_sample_offset

__all__ = [
    "MAX_STATE_COUNTER",
    "ContinuationState",
    "FrameCallback",
    "Generator",
    "GeneratorError",
    "IncompatibleStateError",
    "SegmentCancelled",
    "SegmentRequest",
    "SegmentResult",
    "StepCallback",
    "audio_span",
    "check_segment_limits",
    "empty_frames",
    "generate_streaming",
    "is_finite_number",
    "is_state_counter",
    "quote_state_value",
]

MAX_FRAME_EDGE_PX = 4096  # largest frame width or height any backend accepts
MAX_FRAMES_PER_SEGMENT = 1024
MAX_STEPS = 1000
# segment_idx and frame_number of a continuation state: years of video below it, and far from any
# overflow when a state from a client or a store is continued (or printed: a 5 000-digit int cannot
# even be formatted).
MAX_STATE_COUNTER = 2**31 - 1
_QUOTE_CHARS = 40  # what an error message quotes of a state's content

StepCallback = Callable[[int, int], None]
"""Called as ``on_step(step, total_steps)`` after each denoising step (1-based)."""

FrameCallback = Callable[[np.ndarray, np.ndarray | None], None]
"""Called as ``on_frames(chunk, audio)`` with ``(n, H, W, 3)`` uint8 RGB frames, in order, as they are made.

``audio`` is the chunk's sound, ``(samples, channels)`` float32 owning exactly those frames
(gpu/audio.py), or None from a backend without sound. Either array may be a view into the
backend's own segment arrays. Neither side modifies them afterwards: the backend hands over what
it is done with, so a receiver may keep them without copying."""


class GeneratorError(RuntimeError):
    """A backend failed to build or to generate a segment."""


class IncompatibleStateError(GeneratorError):
    """A continuation state of the wrong kind, or with a corrupt payload."""


class SegmentCancelled(Exception):
    """Raised by an ``on_step`` / ``on_frames`` callback to abandon the segment; backends let it through."""


@dataclass(frozen=True)
class ContinuationState:
    """Where a stream left off: ``kind`` names the generator family and version."""

    kind: str
    payload: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "payload": self.payload}


@dataclass(frozen=True, kw_only=True)
class SegmentRequest:
    """Everything a backend needs to produce one segment."""

    prompt: str
    negative_prompt: str | None = None
    seed: int = 0
    num_inference_steps: int = 4
    guidance_scale: float = 1.0
    width: int = 512
    height: int = 512
    num_frames: int = 24
    fps: int = 24
    segment_idx: int = 0
    init_image_path: str | None = None
    continuation: ContinuationState | None = None


@dataclass(frozen=True)
class SegmentResult:
    """Frames of one segment, ``(N, H, W, 3)`` uint8 RGB, the audio of exactly those frames (None
    without sound), and the state to continue from. Pools leave out what went through ``on_frames``."""

    frames: np.ndarray
    continuation: ContinuationState
    audio: np.ndarray | None = None


def is_finite_number(value: object) -> TypeGuard[int | float]:
    """An int or float (never a bool) that is finite: what a numeric option or state value must be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_state_counter(value: object) -> bool:
    """Whether ``value`` is a usable segment_idx / frame_number of a continuation state."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_STATE_COUNTER


def quote_state_value(value: object) -> str:
    """A short, always-formattable rendering of a state value for an error message."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an int of {value.bit_length()} bits"
    if isinstance(value, (list, tuple, dict, str)) and len(value) > _QUOTE_CHARS:
        return f"a {type(value).__name__} of length {len(value)}"
    text = repr(value)
    return text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS] + "..."


def check_segment_limits(request: SegmentRequest) -> None:
    """GeneratorError when a request's index, frame count or step count is out of range (shared by backends)."""
    if request.segment_idx < 0:
        raise GeneratorError(f"segment_idx must be non-negative, got {request.segment_idx}")
    if not 1 <= request.num_frames <= MAX_FRAMES_PER_SEGMENT:
        raise GeneratorError(f"num_frames {request.num_frames} outside 1..{MAX_FRAMES_PER_SEGMENT}")
    if not 1 <= request.num_inference_steps <= MAX_STEPS:
        raise GeneratorError(f"num_inference_steps {request.num_inference_steps} outside 1..{MAX_STEPS}")


@runtime_checkable
class Generator(Protocol):
    """A video backend. ``generate`` blocks (GPU or CPU work); callers run it off the event loop."""

    @property
    def name(self) -> str: ...

    @property
    def audio_format(self) -> AudioFormat | None:
        """The format of the audio every segment comes with; None for a backend without sound."""
        ...

    def generate(
        self,
        request: SegmentRequest,
        on_step: StepCallback | None = None,
        on_frames: FrameCallback | None = None,
    ) -> SegmentResult:
        """Generate one segment. With ``on_frames``, every frame of the result (with its audio) also
        goes through it exactly once, in order, before ``generate`` returns: as soon as each chunk
        exists, or all at once for a backend that only has them at the end. A callback raising
        SegmentCancelled ends the segment early with that exception."""
        ...

    def check_state(self, state: ContinuationState) -> None:
        """Raise IncompatibleStateError if ``state`` cannot be continued from (cheap: no generation)."""
        ...

    def close(self) -> None: ...


def empty_frames(request: SegmentRequest) -> np.ndarray:
    """A ``(0, H, W, 3)`` uint8 array: the frames of a result whose frames all went through ``on_frames``."""
    return np.empty((0, request.height, request.width, 3), dtype=np.uint8)


def generate_streaming(
    generator: Generator,
    request: SegmentRequest,
    on_step: StepCallback | None,
    on_frames: FrameCallback,
) -> SegmentResult:
    """``generator.generate`` with every frame of the result handed to ``on_frames`` exactly once, in order.

    Frames a backend returned without handing them over (one that only has them at the end and does
    not call ``on_frames``) go through ``on_frames`` after it returns, with the part of the result's
    audio they own; more frames handed over than returned is a GeneratorError.
    """
    handed = 0

    def counting(chunk: np.ndarray, audio: np.ndarray | None) -> None:
        nonlocal handed
        on_frames(chunk, audio)
        handed += chunk.shape[0]

    result = generator.generate(request, on_step, counting)
    made = result.frames.shape[0]
    if handed > made:
        raise GeneratorError(f"{generator.name} handed over {handed} frames but returned {made}")
    if handed < made:
        audio_format = generator.audio_format
        rest = None
        if result.audio is not None and audio_format is not None:
            rest = result.audio[audio_span(request, audio_format, handed, made - handed)]
        on_frames(result.frames[handed:], rest)
    return result


def audio_span(request: SegmentRequest, audio_format: AudioFormat | None, first: int, count: int) -> slice:
    """The samples of a segment's audio that frames ``first .. first + count - 1`` own."""
    if audio_format is None:
        return slice(0, 0)
    start = frame_sample_offset(first, request.fps, audio_format.sample_rate)
    return slice(start, frame_sample_offset(first + count, request.fps, audio_format.sample_rate))
