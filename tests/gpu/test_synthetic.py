"""The synthetic generator: prompt-dependent look, continuous motion, state checks, progress."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from gpu.frame_marker import FrameMarker, marker_region, prompt_tag, read_marker
from gpu.generator import (
    MAX_STATE_COUNTER,
    ContinuationState,
    Generator,
    GeneratorError,
    IncompatibleStateError,
    SegmentCancelled,
    SegmentRequest,
)
from gpu.synthetic import STATE_KIND, SyntheticGenerator

SIZE_PX = 256
FRAMES = 8
PROMPT = "a red fox running through snow"
TAG = prompt_tag(PROMPT)
CAPTION_ROWS = 12  # bottom rows that lie inside the caption band at SIZE_PX (the band is 15 rows)


def _request(prompt: str = PROMPT, **changes: Any) -> SegmentRequest:
    fields: dict[str, Any] = {"width": SIZE_PX, "height": SIZE_PX, "num_frames": FRAMES}
    fields.update(changes)
    return SegmentRequest(prompt=prompt, **fields)


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _caption_band(frame: np.ndarray) -> np.ndarray:
    return frame[-CAPTION_ROWS:]


@pytest.fixture
def generator() -> SyntheticGenerator:
    return SyntheticGenerator()


def test_synthetic_generator_satisfies_the_protocol(generator: SyntheticGenerator) -> None:
    assert isinstance(generator, Generator)
    assert generator.name == "synthetic"


def test_frames_have_the_requested_shape_dtype_and_layout(generator: SyntheticGenerator) -> None:
    frames = generator.generate(_request(width=320, height=192, num_frames=5)).frames
    assert frames.shape == (5, 192, 320, 3)
    assert frames.dtype == np.uint8
    assert frames.flags.c_contiguous


def test_same_request_gives_identical_frames_across_instances() -> None:
    first = SyntheticGenerator().generate(_request(seed=3))
    second = SyntheticGenerator().generate(_request(seed=3))
    np.testing.assert_array_equal(first.frames, second.frames)
    assert first.continuation == second.continuation


@pytest.mark.parametrize(
    "other_prompt", ["ocean waves at sunset", "a city street at night in the rain", "abstract neon shapes"]
)
def test_different_prompts_give_visibly_different_frames(
    generator: SyntheticGenerator, other_prompt: str
) -> None:
    base = generator.generate(_request()).frames[0]
    other = generator.generate(_request(other_prompt)).frames[0]
    assert _mean_abs_diff(base, other) > 20


def test_different_seeds_give_different_frames(generator: SyntheticGenerator) -> None:
    first = generator.generate(_request(seed=1)).frames[0]
    second = generator.generate(_request(seed=2)).frames[0]
    assert _mean_abs_diff(first, second) > 20


def test_first_segment_starts_at_the_requested_segment_index_and_frame_zero(
    generator: SyntheticGenerator,
) -> None:
    result = generator.generate(_request(segment_idx=7))
    assert result.continuation.kind == STATE_KIND
    assert result.continuation.payload["segment_idx"] == 8
    assert result.continuation.payload["frame_number"] == FRAMES


def test_every_frame_carries_its_marker(generator: SyntheticGenerator) -> None:
    first = generator.generate(_request(segment_idx=4))
    second = generator.generate(_request(segment_idx=99, continuation=first.continuation))
    markers = [read_marker(frame) for frame in np.concatenate([first.frames, second.frames])]
    expected = [FrameMarker(4, n, TAG) for n in range(FRAMES)] + [
        FrameMarker(5, FRAMES + n, TAG) for n in range(FRAMES)
    ]
    assert markers == expected


def test_small_frames_carry_a_marker_and_no_caption(generator: SyntheticGenerator) -> None:
    frames = generator.generate(_request(width=32, height=32, num_frames=2)).frames
    assert [read_marker(frame) for frame in frames] == [FrameMarker(0, 0, TAG), FrameMarker(0, 1, TAG)]


def test_continuation_state_survives_json_and_the_state_wins_over_the_request(
    generator: SyntheticGenerator,
) -> None:
    first = generator.generate(_request(segment_idx=2))
    wire = json.loads(json.dumps(first.continuation.to_wire()))
    state = ContinuationState(kind=wire["kind"], payload=wire["payload"])
    second = generator.generate(_request(segment_idx=50, continuation=state))
    assert second.continuation.payload["segment_idx"] == 4
    assert second.continuation.payload["frame_number"] == 2 * FRAMES
    assert read_marker(second.frames[0]) == FrameMarker(3, FRAMES, TAG)


def test_motion_is_continuous_across_segments(generator: SyntheticGenerator) -> None:
    first = generator.generate(_request())
    second = generator.generate(_request(continuation=first.continuation))
    other_prompt = generator.generate(_request("ocean waves at sunset")).frames[0]
    seam = _mean_abs_diff(first.frames[-1], second.frames[0])
    assert seam < 10
    assert seam < _mean_abs_diff(first.frames[-1], other_prompt) / 4


def test_prompt_change_keeps_positions_and_changes_colours(generator: SyntheticGenerator) -> None:
    first = generator.generate(_request())
    same = generator.generate(_request(continuation=first.continuation))
    changed = generator.generate(_request("ocean waves at sunset", continuation=first.continuation))
    assert changed.continuation.payload["shapes"] == same.continuation.payload["shapes"]
    assert _mean_abs_diff(same.frames[0], changed.frames[0]) > 20


def test_state_of_another_kind_is_incompatible(generator: SyntheticGenerator) -> None:
    state = ContinuationState(kind="ltx.v1", payload={"segment_idx": 1, "frame_number": 8})
    with pytest.raises(IncompatibleStateError, match=r"ltx\.v1"):
        generator.generate(_request(continuation=state))


def _valid_payload(generator: SyntheticGenerator) -> dict[str, Any]:
    return dict(generator.generate(_request(num_frames=1)).continuation.payload)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda p: {k: v for k, v in p.items() if k != "shapes"},
        lambda p: {**p, "segment_idx": "3"},
        lambda p: {**p, "segment_idx": True},
        lambda p: {**p, "frame_number": -1},
        lambda p: {**p, "shapes": p["shapes"][:-1]},
        lambda p: {**p, "shapes": "not a list"},
        lambda p: {**p, "shapes": [[0.5, 0.5, 0.01]] * len(p["shapes"])},
        lambda p: {**p, "shapes": [[float("nan"), 0.5, 0.01, 0.01]] * len(p["shapes"])},
        lambda p: {**p, "shapes": [[1.5, 0.5, 0.01, 0.01]] * len(p["shapes"])},
        lambda p: {**p, "shapes": [["a", 0.5, 0.01, 0.01]] * len(p["shapes"])},
    ],
)
def test_corrupt_payload_is_incompatible(generator: SyntheticGenerator, corrupt: Any) -> None:
    state = ContinuationState(kind=STATE_KIND, payload=corrupt(_valid_payload(generator)))
    with pytest.raises(IncompatibleStateError, match=STATE_KIND):
        generator.generate(_request(continuation=state))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("segment_idx", MAX_STATE_COUNTER + 1),
        ("segment_idx", 2**70),
        ("frame_number", 2**70),
        ("frame_number", 10**5000),  # too long even to print under sys.set_int_max_str_digits
    ],
    ids=["segment-2**31", "segment-2**70", "frame-2**70", "frame-10**5000"],
)
def test_state_counters_beyond_2_31_are_incompatible_with_a_short_message(
    generator: SyntheticGenerator, key: str, value: int
) -> None:
    state = ContinuationState(kind=STATE_KIND, payload={**_valid_payload(generator), key: value})
    with pytest.raises(IncompatibleStateError) as info:
        generator.check_state(state)
    assert f"ints in 0..{MAX_STATE_COUNTER}" in str(info.value)
    assert len(str(info.value)) < 200


def test_a_state_at_the_counter_bound_still_continues(generator: SyntheticGenerator) -> None:
    payload = {**_valid_payload(generator), "segment_idx": MAX_STATE_COUNTER, "frame_number": MAX_STATE_COUNTER}
    result = generator.generate(_request(num_frames=2, continuation=ContinuationState(STATE_KIND, payload)))
    assert result.frames.shape == (2, SIZE_PX, SIZE_PX, 3)
    assert result.continuation.payload["segment_idx"] == MAX_STATE_COUNTER + 1


def test_a_huge_shape_slot_is_quoted_short(generator: SyntheticGenerator) -> None:
    payload = _valid_payload(generator)
    payload["shapes"] = [[0.5] * 100_000] * len(payload["shapes"])
    with pytest.raises(IncompatibleStateError) as info:
        generator.check_state(ContinuationState(STATE_KIND, payload))
    assert str(info.value).endswith("got a list of length 100000")


@pytest.mark.parametrize(("steps", "num_frames"), [(4, 8), (1, 3), (6, 2)])
def test_on_step_is_called_once_per_inference_step(
    generator: SyntheticGenerator, steps: int, num_frames: int
) -> None:
    calls: list[tuple[int, int]] = []
    generator.generate(
        _request(num_inference_steps=steps, num_frames=num_frames),
        lambda step, total: calls.append((step, total)),
    )
    assert calls == [(step, steps) for step in range(1, steps + 1)]


def test_marker_tags_each_frame_with_its_prompt(generator: SyntheticGenerator) -> None:
    first = generator.generate(_request(num_frames=2))
    other = generator.generate(_request("ocean waves at sunset", num_frames=2, continuation=first.continuation))
    assert {read_marker(frame).prompt_tag for frame in first.frames} == {TAG}  # type: ignore[union-attr]
    assert [read_marker(frame) for frame in other.frames] == [
        FrameMarker(1, 2 + n, prompt_tag("ocean waves at sunset")) for n in range(2)
    ]
    assert prompt_tag("ocean waves at sunset") != TAG


def test_all_steps_come_before_the_first_frame_and_frames_arrive_one_by_one(
    generator: SyntheticGenerator,
) -> None:
    events: list[str] = []
    chunks: list[np.ndarray] = []

    def on_frames(chunk: np.ndarray, audio: np.ndarray | None = None) -> None:
        events.append("frames")
        chunks.append(chunk.copy())

    result = generator.generate(
        _request(num_inference_steps=3), lambda step, total: events.append(f"step {step}/{total}"), on_frames
    )
    assert events == ["step 1/3", "step 2/3", "step 3/3"] + ["frames"] * FRAMES
    assert [chunk.shape for chunk in chunks] == [(1, SIZE_PX, SIZE_PX, 3)] * FRAMES
    np.testing.assert_array_equal(np.concatenate(chunks), result.frames)


def test_handing_frames_over_leaves_the_result_unchanged(generator: SyntheticGenerator) -> None:
    plain = generator.generate(_request(seed=4))
    streamed = generator.generate(_request(seed=4), on_frames=lambda chunk, audio=None: None)
    np.testing.assert_array_equal(plain.frames, streamed.frames)
    assert plain.continuation == streamed.continuation


def test_each_frame_is_handed_over_as_a_view_as_soon_as_it_is_rendered(generator: SyntheticGenerator) -> None:
    markers_at_handover: list[list[FrameMarker | None]] = []

    def on_frames(chunk: np.ndarray, audio: np.ndarray | None = None) -> None:
        # The chunk is a view into the segment array: every frame rendered so far is visible through it.
        segment = chunk.base
        assert isinstance(segment, np.ndarray) and segment.shape[0] == FRAMES
        handed = len(markers_at_handover) + 1
        markers_at_handover.append([read_marker(frame) for frame in segment[:handed]])

    generator.generate(_request(num_frames=FRAMES), on_frames=on_frames)
    assert [len(seen) for seen in markers_at_handover] == list(range(1, FRAMES + 1))
    assert markers_at_handover[0] == [FrameMarker(0, 0, TAG)]


@pytest.mark.parametrize("where", ["on_step", "on_frames"])
def test_segment_cancelled_from_a_callback_ends_the_segment_with_it(
    generator: SyntheticGenerator, where: str
) -> None:
    handed: list[int] = []

    def on_step(step: int, total: int) -> None:
        if where == "on_step" and step == 2:
            raise SegmentCancelled("stop at step 2")

    def on_frames(chunk: np.ndarray, audio: np.ndarray | None = None) -> None:
        handed.append(chunk.shape[0])
        if where == "on_frames":
            raise SegmentCancelled("stop at the first frame")

    with pytest.raises(SegmentCancelled, match="stop at"):
        generator.generate(_request(num_inference_steps=3), on_step, on_frames)
    assert handed == ([] if where == "on_step" else [1])
    assert generator.generate(_request()).frames.shape[0] == FRAMES  # the generator is fine afterwards


def test_step_delay_slows_each_step() -> None:
    delay_s = 0.02
    started = time.perf_counter()
    SyntheticGenerator(step_delay_s=delay_s).generate(_request(num_inference_steps=3, num_frames=2))
    assert time.perf_counter() - started >= 3 * delay_s


def test_frame_delay_slows_each_frame() -> None:
    delay_s = 0.02
    started = time.perf_counter()
    SyntheticGenerator(frame_delay_s=delay_s).generate(_request(num_inference_steps=1, num_frames=3))
    assert time.perf_counter() - started >= 3 * delay_s


def test_fail_on_start_raises_generator_error() -> None:
    with pytest.raises(GeneratorError, match="fail_on_start"):
        SyntheticGenerator(fail_on_start=True)


@pytest.mark.parametrize(
    "options", [{"shapes": 0}, {"step_delay_s": -1.0}, {"frame_delay_s": float("nan")}, {"shapes": True}]
)
def test_invalid_constructor_options_are_rejected(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SyntheticGenerator(**options)


@pytest.mark.parametrize(
    "changes",
    [{"width": 16}, {"height": 10_000}, {"num_frames": 0}, {"num_inference_steps": 0}, {"segment_idx": -1}],
)
def test_out_of_range_requests_raise_generator_error(
    generator: SyntheticGenerator, changes: dict[str, Any]
) -> None:
    with pytest.raises(GeneratorError):
        generator.generate(_request(**changes))


def test_generate_after_close_raises(generator: SyntheticGenerator) -> None:
    generator.close()
    with pytest.raises(GeneratorError, match="closed"):
        generator.generate(_request())


def _checkerboard_png(path: Path) -> Path:
    tiles = (np.indices((8, 8)).sum(axis=0) % 2 * 255).astype(np.uint8)
    Image.fromarray(np.kron(tiles, np.ones((16, 16), dtype=np.uint8))).convert("RGB").save(path)
    return path


def test_init_image_shows_strongly_at_first_and_fades_out(
    generator: SyntheticGenerator, tmp_path: Path
) -> None:
    image_path = _checkerboard_png(tmp_path / "init.png")
    plain = generator.generate(_request(num_frames=12)).frames
    blended = generator.generate(_request(num_frames=12, init_image_path=str(image_path))).frames
    init = np.asarray(Image.open(image_path).convert("RGB").resize((SIZE_PX, SIZE_PX)))
    _, region_h = marker_region(SIZE_PX, SIZE_PX)
    body = (slice(region_h, SIZE_PX - 2 * CAPTION_ROWS), slice(None))  # below the marker, above the caption
    assert _mean_abs_diff(blended[0][body], plain[0][body]) > 40
    assert _mean_abs_diff(blended[0][body], init[body]) < _mean_abs_diff(plain[0][body], init[body]) / 3
    assert (
        _mean_abs_diff(blended[-1][body], plain[-1][body])
        < _mean_abs_diff(blended[0][body], plain[0][body]) / 5
    )
    assert [read_marker(frame) for frame in blended] == [FrameMarker(0, n, TAG) for n in range(12)]


def test_init_image_is_ignored_when_continuing(generator: SyntheticGenerator, tmp_path: Path) -> None:
    first = generator.generate(_request())
    plain = generator.generate(_request(continuation=first.continuation))
    with_image = generator.generate(
        _request(continuation=first.continuation, init_image_path=str(_checkerboard_png(tmp_path / "i.png")))
    )
    np.testing.assert_array_equal(plain.frames, with_image.frames)


def test_unreadable_init_image_raises_generator_error(generator: SyntheticGenerator, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(GeneratorError, match="init image"):
        generator.generate(_request(init_image_path=str(bad)))
    with pytest.raises(GeneratorError, match="init image"):
        generator.generate(_request(init_image_path=str(tmp_path / "missing.png")))


def test_caption_band_shows_the_prompt(generator: SyntheticGenerator) -> None:
    fox = generator.generate(_request("a red fox")).frames
    waves = generator.generate(_request("ocean waves crashing on rocks")).frames
    assert _mean_abs_diff(_caption_band(fox[0]), _caption_band(waves[0])) > 5
    np.testing.assert_array_equal(_caption_band(fox[0]), _caption_band(fox[-1]))


def test_long_prompts_are_truncated_to_fit_the_caption(generator: SyntheticGenerator) -> None:
    prefix = "a very long prompt describing a scene in great detail " * 4
    first = generator.generate(_request(prefix + "ending one", num_frames=1)).frames[0]
    second = generator.generate(_request(prefix + "ending two", num_frames=1)).frames[0]
    np.testing.assert_array_equal(_caption_band(first), _caption_band(second))
    right_margin = _caption_band(first)[:, -2:]  # text that ran off the edge would paint here
    assert np.all(right_margin == right_margin[0, 0])


def test_caption_leaves_the_marker_region_alone(generator: SyntheticGenerator) -> None:
    frame = generator.generate(_request(width=64, height=48, num_frames=1)).frames[0]
    assert read_marker(frame) == FrameMarker(0, 0, TAG)


def test_frames_render_in_well_under_two_ms_at_512px() -> None:
    generator = SyntheticGenerator()
    request = _request(width=512, height=512, num_frames=24)
    result = generator.generate(request)  # builds the look once, as a stream would
    segments = 3
    started = time.perf_counter()
    for _ in range(segments):
        result = generator.generate(replace(request, continuation=result.continuation))
    per_frame_s = (time.perf_counter() - started) / (segments * 24)
    assert per_frame_s < 10e-3  # measured ~0.8 ms on one core; generous for loaded CI machines
