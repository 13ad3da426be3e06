"""PCM audio that travels with a segment's frames: its format, and which samples belong to which frame.

Audio leaves a backend as C-contiguous ``float32`` arrays of shape ``(samples, channels)`` in
``[-1, 1]``, each covering exactly the frames it comes with. Frame ``i`` of a segment owns samples
``[frame_sample_offset(i), frame_sample_offset(i + 1))``: at rates that are no multiple of the fps
(44 100 Hz at 24 fps) frames get 1837 or 1838 samples, and a segment's audio still lasts exactly as
long as its frames. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

__all__ = [
    "MAX_CHANNELS",
    "SAMPLE_RATE_RANGE",
    "AudioFormat",
    "AudioFormatError",
    "as_pcm",
    "frame_sample_offset",
    "samples_for_frames",
    "silence",
    "split_by_frames",
]

SAMPLE_RATE_RANGE: Final = (8_000, 192_000)
MAX_CHANNELS: Final = 2  # mono or stereo: what Opus in WebRTC and AAC-LC in MSE both carry everywhere
_INT16_SCALE: Final = 32768.0


class AudioFormatError(ValueError):
    """PCM of an unexpected shape, type or length, or a format outside what the transports carry."""


@dataclass(frozen=True)
class AudioFormat:
    """Sample rate (Hz) and channel count (1 or 2) of a backend's audio."""

    sample_rate: int
    channels: int

    def __post_init__(self) -> None:
        low, high = SAMPLE_RATE_RANGE
        if isinstance(self.sample_rate, bool) or not isinstance(self.sample_rate, int) or not low <= self.sample_rate <= high:
            raise AudioFormatError(f"sample_rate must be an int in {low}..{high} Hz, got {self.sample_rate!r}")
        if isinstance(self.channels, bool) or self.channels not in range(1, MAX_CHANNELS + 1):
            raise AudioFormatError(f"channels must be 1 or 2, got {self.channels!r}")


def frame_sample_offset(frame: int, fps: int, sample_rate: int) -> int:
    """Samples of a segment before its frame ``frame`` (frame ``i`` owns ``[offset(i), offset(i + 1))``)."""
    return frame * sample_rate // fps


def samples_for_frames(first: int, count: int, fps: int, sample_rate: int) -> int:
    """How many samples frames ``first .. first + count - 1`` of a segment own."""
    return frame_sample_offset(first + count, fps, sample_rate) - frame_sample_offset(first, fps, sample_rate)


def split_by_frames(pcm: np.ndarray, first: int, counts: list[int], fps: int, sample_rate: int) -> list[np.ndarray]:
    """``pcm`` (owned by frames from ``first`` on) cut into the audio of consecutive runs of ``counts`` frames."""
    parts: list[np.ndarray] = []
    base = frame_sample_offset(first, fps, sample_rate)
    frame = first
    for count in counts:
        start = frame_sample_offset(frame, fps, sample_rate) - base
        stop = frame_sample_offset(frame + count, fps, sample_rate) - base
        parts.append(pcm[start:stop])
        frame += count
    return parts


def silence(samples: int, audio_format: AudioFormat) -> np.ndarray:
    """``samples`` samples of silence in ``audio_format``."""
    return np.zeros((samples, audio_format.channels), dtype=np.float32)


def as_pcm(samples: object, audio_format: AudioFormat, *, expected: int | None = None) -> np.ndarray:
    """``(n, channels)`` float32 PCM in ``[-1, 1]`` from int16 or float samples.

    Accepts ``(n, channels)``, or ``(n,)`` for mono; int16 is scaled by 1/32768, floats are clipped
    (NaN becomes silence). With ``expected``, a length other than ``expected`` is an AudioFormatError.
    """
    if not isinstance(samples, np.ndarray):
        raise AudioFormatError(f"audio must be a numpy array, got {type(samples).__name__}")
    array = samples[:, None] if samples.ndim == 1 and audio_format.channels == 1 else samples
    if array.ndim != 2 or array.shape[1] != audio_format.channels:
        raise AudioFormatError(f"audio must have shape (n, {audio_format.channels}), got {samples.shape}")
    if expected is not None and array.shape[0] != expected:
        raise AudioFormatError(f"audio must hold {expected} samples for its frames, got {array.shape[0]}")
    if array.dtype == np.int16:
        pcm = array.astype(np.float32) / np.float32(_INT16_SCALE)
    elif array.dtype in (np.float32, np.float64, np.float16):
        pcm = np.nan_to_num(array.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=-1.0)
        pcm = np.clip(pcm, -1.0, 1.0)
    else:
        raise AudioFormatError(f"audio must be int16 or float, got {array.dtype}")
    return np.ascontiguousarray(pcm, dtype=np.float32)
