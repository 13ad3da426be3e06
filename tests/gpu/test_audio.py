"""Audio that travels with frames: formats, which samples each frame owns, PCM normalisation, slots."""

from __future__ import annotations

import numpy as np
import pytest

from gpu.audio import (
    AudioFormat,
    AudioFormatError,
    as_pcm,
    frame_sample_offset,
    samples_for_frames,
    silence,
    split_by_frames,
)
from gpu.frame_slots import FrameSlots


def test_frames_own_consecutive_sample_spans_that_add_up_to_the_segment_exactly() -> None:
    # 44.1 kHz at 24 fps is 1837.5 samples a frame: spans alternate and never drift.
    spans = [samples_for_frames(i, 1, 24, 44_100) for i in range(48)]
    assert set(spans) == {1837, 1838}
    assert sum(spans) == 2 * 44_100
    assert frame_sample_offset(24, 24, 44_100) == 44_100


def test_split_by_frames_cuts_audio_at_the_frames_own_offsets() -> None:
    pcm = np.arange(frame_sample_offset(10, 24, 44_100) - frame_sample_offset(3, 24, 44_100), dtype=np.float32)
    parts = split_by_frames(pcm, 3, [2, 5], 24, 44_100)
    assert [len(part) for part in parts] == [samples_for_frames(3, 2, 24, 44_100), samples_for_frames(5, 5, 24, 44_100)]
    np.testing.assert_array_equal(np.concatenate(parts), pcm)


@pytest.mark.parametrize(("rate", "channels"), [(7_999, 1), (192_001, 1), (48_000, 0), (48_000, 3)])
def test_formats_the_transports_cannot_carry_are_refused(rate: int, channels: int) -> None:
    with pytest.raises(AudioFormatError):
        AudioFormat(sample_rate=rate, channels=channels)


def test_int16_and_mono_vectors_become_float32_columns() -> None:
    mono = AudioFormat(48_000, 1)
    pcm = as_pcm(np.array([0, 16384, -32768], dtype=np.int16), mono)
    assert pcm.dtype == np.float32 and pcm.shape == (3, 1)
    np.testing.assert_allclose(pcm[:, 0], [0.0, 0.5, -1.0])


def test_floats_are_clipped_and_nan_becomes_silence() -> None:
    stereo = AudioFormat(24_000, 2)
    pcm = as_pcm(np.array([[2.0, -3.0], [np.nan, 0.25]]), stereo)
    np.testing.assert_array_equal(pcm, np.array([[1.0, -1.0], [0.0, 0.25]], dtype=np.float32))


@pytest.mark.parametrize(
    ("samples", "match"),
    [
        (np.zeros((4, 2), np.float32), r"shape \(n, 1\)"),
        (np.zeros(4, np.int32), "int16 or float"),
        ([0.0, 0.1], "numpy array"),
    ],
)
def test_pcm_of_the_wrong_shape_or_type_is_refused(samples: object, match: str) -> None:
    with pytest.raises(AudioFormatError, match=match):
        as_pcm(samples, AudioFormat(48_000, 1))


def test_a_length_other_than_the_frames_own_is_refused() -> None:
    with pytest.raises(AudioFormatError, match="2000 samples"):
        as_pcm(np.zeros((1999, 1), np.float32), AudioFormat(48_000, 1), expected=2000)


def test_silence_has_the_format_shape() -> None:
    assert silence(5, AudioFormat(48_000, 2)).shape == (5, 2)


def test_a_slot_carries_frames_and_their_audio_and_refuses_what_does_not_fit() -> None:
    slots = FrameSlots.create(count=1, slot_bytes=3 * 4 * 4 * 3 + 16 + 100 * 4)
    try:
        frames = np.arange(3 * 4 * 4 * 3, dtype=np.uint8).reshape(3, 4, 4, 3)
        audio = np.linspace(-1, 1, 100, dtype=np.float32).reshape(100, 1)
        got_frames, got_audio = slots.read(slots.write(0, frames, audio))
        np.testing.assert_array_equal(got_frames, frames)
        assert got_audio is not None
        np.testing.assert_array_equal(got_audio, audio)
        only_frames, no_audio = slots.read(slots.write(0, frames))
        np.testing.assert_array_equal(only_frames, frames)
        assert no_audio is None
        with pytest.raises(ValueError, match="do not fit"):
            slots.write(0, frames, np.zeros((slots.slot_bytes // 4, 1), np.float32))  # the block is page-rounded
        with pytest.raises(ValueError, match="float32"):
            slots.write(0, frames, np.zeros((10, 1), np.float64))
    finally:
        slots.close()
