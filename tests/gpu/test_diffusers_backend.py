"""The diffusers backend on the tiny LTX pipeline: continuation, conditioning, state, load errors.

The pipeline is built once per module, offline, in a temporary directory; network connections are
refused while the generator loads and runs, so nothing can reach the hub.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from gpu.diffusers_backend import (
    FRAMES_PER_CHUNK,
    STATE_KIND,
    DiffusersGenerator,
    is_valid_length,
    kept_conditioning_frames,
    pipeline_num_frames,
    segment_seed,
    validate_conditioning_frames,
)
from gpu.factory import build_generator
from gpu.frames import encode_png
from gpu.generator import (
    ContinuationState,
    GeneratorError,
    IncompatibleStateError,
    SegmentCancelled,
    SegmentRequest,
)

SIZE_PX = 64
K = 9
NEW_FRAMES = 12  # more than K, so the next segment's context is all from this one
STEPS = 2
REQUEST = SegmentRequest(
    prompt="a red fox running through fresh snow",
    negative_prompt="blurry",
    seed=5,
    num_inference_steps=STEPS,
    guidance_scale=3.0,
    width=SIZE_PX,
    height=SIZE_PX,
    num_frames=NEW_FRAMES,
    fps=24,
)
# What gpu/pool.py warms up with: fewer new frames than K, one step.
WARMUP_REQUEST = SegmentRequest(prompt="warm-up", width=64, height=64, num_frames=2, num_inference_steps=1, seed=0)


# Pure length rules.


@pytest.mark.parametrize(("frames", "valid"), [(1, True), (9, True), (17, True), (0, False), (8, False), (10, False)])
def test_valid_lengths_are_8n_plus_1(frames: int, valid: bool) -> None:
    assert is_valid_length(frames, 8) is valid


@pytest.mark.parametrize("frames", [0, 2, 8, 16, -7, True, 9.0, "9"])
def test_conditioning_frames_off_the_8n_plus_1_grid_are_refused(frames: object) -> None:
    with pytest.raises(ValueError, match=r"8\*n\+1"):
        validate_conditioning_frames(frames, 8)


def test_conditioning_frames_follow_the_vae_ratio() -> None:
    assert validate_conditioning_frames(9, 8) == 9
    assert validate_conditioning_frames(5, 4) == 5


@pytest.mark.parametrize(
    ("configured", "available", "kept"),
    [(9, 12, 9), (9, 9, 9), (9, 8, 1), (9, 2, 1), (17, 16, 9), (17, 40, 17), (1, 40, 1)],
)
def test_kept_conditioning_is_the_longest_valid_tail(configured: int, available: int, kept: int) -> None:
    assert kept_conditioning_frames(configured, available, 8) == kept


@pytest.mark.parametrize(
    ("conditioning", "new", "total"),
    [(0, 1, 1), (0, 9, 9), (0, 12, 17), (9, 12, 25), (9, 8, 17), (1, 2, 9), (9, 16, 25)],
)
def test_pipeline_length_is_the_shortest_valid_length_that_fits(conditioning: int, new: int, total: int) -> None:
    assert pipeline_num_frames(conditioning, new, 8) == total


def test_segment_seeds_differ_by_seed_and_by_segment() -> None:
    seeds = {segment_seed(seed, idx) for seed in range(3) for idx in range(3)}
    assert len(seeds) == 9
    assert all(0 <= seed < 2**63 for seed in seeds)
    assert segment_seed(7, 2) == segment_seed(7, 2)


# Fixtures.


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        import diffusers  # noqa: F401  (the diffusers extra is part of the test install)

        from gpu.tiny_model import build_tiny_pipeline_dir

        yield build_tiny_pipeline_dir(tmp_path_factory.mktemp("tiny-ltx"))


@pytest.fixture(scope="module")
def no_network() -> Iterator[None]:
    def refuse(self: socket.socket, address: Any) -> None:
        raise OSError(f"test refused a network connection to {address!r}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(socket.socket, "connect", refuse)
        yield


@pytest.fixture(scope="module")
def generator(tiny_dir: Path, no_network: None) -> Iterator[DiffusersGenerator]:
    built = DiffusersGenerator(model_path=tiny_dir, device="cpu", dtype="float32", conditioning_frames=K)
    yield built
    built.close()


@pytest.fixture
def pipeline_calls(monkeypatch: pytest.MonkeyPatch, generator: DiffusersGenerator) -> list[dict[str, Any]]:
    """Every LTXConditionPipeline call's keyword arguments, recorded before the real call runs."""
    from diffusers import LTXConditionPipeline

    calls: list[dict[str, Any]] = []
    original = LTXConditionPipeline.__call__

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LTXConditionPipeline, "__call__", spy)
    return calls


