"""Helpers of the generator contract: every frame through on_frames once, and empty results."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gpu.generator import (
    FrameCallback,
    GeneratorError,
    SegmentRequest,
    SegmentResult,
    StepCallback,
    empty_frames,
    generate_streaming,
)
from gpu.synthetic import SyntheticGenerator
from gpu.synthetic_audio import SYNTHETIC_AUDIO_FORMAT

REQUEST = SegmentRequest(prompt="a red fox", width=64, height=48, num_frames=5, num_inference_steps=1)


class _Partial:
    """Hands over the first ``handed`` frames (or too many), then returns them all."""

    name = "partial"
    audio_format = SYNTHETIC_AUDIO_FORMAT

    def __init__(self, handed: int) -> None:
        self._handed = handed

    def generate(
        self,
        request: SegmentRequest,
        on_step: StepCallback | None = None,
        on_frames: FrameCallback | None = None,
    ) -> SegmentResult:
        result = SyntheticGenerator().generate(request, on_step)
        if on_frames is not None and self._handed:
            frames = result.frames
            audio = result.audio
            assert audio is not None
            on_frames(np.concatenate([frames, frames])[: self._handed], audio[: 2000 * self._handed])
        return result

    def check_state(self, state: Any) -> None: ...

    def close(self) -> None: ...


def test_empty_frames_have_the_request_size() -> None:
    frames = empty_frames(REQUEST)
    assert frames.shape == (0, 48, 64, 3) and frames.dtype == np.uint8


def test_a_backend_that_hands_every_frame_over_is_passed_through() -> None:
    chunks: list[np.ndarray] = []
    sounds: list[np.ndarray | None] = []

    def on_frames(chunk: np.ndarray, audio: np.ndarray | None) -> None:
        chunks.append(chunk)
        sounds.append(audio)

    result = generate_streaming(SyntheticGenerator(), REQUEST, None, on_frames)
    assert [chunk.shape[0] for chunk in chunks] == [1] * 5
    np.testing.assert_array_equal(np.concatenate(chunks), result.frames)
    assert all(sound is not None and sound.shape == (2000, 1) for sound in sounds)
    assert result.audio is not None
    np.testing.assert_array_equal(np.concatenate([s for s in sounds if s is not None]), result.audio)


@pytest.mark.parametrize("handed", [0, 2])
def test_frames_a_backend_kept_back_are_handed_over_after_it_returns_with_their_audio(handed: int) -> None:
    chunks: list[np.ndarray] = []
    sounds: list[np.ndarray] = []

    def on_frames(chunk: np.ndarray, audio: np.ndarray | None) -> None:
        assert audio is not None and len(audio) == 2000 * len(chunk)
        chunks.append(chunk)
        sounds.append(audio)

    result = generate_streaming(_Partial(handed), REQUEST, None, on_frames)
    np.testing.assert_array_equal(np.concatenate(chunks), result.frames)
    assert sum(chunk.shape[0] for chunk in chunks) == 5
    assert result.audio is not None
    np.testing.assert_array_equal(np.concatenate(sounds), result.audio)


def test_more_frames_handed_over_than_returned_is_a_generator_error() -> None:
    with pytest.raises(GeneratorError, match="handed over 7 frames but returned 5"):
        generate_streaming(_Partial(7), REQUEST, None, lambda chunk, audio=None: None)
