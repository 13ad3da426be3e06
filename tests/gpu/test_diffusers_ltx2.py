"""The diffusers_ltx2 backend on the tiny LTX-2 pipeline: video and audio, continuation, state, options.

The pipeline is built once per test session, offline, in a temporary directory; network connections
are refused while the generator loads and runs, so nothing can reach the hub.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from gpu.audio import AudioFormat, frame_sample_offset
from gpu.diffusers_ltx2 import DiffusersLtx2Generator
from gpu.diffusion_rules import check_sampling_rules, check_schedule, schedule_for_steps, vae_ratios
from gpu.factory import build_generator, preflight
from gpu.generator import ContinuationState, GeneratorError, IncompatibleStateError, SegmentCancelled, SegmentRequest
from gpu.ltx2_state import STATE_KIND, decode_latents, encode_latents
from gpu.prompt_embeddings import PromptEmbeddingCache
from tests.gpu.tiny_ltx2_model import tiny_ltx2_dir

SIZE_PX = 64
K = 9
NEW_FRAMES = 16
FPS = 24
RATE = 24_000  # the tiny vocoder's, as LTX-2's
LATENTS_PER_S = 25
DISTILLED = [1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875]
REQUEST = SegmentRequest(
    prompt="a red fox running through fresh snow",
    negative_prompt="blurry",
    seed=5,
    num_inference_steps=2,
    guidance_scale=1.0,
    width=SIZE_PX,
    height=SIZE_PX,
    num_frames=NEW_FRAMES,
    fps=FPS,
)


# Pure rules: schedules, sizes, the state's latents, the cache.


def test_a_shorter_schedule_is_the_subset_with_the_smallest_jumps() -> None:
    assert schedule_for_steps(DISTILLED, 8) == DISTILLED
    assert schedule_for_steps(DISTILLED, 5) == [1.0, 0.975, 0.909375, 0.725, 0.421875]
    assert schedule_for_steps(DISTILLED, 1) == [1.0]
    with pytest.raises(ValueError, match="cannot run 9"):
        schedule_for_steps(DISTILLED, 9)


@pytest.mark.parametrize("values", [[], [0.5, 0.7], [1.5], "1, 0.5", [True], [float("nan")]])
def test_bad_schedules_are_refused(values: object) -> None:
    with pytest.raises(ValueError, match="sigmas"):
        check_schedule(values, name="sigmas", high=1.0)


def test_latents_round_trip_and_corrupt_ones_are_refused() -> None:
    latents = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) / 7
    encoded = encode_latents(latents)
    np.testing.assert_array_equal(decode_latents(json.loads(json.dumps(encoded))), latents)
    bad = [
        {**encoded, "shape": [2, 3]},
        {**encoded, "shape": [2, 3, 5]},
        {**encoded, "dtype": "float64"},
        {**encoded, "data": "***"},
        {**encoded, "data": base64.b64encode(np.full(24, np.nan, np.float32).tobytes()).decode()},
        {"shape": [2, 3, 4]},
    ]
    for value in bad:
        with pytest.raises(IncompatibleStateError, match="audio_latents"):
            decode_latents(value)


def test_the_cache_keeps_the_most_recently_used() -> None:
    cache: PromptEmbeddingCache[str] = PromptEmbeddingCache(2)
    encoded: list[str] = []

    def encoder(text: str) -> Any:
        return lambda: encoded.append(text) or text.upper()

    for text in ["a", "b", "a", "c", "a", "b"]:
        assert cache.get(text, encoder(text)) == text.upper()
    assert encoded == ["a", "b", "c", "b"]  # "b" was dropped when "c" came; "a" stayed in use
    assert cache.stats().size == 2


# Fixtures.


@pytest.fixture(scope="module")
def no_network() -> Iterator[None]:
    def refuse(self: socket.socket, address: Any) -> None:
        raise OSError(f"test refused a network connection to {address!r}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(socket.socket, "connect", refuse)
        yield


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_ltx2_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def generator(tiny_dir: Path, no_network: None) -> Iterator[DiffusersLtx2Generator]:
    built = DiffusersLtx2Generator(
        model_path=tiny_dir, device="cpu", dtype="float32", conditioning_frames=K, sigmas=DISTILLED,
        max_sequence_length=128,
    )
    yield built
    built.close()


@pytest.fixture
def pipeline_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every LTX2ConditionPipeline call's keyword arguments, recorded before the real call runs."""
    from diffusers import LTX2ConditionPipeline

    calls: list[dict[str, Any]] = []
    original = LTX2ConditionPipeline.__call__

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append({**kwargs, "audio_latents": kwargs["audio_latents"].clone()})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LTX2ConditionPipeline, "__call__", spy)
    return calls