def _pil_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


# Generation.


def test_two_segments_continue_from_the_last_k_frames(
    generator: DiffusersGenerator, pipeline_calls: list[dict[str, Any]]
) -> None:
    first = generator.generate(REQUEST)
    second = generator.generate(replace(REQUEST, segment_idx=1, continuation=first.continuation))

    for result in (first, second):
        assert result.frames.shape == (NEW_FRAMES, SIZE_PX, SIZE_PX, 3)
        assert result.frames.dtype == np.uint8
    assert pipeline_calls[0]["conditions"] is None
    assert pipeline_calls[0]["num_frames"] == 17  # 12 new frames in the shortest 8n+1 length
    (condition,) = pipeline_calls[1]["conditions"]
    assert condition.frame_index == 0
    assert condition.image is None
    given = np.stack([_pil_array(frame) for frame in condition.video])
    # The conditioning frames reach the pipeline as the uint8 frames themselves (PIL, no float trip).
    np.testing.assert_array_equal(given, first.frames[-K:])
    assert pipeline_calls[1]["num_frames"] == 25  # 9 redrawn + 12 new frames, rounded up to 8n+1
    assert not np.array_equal(second.frames, first.frames)


def test_state_counts_segments_and_frames(generator: DiffusersGenerator) -> None:
    first = generator.generate(REQUEST)
    second = generator.generate(replace(REQUEST, segment_idx=1, continuation=first.continuation))
    payload = second.continuation.payload
    assert second.continuation.kind == STATE_KIND
    assert payload["segment_idx"] == 2
    assert payload["frame_number"] == 2 * NEW_FRAMES
    assert payload["conditioning_frames"] == K
    assert (payload["width"], payload["height"]) == (SIZE_PX, SIZE_PX)
    assert len(payload["frames"]) == K


def test_request_parameters_reach_the_pipeline(
    generator: DiffusersGenerator, pipeline_calls: list[dict[str, Any]]
) -> None:
    generator.generate(REQUEST)
    call = pipeline_calls[0]
    # The prompts arrive encoded (the prompt cache), exactly as the pipeline would have encoded them.
    assert "prompt" not in call and "negative_prompt" not in call
    import torch

    pipeline = generator._pipeline
    for text, key in ((REQUEST.prompt, "prompt"), (REQUEST.negative_prompt, "negative_prompt")):
        with torch.no_grad():
            embeds, mask, _, _ = pipeline.encode_prompt(prompt=text, do_classifier_free_guidance=False, device="cpu")
        assert np.array_equal(call[f"{key}_embeds"].numpy(), embeds.numpy())
        assert np.array_equal(call[f"{key}_attention_mask"].numpy(), mask.numpy())
    assert call["guidance_scale"] == REQUEST.guidance_scale
    assert call["image_cond_noise_scale"] == 0.15 and call["guidance_rescale"] == 0.0  # the pipeline's defaults
    assert call["num_inference_steps"] == STEPS
    assert len(call["timesteps"]) == STEPS
    assert call["frame_rate"] == REQUEST.fps
    assert (call["width"], call["height"]) == (SIZE_PX, SIZE_PX)
    assert str(call["generator"].device) == "cpu"


def test_step_callback_reports_every_step(generator: DiffusersGenerator) -> None:
    steps: list[tuple[int, int]] = []
    generator.generate(replace(REQUEST, num_inference_steps=3), lambda step, total: steps.append((step, total)))
    assert steps == [(1, 3), (2, 3), (3, 3)]


