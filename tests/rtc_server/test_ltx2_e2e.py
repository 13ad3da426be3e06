"""The service running a real (tiny, random) LTX-2 pipeline with sound on CPU, end to end.

Over WebSocket (fMP4 with H.264 and AAC) and WebRTC (video and an Opus audio track): frames and sound
arrive, and a spy on the in-process pipeline shows the second segment's call was given the first
segment's last K frames and the audio latents under them. A config breaking the model's size rules
stops the server at startup with exit 2, naming the key.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpu.diffusers_ltx2 import DiffusersLtx2Generator
from gpu.ltx2_state import decode_latents
from rtc_server.app import POOL
from rtc_server.clients.webrtc_client import WebRTCClient
from rtc_server.clients.ws_client import WebSocketClient
from tests.conftest import make_config
from tests.gpu.tiny_ltx2_model import tiny_ltx2_dir
from tests.rtc_server.test_cli import REPO

K = 9  # conditioning frames
NEW_FRAMES = 16
FPS = 24
INIT = {"type": "session_init_v2", "curated_prompts": ["a red fox running through fresh snow"]}
TIMEOUT_S = 90


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_ltx2_dir(tmp_path_factory)


def ltx2_config(model: Path, pool_backend: str = "inprocess") -> Any:
    return make_config(
        generator={
            "backend": "diffusers_ltx2",
            "options": {
                "model_path": str(model), "device": "cpu", "dtype": "float32", "conditioning_frames": K,
                "max_sequence_length": 128,
            },
        },
        default_request={
            "sampling": {"width": 64, "height": 64, "fps": FPS, "num_frames": NEW_FRAMES, "num_inference_steps": 2}
        },
        pool={"backend": pool_backend, "max_parallel": 1},
    )


class CallRecorder:
    """Wraps the in-process generator's pipeline and generate() to see what each call really got."""

    def __init__(self, generator: DiffusersLtx2Generator) -> None:
        self.results: list[Any] = []
        self.calls: list[dict[str, Any]] = []
        pipeline = generator._pipeline
        original_call = type(pipeline).__call__
        original_generate = generator.generate

        def spy_call(pipe: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls.append({**kwargs, "audio_latents": kwargs["audio_latents"].clone()})
            return original_call(pipe, *args, **kwargs)

        def spy_generate(request: Any, on_step: Any = None, on_frames: Any = None) -> Any:
            result = original_generate(request, on_step, on_frames)
            self.results.append(result)
            return result

        pipeline.__class__ = type("SpiedPipeline", (type(pipeline),), {"__call__": spy_call})
        generator.generate = spy_generate  # type: ignore[method-assign]

    def check_second_call_continues_the_first(self) -> None:
        assert len(self.results) >= 2 and len(self.calls) >= 2
        first = self.results[0]
        assert first.frames.shape == (NEW_FRAMES, 64, 64, 3)
        assert first.audio is not None and first.audio.shape == (NEW_FRAMES * 24_000 // FPS, 2)
        (condition,) = self.calls[1]["conditions"]
        assert condition.index == 0
        np.testing.assert_array_equal(condition.frames, first.frames[-K:])
        stored = decode_latents(first.continuation.payload["audio_latents"])
        given = self.calls[1]["audio_latents"].numpy()[0]
        np.testing.assert_array_equal(given[:, : stored.shape[1]], stored)


async def test_webrtc_streams_ltx2_video_and_sound_continuing_frames_and_audio_latents(
    start_server: Any, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    server = await start_server(ltx2_config(tiny_model))
    generator = server.app[POOL]._generator  # type: ignore[attr-defined]
    assert isinstance(generator, DiffusersLtx2Generator)
    recorder = CallRecorder(generator)
    async with WebRTCClient(server.url, session_init=INIT, receive_audio=True) as client:
        await client.connect()
        await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 1, timeout=TIMEOUT_S)
        for _ in range(200):
            if len(client.frames) >= NEW_FRAMES and client.audio_frame_count > 0:
                break
            await asyncio.sleep(0.05)
        assert {(f.width, f.height) for f in client.frames} == {(64, 64)}
        assert client.audio_track_received and client.audio_frame_count > 0
    recorder.check_second_call_continues_the_first()


def probe(path: Path) -> dict[str, Any]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-of", "json", str(path)],
        capture_output=True, text=True, check=True, timeout=TIMEOUT_S,
    )
    streams = json.loads(result.stdout)["streams"]
    return {stream["codec_type"]: stream for stream in streams}


async def test_websocket_streams_ltx2_video_and_sound_as_fmp4(
    start_server: Any, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    server = await start_server(ltx2_config(tiny_model))
    recorder = CallRecorder(server.app[POOL]._generator)  # type: ignore[attr-defined]
    async with WebSocketClient(server.url, session_init=INIT) as client:
        await client.connect()
        await client.wait_for_event("media_segment_complete", lambda e: e["segment_idx"] == 1, timeout=TIMEOUT_S)
        await client.send({"type": "snapshot_state"})
        snapshot = (await client.wait_for_event("continuation_state_snapshot"))["state"]
    assert snapshot["kind"] == "ltx2.v1" and snapshot["payload"]["segment_idx"] >= 2
    assert set(snapshot["payload"]["audio_latents"]) == {"shape", "dtype", "data"}
    for segment in client.complete_segments[:2]:
        path = tmp_path / f"s{segment.segment_idx}.mp4"
        path.write_bytes(segment.data)
        streams = probe(path)
        assert (streams["video"]["width"], streams["video"]["height"]) == (64, 64)
        assert int(streams["video"]["nb_read_frames"]) == NEW_FRAMES
        assert streams["audio"]["codec_name"] == "aac" and int(streams["audio"]["channels"]) in (1, 2)
    recorder.check_second_call_continues_the_first()


async def test_websocket_streams_ltx2_through_the_subprocess_pool(
    start_server: Any, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    server = await start_server(ltx2_config(tiny_model, "subprocess"))
    async with WebSocketClient(server.url, session_init=INIT) as client:
        await client.connect()
        await client.wait_for_event("media_segment_complete", lambda e: e["segment_idx"] == 1, timeout=TIMEOUT_S)
    assert len(client.complete_segments) >= 2


def run_server(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rtc_server", "--config", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.mark.parametrize(
    ("sampling", "key"),
    [
        ("{width: 80, height: 64, num_frames: 16}", "default_request.sampling.width 80"),
        ("{width: 64, height: 40, num_frames: 16}", "default_request.sampling.height 40"),
        ("{width: 64, height: 64, num_frames: 20}", "default_request.sampling.num_frames 20"),
        ("{width: 64, height: 64, num_frames: 16, num_inference_steps: 9}", "default_request.sampling.num_inference_steps 9"),
    ],
)
def test_a_size_the_model_cannot_make_stops_the_server_naming_the_key(
    tiny_model: Path, tmp_path: Path, sampling: str, key: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "generator:\n  backend: diffusers_ltx2\n"
        f"  options: {{model_path: {tiny_model}, sigmas: [1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875]}}\n"
        f"default_request:\n  sampling: {sampling}\n"
    )
    result = run_server(config)
    assert result.returncode == 2
    assert key in result.stderr and "Traceback" not in result.stderr


def test_the_states_large_parts_are_top_level_keys_the_store_moves_to_blobs() -> None:
    from gpu.ltx2_state import encode_state
    from rtc_server.store.base import DEFAULT_INLINE_LIMIT_BYTES, plan_externalisation

    draw = np.random.default_rng(0)
    frames = draw.integers(0, 256, (K, 64, 64, 3), dtype=np.uint8)  # noise: PNG cannot shrink it
    small = encode_state(segment_idx=1, frame_number=16, fps=FPS, frames=frames,
                         audio_latents=draw.standard_normal((8, 9, 16)).astype(np.float32))  # LTX-2's K = 9
    inline, large = plan_externalisation(small.payload, DEFAULT_INLINE_LIMIT_BYTES)
    assert set(large) == {"frames"} and "audio_latents" in inline  # ~6 KB of latents stay inline
    long = encode_state(segment_idx=1, frame_number=16, fps=FPS, frames=frames[:1],
                        audio_latents=draw.standard_normal((8, 200, 16)).astype(np.float32))  # 8 s of audio context
    inline, large = plan_externalisation(long.payload, DEFAULT_INLINE_LIMIT_BYTES)
    assert "audio_latents" in large and "frames" in inline