def _state_latents(state: ContinuationState) -> np.ndarray:
    return decode_latents(state.payload["audio_latents"])


# Generation: video, audio, continuation.


def test_audio_format_is_the_vocoders(generator: DiffusersLtx2Generator) -> None:
    assert generator.audio_format == AudioFormat(sample_rate=RATE, channels=2)
    assert generator.name == "diffusers_ltx2"


def test_frames_and_their_audio_arrive_chunk_by_chunk(generator: DiffusersLtx2Generator) -> None:
    chunks: list[tuple[np.ndarray, np.ndarray]] = []
    result = generator.generate(REQUEST, on_frames=lambda frames, audio: chunks.append((frames.copy(), audio)))
    assert result.frames.shape == (NEW_FRAMES, SIZE_PX, SIZE_PX, 3) and result.frames.dtype == np.uint8
    assert result.audio is not None and result.audio.dtype == np.float32
    assert result.audio.shape == (NEW_FRAMES * RATE // FPS, 2)  # exactly num_frames / fps of sound
    assert [frames.shape[0] for frames, _ in chunks] == [8, 8]
    first = 0
    for frames, audio in chunks:  # each chunk's audio is exactly what its frames own
        count = frames.shape[0]
        assert audio.shape[0] == frame_sample_offset(first + count, FPS, RATE) - frame_sample_offset(first, FPS, RATE)
        first += count
    np.testing.assert_array_equal(np.concatenate([audio for _, audio in chunks]), result.audio)
    np.testing.assert_array_equal(np.concatenate([frames for frames, _ in chunks]), result.frames)
    assert np.abs(result.audio).max() > 0  # sound, not padding


def test_the_second_call_gets_the_last_k_frames_and_their_audio_latents(
    generator: DiffusersLtx2Generator, pipeline_calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    finals: list[np.ndarray] = []
    original = DiffusersLtx2Generator._final_latents

    def keep(self: DiffusersLtx2Generator, pipeline: Any, packed: Any) -> np.ndarray:
        finals.append(original(self, pipeline, packed))
        return finals[-1]

    monkeypatch.setattr(DiffusersLtx2Generator, "_final_latents", keep)
    first = generator.generate(REQUEST)
    state = first.continuation
    assert state.kind == STATE_KIND and state.payload["conditioning_frames"] == K
    stored = _state_latents(state)
    assert stored.shape[0] == 2 and stored.shape[2] == 4  # the tiny model's channels and latent mel bins
    # The audio under the last K frames: 9 frames at 24 fps are ~9.4 latent frames at 25 a second.
    assert stored.shape[1] == round(K * LATENTS_PER_S / FPS) == 9
    second = generator.generate(replace(REQUEST, continuation=state, segment_idx=1))
    assert second.frames.shape == first.frames.shape

    call = pipeline_calls[1]
    (condition,) = call["conditions"]
    assert condition.index == 0
    np.testing.assert_array_equal(condition.frames, first.frames[-K:])
    given = call["audio_latents"].numpy()[0]  # (C, L, M): the previous audio latents over the start
    count = stored.shape[1]
    np.testing.assert_array_equal(given[:, :count], stored)
    # The pipeline asked for K + 16 = 25 frames, ~1.04 s: its audio is a latent longer than that needs.
    assert given.shape[1] == int(np.ceil(25 / FPS * LATENTS_PER_S)) + 1
    # Held through every step: the denoised audio of the second call starts with exactly those latents.
    np.testing.assert_allclose(finals[1][:, :count], stored, atol=1e-5)


def test_without_audio_conditioning_the_audio_starts_fresh(
    tiny_dir: Path, no_network: None, pipeline_calls: list[dict[str, Any]]
) -> None:
    built = DiffusersLtx2Generator(
        model_path=tiny_dir, device="cpu", conditioning_frames=K, audio_conditioning=False, max_sequence_length=128
    )
    try:
        first = built.generate(REQUEST)
        built.generate(replace(REQUEST, continuation=first.continuation, segment_idx=1))
    finally:
        built.close()
    given = pipeline_calls[1]["audio_latents"].numpy()[0]
    assert not np.any(given)  # the tiny VAE's latent mean: all zeros, nothing carried over
    assert pipeline_calls[1]["conditions"][0].frames.shape[0] == K  # the video still continues


def test_a_repeated_prompt_does_not_run_the_text_encoder_again(
    generator: DiffusersLtx2Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = generator._pipeline.text_encoder
    calls: list[int] = []
    original = type(encoder).forward

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(encoder), "forward", spy)
    generator.prompt_cache.clear()
    short = replace(REQUEST, num_frames=8, guidance_scale=3.0)  # guidance: the negative prompt too
    first = generator.generate(short)
    assert len(calls) == 2
    second = generator.generate(replace(short, continuation=first.continuation, segment_idx=1))
    assert len(calls) == 2
    generator.generate(replace(short, prompt="a blue bird", continuation=second.continuation, segment_idx=2))
    assert len(calls) == 3
    generator.generate(replace(short, segment_idx=3))  # the first prompt again: looped
    assert len(calls) == 3


def test_sigmas_steps_and_guidance_reach_the_pipeline(
    generator: DiffusersLtx2Generator, pipeline_calls: list[dict[str, Any]]
) -> None:
    steps: list[tuple[int, int]] = []
    generator.generate(replace(REQUEST, num_inference_steps=5), lambda step, total: steps.append((step, total)))
    call = pipeline_calls[0]
    assert call["sigmas"] == [1.0, 0.975, 0.909375, 0.725, 0.421875] and call["num_inference_steps"] == 5
    assert steps == [(step, 5) for step in range(1, 6)]
    assert call["guidance_scale"] == 1.0 and call["audio_guidance_scale"] == 1.0
    assert call["stg_scale"] == 0.0 and call["modality_scale"] == 1.0 and call["spatio_temporal_guidance_blocks"] is None
    assert "prompt" not in call and "negative_prompt_embeds" not in call
    assert call["frame_rate"] == FPS and call["num_frames"] == 17  # 16 new frames: the shortest 8n+1 length


def test_more_steps_than_the_sigmas_are_refused(generator: DiffusersLtx2Generator) -> None:
    with pytest.raises(GeneratorError, match="exceeds the 8 steps"):
        generator.generate(replace(REQUEST, num_inference_steps=9))


def test_segment_cancelled_from_on_step_stops_unwrapped(generator: DiffusersLtx2Generator) -> None:
    def stop(step: int, total: int) -> None:
        raise SegmentCancelled

    with pytest.raises(SegmentCancelled):
        generator.generate(REQUEST, stop)


def test_init_image_conditions_the_first_segment(
    generator: DiffusersLtx2Generator, pipeline_calls: list[dict[str, Any]], tmp_path: Path
) -> None:
    path = tmp_path / "init.png"
    Image.new("RGB", (SIZE_PX, SIZE_PX), (200, 30, 30)).save(path)
    first = generator.generate(replace(REQUEST, init_image_path=str(path)))
    generator.generate(replace(REQUEST, init_image_path=str(path), continuation=first.continuation, segment_idx=1))
    (image_condition,) = pipeline_calls[0]["conditions"]
    assert isinstance(image_condition.frames, Image.Image) and image_condition.index == 0
    (video_condition,) = pipeline_calls[1]["conditions"]
    assert isinstance(video_condition.frames, np.ndarray) and video_condition.frames.shape[0] == K


@pytest.mark.parametrize(("width", "height"), [(48, 64), (64, 100)])
def test_sizes_off_the_vae_grid_are_refused(generator: DiffusersLtx2Generator, width: int, height: int) -> None:
    with pytest.raises(GeneratorError, match="multiple of 32"):
        generator.generate(replace(REQUEST, width=width, height=height))


# State.


@pytest.fixture(scope="module")
def state(generator: DiffusersLtx2Generator) -> ContinuationState:
    return generator.generate(REQUEST).continuation


def test_state_is_plain_json_and_round_trips(generator: DiffusersLtx2Generator, state: ContinuationState) -> None:
    wire = json.loads(json.dumps(state.to_wire()))
    restored = ContinuationState(kind=wire["kind"], payload=wire["payload"])
    generator.check_state(restored)
    payload = restored.payload
    assert (payload["segment_idx"], payload["frame_number"], payload["fps"]) == (1, NEW_FRAMES, FPS)
    assert len(payload["frames"]) == K and set(payload["audio_latents"]) == {"shape", "dtype", "data"}
    assert generator.generate(replace(REQUEST, continuation=restored, segment_idx=1)).frames.shape[0] == NEW_FRAMES


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "ltx.v1"}, "cannot continue"),
        ({"drop": "audio_latents"}, "payload must be an object"),
        ({"fps": 0}, "fps"),
        ({"audio_latents": {"shape": [3, 10, 4], "dtype": "float32", "data": ""}}, "audio_latents"),
        ({"conditioning_frames": 8}, "conditioning_frames"),
    ],
)
def test_check_state_refuses_bad_states(
    generator: DiffusersLtx2Generator, state: ContinuationState, change: dict[str, Any], message: str
) -> None:
    payload = dict(state.payload)
    kind = change.pop("kind", STATE_KIND)
    if "drop" in change:
        del payload[change.pop("drop")]
    payload.update(change)
    with pytest.raises(IncompatibleStateError, match=message):
        generator.check_state(ContinuationState(kind=kind, payload=payload))