def test_frames_are_handed_over_chunk_by_chunk_as_each_is_converted(
    generator: DiffusersGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gpu.diffusers_backend as backend

    events: list[str] = []
    chunks: list[np.ndarray] = []
    convert = backend.tensor_to_uint8_frames

    def spy(video: Any) -> np.ndarray:
        events.append(f"convert {video.shape[0]}")
        return convert(video)

    def on_frames(chunk: np.ndarray, audio: np.ndarray | None) -> None:
        assert audio is None  # LTX-Video makes no sound
        events.append(f"hand over {chunk.shape[0]}")
        chunks.append(chunk.copy())

    monkeypatch.setattr(backend, "tensor_to_uint8_frames", spy)
    streamed = generator.generate(REQUEST, lambda step, total: events.append("step"), on_frames)
    rest = NEW_FRAMES - FRAMES_PER_CHUNK
    assert events == ["step"] * STEPS + [
        f"convert {FRAMES_PER_CHUNK}",
        f"hand over {FRAMES_PER_CHUNK}",
        f"convert {rest}",
        f"hand over {rest}",
    ]
    np.testing.assert_array_equal(np.concatenate(chunks), streamed.frames)
    np.testing.assert_array_equal(streamed.frames, generator.generate(REQUEST).frames)


def test_segment_cancelled_from_on_step_stops_the_pipeline_unwrapped(generator: DiffusersGenerator) -> None:
    steps: list[int] = []
    handed: list[np.ndarray] = []

    def on_step(step: int, total: int) -> None:
        steps.append(step)
        raise SegmentCancelled("the viewer left")

    with pytest.raises(SegmentCancelled, match="the viewer left") as caught:
        generator.generate(replace(REQUEST, num_inference_steps=3), on_step, handed.append)
    assert not isinstance(caught.value, GeneratorError)
    assert steps == [1] and handed == []
    assert generator.generate(REQUEST).frames.shape[0] == NEW_FRAMES  # the pipeline is fine afterwards


def test_segment_cancelled_from_on_frames_stops_the_hand_over_unwrapped(generator: DiffusersGenerator) -> None:
    handed: list[int] = []

    def on_frames(chunk: np.ndarray, audio: np.ndarray | None) -> None:
        handed.append(chunk.shape[0])
        raise SegmentCancelled("the viewer left")

    with pytest.raises(SegmentCancelled, match="the viewer left"):
        generator.generate(REQUEST, on_frames=on_frames)
    assert handed == [FRAMES_PER_CHUNK]


def test_seed_decides_the_frames(generator: DiffusersGenerator) -> None:
    first = generator.generate(REQUEST)
    again = generator.generate(REQUEST)
    other = generator.generate(replace(REQUEST, seed=REQUEST.seed + 1))
    np.testing.assert_array_equal(first.frames, again.frames)
    assert not np.array_equal(first.frames, other.frames)


def test_init_image_conditions_frame_zero_of_the_first_segment_only(
    generator: DiffusersGenerator, pipeline_calls: list[dict[str, Any]], tmp_path: Path
) -> None:
    path = tmp_path / "init.png"
    picture = np.zeros((48, 80, 3), dtype=np.uint8)
    picture[:, :40] = (250, 120, 10)
    Image.fromarray(picture).save(path)
    request = replace(REQUEST, init_image_path=str(path))

    first = generator.generate(request)
    generator.generate(replace(request, segment_idx=1, continuation=first.continuation))

    (condition,) = pipeline_calls[0]["conditions"]
    assert condition.frame_index == 0
    assert condition.video is None
    np.testing.assert_array_equal(_pil_array(condition.image), picture)
    (follow_up,) = pipeline_calls[1]["conditions"]
    assert follow_up.image is None and follow_up.video is not None


def test_unreadable_init_image_is_a_generator_error(generator: DiffusersGenerator, tmp_path: Path) -> None:
    path = tmp_path / "missing.png"
    with pytest.raises(GeneratorError, match="missing.png"):
        generator.generate(replace(REQUEST, init_image_path=str(path)))


def test_pool_warm_up_pair_runs(generator: DiffusersGenerator) -> None:
    first = generator.generate(WARMUP_REQUEST)
    assert first.continuation.payload["conditioning_frames"] == 1  # only 2 frames exist: keep 8*0+1
    second = generator.generate(replace(WARMUP_REQUEST, segment_idx=1, continuation=first.continuation))
    assert second.frames.shape == (2, 64, 64, 3)
    assert second.continuation.payload["conditioning_frames"] == 1  # 3 frames so far: still 1


@pytest.mark.parametrize(("width", "height"), [(48, 64), (64, 0), (8192, 64)])
def test_sizes_off_the_vae_grid_are_refused(generator: DiffusersGenerator, width: int, height: int) -> None:
    with pytest.raises(GeneratorError, match="multiple of 32"):
        generator.generate(replace(REQUEST, width=width, height=height))


def test_state_of_another_size_is_incompatible(generator: DiffusersGenerator) -> None:
    first = generator.generate(REQUEST)
    with pytest.raises(IncompatibleStateError, match="64x64 frames but the request is 96x64"):
        generator.generate(replace(REQUEST, width=96, continuation=first.continuation))


# Continuation state.


@pytest.fixture(scope="module")
def state(generator: DiffusersGenerator) -> ContinuationState:
    return generator.generate(REQUEST).continuation


def test_state_round_trips_through_json(generator: DiffusersGenerator, state: ContinuationState) -> None:
    wire = json.loads(json.dumps(state.to_wire()))
    restored = ContinuationState(kind=wire["kind"], payload=wire["payload"])
    generator.check_state(restored)
    follow_up = replace(REQUEST, segment_idx=1)
    from_original = generator.generate(replace(follow_up, continuation=state))
    from_restored = generator.generate(replace(follow_up, continuation=restored))
    np.testing.assert_array_equal(from_original.frames, from_restored.frames)


def test_check_state_refuses_another_kind(generator: DiffusersGenerator, state: ContinuationState) -> None:
    with pytest.raises(IncompatibleStateError, match="'synthetic.v1' state"):
        generator.check_state(ContinuationState(kind="synthetic.v1", payload=state.payload))


@pytest.mark.parametrize("key", ["segment_idx", "frame_number", "conditioning_frames", "width", "height", "frames"])
def test_check_state_refuses_missing_fields(generator: DiffusersGenerator, state: ContinuationState, key: str) -> None:
    payload = {name: value for name, value in state.payload.items() if name != key}
    with pytest.raises(IncompatibleStateError, match="payload must be an object with keys"):
        generator.check_state(ContinuationState(kind=STATE_KIND, payload=payload))


def _other_size_png() -> str:
    return encode_png(np.zeros((32, 64, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"segment_idx": -1}, "segment_idx"),
        ({"frame_number": "12"}, "frame_number"),
        ({"segment_idx": 2**31}, r"segment_idx must be an int in 0\.\.2147483647, got 2147483648"),
        ({"frame_number": 10**5000}, r"frame_number must be an int in 0\.\.2147483647, got an int of 16610 bits"),
        ({"width": 2**70}, "multiples of 32 up to 4096, got an int of 71 bits"),
        ({"conditioning_frames": 8 * 2**70 + 1}, r"8\*n\+1 up to 1024, got an int of 74 bits"),
        ({"conditioning_frames": 1025}, r"8\*n\+1 up to 1024, got 1025"),
        ({"width": 50}, "multiples of 32"),
        ({"height": True}, "multiples of 32"),
        ({"conditioning_frames": 8}, r"8\*n\+1"),
        ({"conditioning_frames": 1}, "list of 1 base64 PNG frames"),
        ({"frames": "iVBORw0KGgo="}, "list of 9"),
        ({"frames": ["@@@"] * K}, "base64"),
        ({"frames": ["aGVsbG8gd29ybGQh"] * K}, "not a PNG"),
        ({"frames": [_other_size_png()] * K}, "64x32 RGB PNG, expected 64x64"),
    ],
)
def test_check_state_refuses_bad_fields_and_frame_data(
    generator: DiffusersGenerator, state: ContinuationState, changes: dict[str, Any], message: str
) -> None:
    payload = {**state.payload, **changes}
    with pytest.raises(IncompatibleStateError, match=message):
        generator.check_state(ContinuationState(kind=STATE_KIND, payload=payload))


