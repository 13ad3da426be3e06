"""The service running a real (tiny, random) diffusers LTX pipeline on CPU, end to end."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpu.diffusers_backend import DiffusersGenerator
from rtc_server.app import POOL
from rtc_server.clients.webrtc_client import WebRTCClient
from rtc_server.clients.ws_client import WebSocketClient
from tests.conftest import make_config
from tests.rtc_server.test_cli import REPO

K = 9  # conditioning frames
INIT = {"type": "session_init_v2", "curated_prompts": ["a red fox running through fresh snow"]}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        out = tmp_path_factory.mktemp("tiny-ltx")
        subprocess.run([sys.executable, "-m", "gpu.tiny_model", str(out)], cwd=REPO, check=True, timeout=300)
        yield out


def diffusers_config(model: Path, pool_backend: str = "inprocess") -> Any:
    return make_config(
        generator={
            "backend": "diffusers",
            "options": {"model_path": str(model), "device": "cpu", "dtype": "float32", "conditioning_frames": K},
        },
        default_request={"sampling": {"width": 64, "height": 64, "fps": 16, "num_frames": 16, "num_inference_steps": 2}},
        pool={"backend": pool_backend, "max_parallel": 1},
    )


class CallRecorder:
    """Wraps the in-process generator's pipeline and generate() to see what each call really got."""

    def __init__(self, generator: DiffusersGenerator) -> None:
        self.outputs: list[np.ndarray] = []
        self.conditions: list[list[Any]] = []
        pipeline = generator._pipeline
        original_call = type(pipeline).__call__
        original_generate = generator.generate

        def spy_call(pipe: Any, *args: Any, **kwargs: Any) -> Any:
            self.conditions.append(list(kwargs.get("conditions") or []))
            return original_call(pipe, *args, **kwargs)

        def spy_generate(request: Any, on_step: Any = None, on_frames: Any = None) -> Any:
            result = original_generate(request, on_step, on_frames)
            self.outputs.append(result.frames.copy())
            return result

        pipeline.__class__ = type("SpiedPipeline", (type(pipeline),), {"__call__": spy_call})
        generator.generate = spy_generate  # type: ignore[method-assign]


async def test_webrtc_streams_diffusers_segments_conditioned_on_the_last_k_frames(
    start_server: Any, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    server = await start_server(diffusers_config(tiny_model))
    generator = server.app[POOL]._generator  # type: ignore[attr-defined]
    assert isinstance(generator, DiffusersGenerator)
    recorder = CallRecorder(generator)
    async with WebRTCClient(server.url, session_init=INIT) as client:
        await client.connect()
        await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 1, timeout=60)
        for _ in range(200):
            if len(client.frames) >= 16:
                break
            await asyncio.sleep(0.05)
        assert {(f.width, f.height) for f in client.frames} == {(64, 64)}
    assert len(recorder.outputs) >= 2 and recorder.outputs[0].shape == (16, 64, 64, 3)
    # The second segment's pipeline call was given the first segment's last K frames as video.
    second = recorder.conditions[1]
    assert len(second) == 1 and second[0].frame_index == 0
    given = np.stack([np.asarray(image.convert("RGB")) for image in second[0].video])
    assert given.shape == (K, 64, 64, 3)
    assert np.array_equal(given, recorder.outputs[0][-K:])


@pytest.mark.parametrize("pool_backend", ["inprocess", "subprocess"])
async def test_websocket_streams_diffusers_segments(
    start_server: Any, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pool_backend: str
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    server = await start_server(diffusers_config(tiny_model, pool_backend))
    async with WebSocketClient(server.url, session_init=INIT) as client:
        await client.connect()
        await client.wait_for_event("media_segment_complete", lambda e: e["segment_idx"] == 1, timeout=90)
        await client.send({"type": "snapshot_state"})
        snapshot = (await client.wait_for_event("continuation_state_snapshot"))["state"]
    assert snapshot["kind"] == "ltx.v1" and snapshot["payload"]["segment_idx"] >= 2
    segments = client.complete_segments[:2]
    for segment in segments:
        path = tmp_path / f"s{segment.segment_idx}.mp4"
        path.write_bytes(segment.data)
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-count_frames", "-show_entries", "stream=width,height,nb_read_frames",
             "-of", "csv=p=0", str(path)],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        assert probe == "64,64,16"


def test_a_missing_or_broken_model_directory_fails_at_start_naming_the_path(tmp_path: Path) -> None:
    for model_dir in (tmp_path / "absent", tmp_path):
        config = tmp_path / "bad.yaml"
        config.write_text(f"generator:\n  backend: diffusers\n  options:\n    model_path: {model_dir}\n")
        result = subprocess.run(
            [sys.executable, "-m", "rtc_server", "--config", str(config)],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 2
        assert str(model_dir) in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("sampling", "key"),
    [
        ("{width: 100, height: 64, num_frames: 16}", "default_request.sampling.width 100"),
        ("{width: 64, height: 48, num_frames: 16}", "default_request.sampling.height 48"),
        ("{width: 64, height: 64, num_frames: 12}", "default_request.sampling.num_frames 12"),
        ("{width: 64, height: 64, num_frames: 16, num_inference_steps: 9}",
         "default_request.sampling.num_inference_steps 9"),
    ],
)
def test_a_size_the_model_cannot_make_stops_the_server_naming_the_key(
    tiny_model: Path, tmp_path: Path, sampling: str, key: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "generator:\n  backend: diffusers\n"
        f"  options: {{model_path: {tiny_model}, timesteps: [1000, 993, 987, 981, 975, 909, 725, 0.03]}}\n"
        f"default_request:\n  sampling: {sampling}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "rtc_server", "--config", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert key in result.stderr and "Traceback" not in result.stderr


def test_conditioning_frames_off_the_8n_plus_1_grid_stop_the_server_naming_the_option(
    tiny_model: Path, tmp_path: Path
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        f"generator:\n  backend: diffusers\n  options: {{model_path: {tiny_model}, conditioning_frames: 8}}\n"
        "default_request:\n  sampling: {width: 64, height: 64, num_frames: 16}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "rtc_server", "--config", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2 and "generator.options.conditioning_frames 8" in result.stderr
