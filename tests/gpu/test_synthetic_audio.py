"""The synthetic backend's sound: pitch from the prompt, clicks at segment starts and whole seconds."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from gpu.generator import ContinuationState, IncompatibleStateError, SegmentRequest
from gpu.synthetic import SyntheticGenerator
from gpu.synthetic_audio import CLICK_AMPLITUDE, SYNTHETIC_AUDIO_FORMAT, TONE_AMPLITUDE, click_frames, tone_hz

REQUEST = SegmentRequest(prompt="a red fox in snow", width=64, height=48, num_frames=30, fps=24, num_inference_steps=1)
SAMPLES_PER_FRAME = 2000  # 48 kHz at 24 fps


def onsets(pcm: np.ndarray) -> list[int]:
    """Sample indices where |x| first rises above half scale after a quiet stretch."""
    loud = np.abs(pcm[:, 0]) > 0.5
    found, quiet_since = [], 0
    for index in np.flatnonzero(loud):
        if not found or index - quiet_since > 500:
            found.append(int(index))
        quiet_since = int(index)
    return found


def dominant_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm[:, 0] * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * rate / len(pcm))


def test_every_frame_comes_with_exactly_its_samples() -> None:
    generator = SyntheticGenerator()
    assert generator.audio_format == SYNTHETIC_AUDIO_FORMAT
    sizes: list[int] = []
    result = generator.generate(REQUEST, on_frames=lambda chunk, audio: sizes.append(0 if audio is None else len(audio)))
    assert sizes == [SAMPLES_PER_FRAME] * 30
    assert result.audio is not None and result.audio.shape == (30 * SAMPLES_PER_FRAME, 1)
    assert result.audio.dtype == np.float32 and np.abs(result.audio).max() <= 1.0


def test_clicks_start_on_the_first_frame_and_on_every_whole_second_of_the_stream() -> None:
    generator = SyntheticGenerator()
    first = generator.generate(REQUEST)
    second = generator.generate(replace(REQUEST, segment_idx=1, continuation=first.continuation))
    assert first.audio is not None and second.audio is not None
    # Stream frames 0..29 then 30..59: clicks at 0 and 24, then at 30 (segment start) and 48.
    assert onsets(first.audio) == [0, 24 * SAMPLES_PER_FRAME]
    assert onsets(second.audio) == [0, (48 - 30) * SAMPLES_PER_FRAME]
    assert click_frames(30, 30, 24) == [0, 18]
    assert np.abs(first.audio[0, 0]) == pytest.approx(CLICK_AMPLITUDE)


def test_the_pitch_follows_the_prompt_and_the_tone_continues_across_segments_without_a_jump() -> None:
    generator = SyntheticGenerator()
    fox = generator.generate(REQUEST)
    owl = generator.generate(replace(REQUEST, prompt="an owl at night", segment_idx=1, continuation=fox.continuation))
    assert fox.audio is not None and owl.audio is not None
    assert tone_hz("a red fox in snow", 0) != tone_hz("an owl at night", 0)
    tail = fox.audio[6000:24 * SAMPLES_PER_FRAME]  # between clicks: the tone alone
    assert dominant_hz(tail, 48_000) == pytest.approx(tone_hz(REQUEST.prompt, 0), abs=3.0)
    # The phase travels in the state: the new tone starts where the old one left off.
    phase = owl.continuation.payload["tone_phase"]
    assert 0.0 <= phase < 1.0
    continued = generator.generate(replace(REQUEST, segment_idx=1, continuation=fox.continuation))
    assert continued.audio is not None
    last, following = fox.audio[-1, 0], continued.audio[300, 0]  # sample 300 is past the click
    assert abs(last) <= TONE_AMPLITUDE + 1e-6 and abs(following) <= TONE_AMPLITUDE + 1e-6


def test_audio_off_makes_a_silent_backend() -> None:
    generator = SyntheticGenerator(audio=False)
    assert generator.audio_format is None
    seen: list[object] = []
    result = generator.generate(REQUEST, on_frames=lambda chunk, audio: seen.append(audio))
    assert seen == [None] * 30 and result.audio is None


def test_states_without_a_tone_phase_still_continue_and_a_bad_phase_is_refused() -> None:
    generator = SyntheticGenerator()
    state = generator.generate(REQUEST).continuation
    older = ContinuationState(state.kind, {k: v for k, v in state.payload.items() if k != "tone_phase"})
    generator.check_state(older)
    for bad in (1.0, -0.1, "0.5", float("nan")):
        with pytest.raises(IncompatibleStateError, match="tone_phase"):
            generator.check_state(ContinuationState(state.kind, {**state.payload, "tone_phase": bad}))