def test_only_the_kept_frames_of_a_longer_state_are_decoded(
    tiny_dir: Path, no_network: None, generator: DiffusersGenerator
) -> None:
    wide = DiffusersGenerator(model_path=tiny_dir, device="cpu", conditioning_frames=17)
    try:
        long_state = wide.generate(replace(REQUEST, num_frames=20)).continuation
    finally:
        wide.close()
    frames = list(long_state.payload["frames"])
    frames[: 17 - K] = ["@@@ never decoded @@@"] * (17 - K)  # the older frames this generator drops
    generator.check_state(ContinuationState(kind=STATE_KIND, payload={**long_state.payload, "frames": frames}))
    frames[17 - K] = "@@@"  # the oldest frame it keeps
    with pytest.raises(IncompatibleStateError, match="base64"):
        generator.check_state(ContinuationState(kind=STATE_KIND, payload={**long_state.payload, "frames": frames}))


def test_longer_state_than_k_continues_from_its_last_k_frames(
    tiny_dir: Path, no_network: None, generator: DiffusersGenerator, pipeline_calls: list[dict[str, Any]]
) -> None:
    wide = DiffusersGenerator(model_path=tiny_dir, device="cpu", conditioning_frames=17)
    try:
        long_request = replace(REQUEST, num_frames=20)
        long_state = wide.generate(long_request).continuation
    finally:
        wide.close()
    assert long_state.payload["conditioning_frames"] == 17
    generator.generate(replace(REQUEST, segment_idx=1, continuation=long_state))
    (condition,) = pipeline_calls[-1]["conditions"]
    assert len(condition.video) == K


