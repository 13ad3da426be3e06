"""The original system's serve-config layout (FastVideo ``ServeConfig``), loaded through its translation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rtc_server.config import ConfigError
from rtc_server.config_compat import is_original_layout, load_any_config

REPO = Path(__file__).resolve().parents[2]

# FastVideo's examples/serving/streaming_demo.yaml, model_path pointed at a local directory.
ORIGINAL_DEMO = """
generator:
  model_path: {model}
  engine:
    num_gpus: 1
    offload: {{dit: false, dit_layerwise: false, text_encoder: false, vae: false, pin_cpu_memory: true}}
    compile: {{enabled: true, text_encoder_enabled: true, backend: inductor, fullgraph: true, dynamic: false}}
    quantization: {{transformer_quant: NVFP4}}
  pipeline:
    workload_type: t2v
    vae_tiling: false
    components: {{config_root: {model}}}
    preset_overrides: {{refine: {{enabled: true, num_inference_steps: 2, guidance_scale: 1.0, add_noise: true}}}}
server: {{host: 127.0.0.1, port: 8009, output_dir: outputs/}}
default_request:
  sampling: {{num_frames: 121, height: 704, width: 1280, num_inference_steps: 5, fps: 24}}
streaming:
  session_timeout_seconds: 240
  generation_segment_cap: 6
  stream_mode: av_fmp4
  warmup: {{enabled: true, prompt: "A cinematic drone shot over coastal cliffs", timeout_seconds: 2400}}
  pool: {{num_workers: 2, enable_audio_reencode: true, conditioning_num_frames: 9, conditioning_end_offset: 0}}
  prompt: {{enabled: true, provider: groq, model: gpt-oss-120b, timeout_ms: 15000}}
  safety: {{enabled: false}}
"""


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A directory that passes the generator preflight (no weights are read by it)."""
    model = tmp_path / "ltx2-model"
    (model / "vae").mkdir(parents=True)
    (model / "transformer").mkdir()
    index = {"_class_name": "LTX2ConditionPipeline", "vae": ["diffusers", "V"], "transformer": ["diffusers", "T"]}
    (model / "model_index.json").write_text(json.dumps(index))
    (model / "vae" / "config.json").write_text(
        json.dumps({"spatial_compression_ratio": 32, "temporal_compression_ratio": 8})
    )
    return model


def write(tmp_path: Path, text: str, name: str = "serve.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rtc_server", *args], cwd=REPO, check=False, capture_output=True, text=True, timeout=60
    )


def test_detects_the_original_layout_and_never_ours() -> None:
    assert is_original_layout({"generator": {"model_path": "/m"}})
    assert is_original_layout({"streaming": {"warmup": {"enabled": False}}})
    assert is_original_layout({"streaming": {"prompt": {"enabled": True}}})
    assert is_original_layout({"server": {"output_dir": "out/"}})
    for ours in sorted((REPO / "configs").glob("*.yaml")):
        assert not is_original_layout(yaml.safe_load(ours.read_text()) or {}), ours.name


def test_translated_keys_land_where_they_should(tmp_path: Path, model_dir: Path) -> None:
    loaded = load_any_config(write(tmp_path, ORIGINAL_DEMO.format(model=model_dir)))
    config = loaded.config
    assert loaded.layout == "original"
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8009)
    assert config.generator.backend == "diffusers_ltx2"
    options = config.generator.options
    assert options["model_path"] == str(model_dir) and options["conditioning_frames"] == 9
    assert options["enable_model_cpu_offload"] is False and options["enable_vae_tiling"] is False
    assert (config.pool.backend, config.pool.num_workers, config.pool.warmup) == ("subprocess", 2, True)
    assert config.pool.boot_timeout_seconds == 2400
    sampling = config.default_request.sampling
    assert (sampling.width, sampling.height, sampling.fps, sampling.num_inference_steps) == (1280, 704, 24, 5)
    assert sampling.num_frames == 112  # 121 frames per call, 9 of them the redrawn conditioning frames
    streaming = config.streaming
    assert (streaming.session_timeout_seconds, streaming.generation_segment_cap) == (240, 6)
    assert [(p.kind, p.model) for p in streaming.prompt.providers] == [("groq", "gpt-oss-120b")]
    assert streaming.prompt.timeout_ms == 15000 and streaming.prompt.deadline_ms == 15000
    named = {warning.key for warning in loaded.warnings}
    assert {
        "server.output_dir",
        "generator.engine.offload.pin_cpu_memory",
        "generator.engine.compile.enabled",
        "generator.engine.quantization.transformer_quant",
        "generator.pipeline.preset_overrides.refine.enabled",
        "streaming.warmup.prompt",
    } <= named
    assert not any(key.startswith(("streaming.pool", "server.host", "default_request")) for key in named)


