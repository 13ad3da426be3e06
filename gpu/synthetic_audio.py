"""The synthetic backend's sound: a prompt-dependent tone with sync clicks, measurable from outside.

The tone's pitch follows from the prompt and seed (as the colours do); its phase travels in the
continuation state, so a segment boundary or a prompt change never jumps the waveform. A short,
loud click starts exactly at the first sample of every segment's first frame and of every frame
whose stream frame number is a multiple of the fps: a receiver that finds click onsets and the
frame marker's segment starts can measure audio/video offset. Pure numpy.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Final

import numpy as np

from gpu.audio import AudioFormat, frame_sample_offset

__all__ = [
    "CLICK_AMPLITUDE",
    "CLICK_MS",
    "SYNTHETIC_AUDIO_FORMAT",
    "TONE_AMPLITUDE",
    "TONE_HZ_RANGE",
    "ToneRender",
    "click_frames",
    "render_tone",
    "tone_hz",
]

SYNTHETIC_AUDIO_FORMAT: Final = AudioFormat(sample_rate=48_000, channels=1)  # Opus's own rate: no resampling
TONE_HZ_RANGE: Final = (220.0, 880.0)  # two octaves, A3..A5
TONE_AMPLITUDE: Final = 0.15
CLICK_AMPLITUDE: Final = 0.9  # well above the tone: an onset is where |x| first crosses 0.5
CLICK_MS: Final = 6.0
CLICK_HZ: Final = 2_000.0  # a burst, not a DC step: codecs (Opus, AAC) keep it sharp


@dataclass(frozen=True)
class ToneRender:
    """One segment's audio and the tone phase (in cycles, ``[0, 1)``) the next segment starts from."""

    pcm: np.ndarray  # (samples, channels) float32
    next_phase: float


def tone_hz(prompt: str, seed: int) -> float:
    """The tone's pitch for a prompt and seed: stable across processes (no salted ``hash()``)."""
    digest = hashlib.blake2b(repr(("tone", seed, prompt)).encode("utf-8"), digest_size=8).digest()
    fraction = int.from_bytes(digest, "little") / 2**64
    low, high = TONE_HZ_RANGE
    return low * (high / low) ** fraction  # evenly spread in pitch, not in Hz


def click_frames(first_frame_number: int, num_frames: int, fps: int) -> list[int]:
    """Indices (within the segment) of the frames that start with a click: the first, and every frame
    whose stream frame number is a multiple of ``fps``."""
    return [i for i in range(num_frames) if i == 0 or (first_frame_number + i) % fps == 0]


def render_tone(
    *,
    prompt: str,
    seed: int,
    phase: float,
    first_frame_number: int,
    num_frames: int,
    fps: int,
    audio_format: AudioFormat = SYNTHETIC_AUDIO_FORMAT,
) -> ToneRender:
    """The audio of a segment of ``num_frames`` frames starting at stream frame ``first_frame_number``."""
    rate = audio_format.sample_rate
    samples = frame_sample_offset(num_frames, fps, rate)
    cycles_per_sample = tone_hz(prompt, seed) / rate
    cycles = phase + cycles_per_sample * np.arange(samples, dtype=np.float64)
    mono = (TONE_AMPLITUDE * np.sin(2 * math.pi * cycles)).astype(np.float32)
    click = _click(rate)
    for index in click_frames(first_frame_number, num_frames, fps):
        start = frame_sample_offset(index, fps, rate)
        stop = min(samples, start + len(click))
        mono[start:stop] = click[: stop - start]
    next_phase = (phase + cycles_per_sample * samples) % 1.0
    pcm = np.repeat(mono[:, None], audio_format.channels, axis=1)
    return ToneRender(pcm=np.ascontiguousarray(pcm), next_phase=float(next_phase))


def _click(rate: int) -> np.ndarray:
    length = max(1, round(rate * CLICK_MS / 1000.0))
    t = np.arange(length, dtype=np.float64) / rate
    # Starts at its peak (cosine): the onset is the click's first sample, not a quarter period later.
    return (CLICK_AMPLITUDE * np.cos(2 * math.pi * CLICK_HZ * t)).astype(np.float32)