# Building.


def test_missing_directory_is_named(tmp_path: Path, no_network: None) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(GeneratorError, match=re.escape(f"'{missing}' does not exist")):
        DiffusersGenerator(model_path=missing, device="cpu")


def test_directory_without_model_index_is_named(tmp_path: Path, no_network: None) -> None:
    with pytest.raises(GeneratorError, match=re.escape(f"'{tmp_path}' has no model_index.json")):
        DiffusersGenerator(model_path=tmp_path, device="cpu")


@pytest.mark.parametrize("component", ["vae", "transformer", "tokenizer"])
def test_directory_missing_a_component_is_named(
    tiny_dir: Path, tmp_path: Path, no_network: None, component: str
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    shutil.rmtree(broken / component)
    with pytest.raises(GeneratorError, match=re.escape(f"'{broken}'")):
        DiffusersGenerator(model_path=broken, device="cpu")


def test_corrupt_model_index_is_named(tiny_dir: Path, tmp_path: Path, no_network: None) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "model_index.json").write_text("{not json")
    with pytest.raises(GeneratorError, match=re.escape(f"cannot read model_index.json in '{broken}'")):
        DiffusersGenerator(model_path=broken, device="cpu")


def test_truncated_weights_are_named(tiny_dir: Path, tmp_path: Path, no_network: None) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    weights = broken / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(GeneratorError, match=re.escape(f"cannot load an LTX pipeline from '{broken}'")):
        DiffusersGenerator(model_path=broken, device="cpu")


def test_unknown_component_class_is_named(tiny_dir: Path, tmp_path: Path, no_network: None) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    index = json.loads((broken / "model_index.json").read_text())
    index["vae"] = ["diffusers", "NoSuchAutoencoder"]
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(GeneratorError, match=re.escape(f"cannot load an LTX pipeline from '{broken}'")):
        DiffusersGenerator(model_path=broken, device="cpu")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"conditioning_frames": 8}, r"8\*n\+1"),
        ({"conditioning_frames": 0}, "positive int"),
        ({"device": "tpu"}, "device must be"),
        ({"dtype": "int8"}, "dtype must be"),
        ({"conditioning_strength": 0}, "conditioning_strength"),
        ({"decode_timestep": 2.0}, "decode_timestep"),
        ({"image_cond_noise_scale": 1.5}, "image_cond_noise_scale"),
        ({"guidance_rescale": -0.1}, "guidance_rescale"),
        ({"timesteps": [725, 909]}, "strictly decreasing"),
        ({"timesteps": []}, "non-empty list"),
        ({"timesteps": [2000, 10]}, r"in \[0, 1000\]"),
        ({"prompt_cache_size": -1}, "prompt_cache_size"),
        ({"enable_model_cpu_offload": True}, "needs a CUDA device"),
    ],
)
def test_bad_options_are_refused(tiny_dir: Path, no_network: None, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DiffusersGenerator(model_path=tiny_dir, **{"device": "cpu", **options})


def test_close_is_idempotent_and_final(tiny_dir: Path, no_network: None) -> None:
    built = DiffusersGenerator(model_path=tiny_dir, device="cpu")
    built.close()
    built.close()
    with pytest.raises(GeneratorError, match="closed"):
        built.generate(REQUEST)


# The factory entry.


def test_factory_builds_the_diffusers_backend(tiny_dir: Path, no_network: None) -> None:
    built = build_generator("diffusers", {"model_path": str(tiny_dir), "device": "cpu", "conditioning_frames": 1})
    try:
        assert isinstance(built, DiffusersGenerator)
        assert built.name == "diffusers"
        assert built.conditioning_frames == 1
    finally:
        built.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "needs option\\(s\\) 'model_path'"),
        ({"model_path": 3}, "option 'model_path'"),
        ({"model_path": "x", "enable_vae_tiling": 1}, "option 'enable_vae_tiling'"),
        ({"model_path": "x", "conditioning_frames": True}, "option 'conditioning_frames'"),
        ({"model_path": "x", "colour": "red"}, "unknown option 'colour'"),
        ({"model_path": "x", "device": "gpu"}, "backend 'diffusers': device must be"),
        ({"model_path": "x", "timesteps": "1000, 0"}, "option 'timesteps'"),
        ({"model_path": "x", "timesteps": [1, 2]}, "backend 'diffusers': timesteps must be strictly decreasing"),
    ],
)
def test_factory_names_bad_diffusers_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(GeneratorError, match=message):
        build_generator("diffusers", options)