def test_the_original_defaults_apply_where_the_file_is_silent(tmp_path: Path, model_dir: Path) -> None:
    config = load_any_config(write(tmp_path, f"generator:\n  model_path: {model_dir}\nstreaming: {{}}\n")).config
    assert (config.server.host, config.server.port) == ("0.0.0.0", 8000)
    assert config.streaming.generation_segment_cap == 6
    assert config.generator.options["conditioning_frames"] == 9
    assert config.generator.options["enable_model_cpu_offload"] is True  # every offload flag defaults on there
    assert config.streaming.prompt.providers == []  # enhancement is off unless enabled


def test_our_own_sections_may_sit_beside_the_original_layout(tmp_path: Path, model_dir: Path) -> None:
    text = (
        f"generator: {{model_path: {model_dir}}}\nserver: {{admin_token: t0ken, port: 9000}}\n"
        "streaming: {warmup: {enabled: false}, max_sessions: 3}\nauth: {mode: none}\npool: {num_workers: 4}\n"
    )
    config = load_any_config(write(tmp_path, text)).config
    assert config.server.admin_token == "t0ken" and config.server.port == 9000
    assert config.streaming.max_sessions == 3 and config.pool.warmup is False
    assert config.auth is not None and config.auth.mode == "none"
    assert config.pool.num_workers == 4  # ours wins over the translated value


@pytest.mark.parametrize(
    ("snippet", "key"),
    [
        ("streaming: {stream_mode: legacy_jpeg}", "streaming.stream_mode"),
        ("streaming: {pool: {conditioning_end_offset: 2}}", "streaming.pool.conditioning_end_offset"),
        (
            "streaming: {}\ngenerator: {model_path: M, pipeline: {components: {lora_path: /l}}}",
            "generator.pipeline.components.lora_path",
        ),
        (
            "streaming: {}\ngenerator: {model_path: M, pipeline: {workload_type: t2i}}",
            "generator.pipeline.workload_type",
        ),
        ("server: {output_dir: out/}", "streaming"),
        ("streaming: {prompt: {provider: openai}}", "streaming.prompt.provider"),
        ("streaming: {pool: {num_wrokers: 2}}", "streaming.pool.num_wrokers"),
    ],
)
def test_a_key_whose_loss_would_change_behaviour_is_an_error_naming_it(
    tmp_path: Path, model_dir: Path, snippet: str, key: str
) -> None:
    text = snippet.replace("model_path: M", f"model_path: {model_dir}")
    if "generator" not in text:
        text += f"\ngenerator: {{model_path: {model_dir}}}\n"
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_any_config(path)
    assert key in str(caught.value) and str(path) in str(caught.value)


def test_a_bad_translated_value_names_the_files_own_key(tmp_path: Path, model_dir: Path) -> None:
    path = write(tmp_path, f"generator: {{model_path: {model_dir}}}\nstreaming: {{warmup: {{timeout_seconds: -1}}}}\n")
    with pytest.raises(ConfigError) as caught:
        load_any_config(path)
    assert "pool.boot_timeout_seconds" in str(caught.value) and "streaming.warmup.timeout_seconds" in str(caught.value)


def test_check_prints_the_translated_config_and_names_each_unhonoured_key(tmp_path: Path, model_dir: Path) -> None:
    result = run_cli("--config", str(write(tmp_path, ORIGINAL_DEMO.format(model=model_dir))), "--check")
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["generator"]["options"]["model_path"] == str(model_dir)
    assert printed["default_request"]["sampling"]["num_frames"] == 112
    assert printed["pool"]["num_workers"] == 2 and printed["server"]["port"] == 8009
    assert "original FastVideo serve layout" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert any("generator.engine.compile.enabled" in line for line in warnings)
    assert any("streaming.warmup.prompt" in line for line in warnings)
    assert "listening" not in result.stdout


def test_check_on_a_hub_model_id_exits_2_naming_the_key(tmp_path: Path) -> None:
    result = run_cli(
        "--config", str(write(tmp_path, ORIGINAL_DEMO.format(model="FastVideo/LTX2-Distilled-Diffusers"))), "--check"
    )
    assert result.returncode == 2, result.stderr
    assert "generator.model_path" in result.stderr and "FastVideo/LTX2-Distilled-Diffusers" in result.stderr
    assert "Traceback" not in result.stderr