def test_latents_of_another_model_are_refused(generator: DiffusersLtx2Generator, state: ContinuationState) -> None:
    other = encode_latents(np.zeros((3, 10, 4), np.float32))
    with pytest.raises(IncompatibleStateError, match="do not fit"):
        generator.check_state(ContinuationState(kind=STATE_KIND, payload={**state.payload, "audio_latents": other}))


# Options, factory and config rules.


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"conditioning_frames": 8}, r"8\*n\+1"),
        ({"sigmas": [0.5, 0.9]}, "strictly decreasing"),
        ({"sigmas": [1.0, 0.5, 0.0]}, "terminal 0"),
        ({"modality_scale": 0.5}, "modality_scale"),
        ({"stg_blocks": []}, "stg_blocks"),
        ({"prompt_cache_size": -1}, "prompt_cache_size"),
        ({"enable_model_cpu_offload": True}, "needs a CUDA device"),
    ],
)
def test_bad_options_are_refused(tiny_dir: Path, no_network: None, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DiffusersLtx2Generator(model_path=tiny_dir, **{"device": "cpu", **options})


def test_close_is_idempotent_and_final(tiny_dir: Path, no_network: None) -> None:
    built = DiffusersLtx2Generator(model_path=tiny_dir, device="cpu")
    built.close()
    built.close()
    with pytest.raises(GeneratorError, match="closed"):
        built.generate(REQUEST)


def test_factory_builds_the_ltx2_backend(tiny_dir: Path, no_network: None) -> None:
    built = build_generator("diffusers_ltx2", {"model_path": str(tiny_dir), "device": "cpu", "sigmas": DISTILLED})
    try:
        assert isinstance(built, DiffusersLtx2Generator) and built.conditioning_frames == K
    finally:
        built.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "needs option\\(s\\) 'model_path'"),
        ({"model_path": "x", "sigmas": "1.0"}, "option 'sigmas'"),
        ({"model_path": "x", "sigmas": [0.2, 0.4]}, "strictly decreasing"),
        ({"model_path": "x", "timesteps": [1000]}, "unknown option 'timesteps'"),
    ],
)
def test_factory_names_bad_ltx2_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(GeneratorError, match=message):
        build_generator("diffusers_ltx2", options)


