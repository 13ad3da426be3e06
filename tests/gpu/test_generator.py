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

REQUEST = SegmentRequest(prompt="a red fox", width=64, height=48, num_frames=5, num_inference_steps=1)


class _Partial:
    """Hands over the first ``handed`` frames (or too many), then returns them all."""

    name = "partial"

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
            on_frames(np.concatenate([frames, frames])[: self._handed])
        return result

    def check_state(self, state: Any) -> None: ...

    def close(self) -> None: ...


def test_empty_frames_have_the_request_size() -> None:
    frames = empty_frames(REQUEST)
    assert frames.shape == (0, 48, 64, 3) and frames.dtype == np.uint8


def test_a_backend_that_hands_every_frame_over_is_passed_through() -> None:
    chunks: list[np.ndarray] = []
    result = generate_streaming(SyntheticGenerator(), REQUEST, None, chunks.append)
    assert [chunk.shape[0] for chunk in chunks] == [1] * 5
    np.testing.assert_array_equal(np.concatenate(chunks), result.frames)


@pytest.mark.parametrize("handed", [0, 2])
def test_frames_a_backend_kept_back_are_handed_over_after_it_returns(handed: int) -> None:
    chunks: list[np.ndarray] = []
    result = generate_streaming(_Partial(handed), REQUEST, None, chunks.append)
    np.testing.assert_array_equal(np.concatenate(chunks), result.frames)
    assert sum(chunk.shape[0] for chunk in chunks) == 5


def test_more_frames_handed_over_than_returned_is_a_generator_error() -> None:
    with pytest.raises(GeneratorError, match="handed over 7 frames but returned 5"):
        generate_streaming(_Partial(7), REQUEST, None, lambda chunk: None)