# Audio, the prompt cache and the distilled schedule.


def test_ltx_video_has_no_sound(generator: DiffusersGenerator) -> None:
    assert generator.audio_format is None
    assert generator.generate(replace(REQUEST, num_frames=2)).audio is None


@pytest.fixture
def text_encoder_calls(monkeypatch: pytest.MonkeyPatch, generator: DiffusersGenerator) -> list[int]:
    """One entry (the batch's token count) per forward pass of the pipeline's text encoder."""
    encoder = generator._pipeline.text_encoder
    calls: list[int] = []
    original = type(encoder).forward

    def spy(self: Any, input_ids: Any = None, *args: Any, **kwargs: Any) -> Any:
        calls.append(int(input_ids.shape[-1]))
        return original(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(type(encoder), "forward", spy)
    generator.prompt_cache.clear()
    return calls


def test_a_repeated_prompt_does_not_run_the_text_encoder_again(
    generator: DiffusersGenerator, text_encoder_calls: list[int]
) -> None:
    short = replace(REQUEST, num_frames=2)
    first = generator.generate(short)
    assert len(text_encoder_calls) == 2  # the prompt and the negative prompt (guidance 3.0)
    second = generator.generate(replace(short, continuation=first.continuation, segment_idx=1))
    assert len(text_encoder_calls) == 2
    other = generator.generate(replace(short, prompt="a blue bird flying over the sea"))
    assert len(text_encoder_calls) == 3  # only the new prompt; the negative one is cached
    generator.generate(replace(short, continuation=second.continuation, segment_idx=2))  # back to the first
    assert len(text_encoder_calls) == 3
    assert other.frames.shape == first.frames.shape
    assert generator.prompt_cache.stats().size == 3


def test_cached_embeddings_give_the_frames_the_text_would(
    generator: DiffusersGenerator, text_encoder_calls: list[int]
) -> None:
    short = replace(REQUEST, num_frames=2)
    cold = generator.generate(short).frames
    warm = generator.generate(short).frames
    np.testing.assert_array_equal(cold, warm)


def test_a_disabled_cache_encodes_every_segment(tiny_dir: Path, no_network: None) -> None:
    built = DiffusersGenerator(model_path=tiny_dir, device="cpu", conditioning_frames=K, prompt_cache_size=0)
    try:
        short = replace(REQUEST, num_frames=2)
        built.generate(short)
        built.generate(short)
        assert built.prompt_cache.stats().misses == 4 and built.prompt_cache.stats().size == 0
    finally:
        built.close()


DISTILLED_TIMESTEPS = [1000, 993, 987, 981, 975, 909, 725, 0.03]


@pytest.fixture(scope="module")
def distilled(tiny_dir: Path, no_network: None) -> Iterator[DiffusersGenerator]:
    built = DiffusersGenerator(
        model_path=tiny_dir,
        device="cpu",
        conditioning_frames=K,
        timesteps=DISTILLED_TIMESTEPS,
        image_cond_noise_scale=0.0,
        guidance_rescale=0.7,
    )
    yield built
    built.close()


def test_the_distilled_schedule_and_settings_reach_the_pipeline(
    distilled: DiffusersGenerator, pipeline_calls: list[dict[str, Any]]
) -> None:
    steps: list[tuple[int, int]] = []
    request = replace(REQUEST, num_frames=2, guidance_scale=1.0, num_inference_steps=8)
    distilled.generate(request, lambda step, total: steps.append((step, total)))
    distilled.generate(replace(request, num_inference_steps=4))
    full, subset = pipeline_calls
    assert full["timesteps"] == DISTILLED_TIMESTEPS and steps[-1] == (8, 8)
    assert subset["timesteps"] == [1000, 909, 725, 0.03]  # both ends kept, the largest jump smallest
    assert full["image_cond_noise_scale"] == 0.0 and full["guidance_rescale"] == 0.7
    assert "negative_prompt_embeds" not in full  # guidance 1.0: no negative prompt to encode


def test_more_steps_than_the_schedule_are_refused(distilled: DiffusersGenerator) -> None:
    with pytest.raises(GeneratorError, match="exceeds the 8 steps"):
        distilled.generate(replace(REQUEST, num_inference_steps=9))