def test_vae_ratios_come_from_the_model_directory(tiny_dir: Path, tmp_path: Path) -> None:
    assert vae_ratios(tiny_dir) == (32, 8)
    assert vae_ratios(tmp_path) == (32, 8)  # no config: every LTX VAE's


@pytest.mark.parametrize(
    ("sampling", "key"),
    [
        ({"width": 100}, "default_request.sampling.width"),
        ({"height": 16}, "default_request.sampling.height"),
        ({"num_frames": 20}, "default_request.sampling.num_frames"),
        ({"num_inference_steps": 9}, "default_request.sampling.num_inference_steps"),
    ],
)
def test_preflight_names_the_sampling_key_that_breaks_a_rule(
    tiny_dir: Path, sampling: dict[str, Any], key: str
) -> None:
    good = {"width": 64, "height": 64, "num_frames": 16, "num_inference_steps": 8}
    options = {"model_path": str(tiny_dir), "sigmas": DISTILLED}
    preflight("diffusers_ltx2", options, sampling=good, sampling_key="default_request.sampling")
    with pytest.raises(GeneratorError, match=rf"^{key} "):
        preflight("diffusers_ltx2", options, sampling={**good, **sampling}, sampling_key="default_request.sampling")


def test_preflight_names_conditioning_frames_off_the_grid(tiny_dir: Path) -> None:
    with pytest.raises(GeneratorError, match=r"generator\.options\.conditioning_frames 8 must be 8\*n\+1"):
        check_sampling_rules(
            tiny_dir, {}, conditioning_frames=8, schedule_name=None, schedule_length=None, key_prefix="x"
        )
