import re
from pathlib import Path

import pytest

from rtc_server.config import ConfigError, LimitsConfig, ServiceConfig, load_config

REPO = Path(__file__).resolve().parents[2]


def test_dev_config_loads_with_synthetic_backend() -> None:
    config = load_config(REPO / "configs" / "dev.yaml")
    assert config.generator.backend == "synthetic"
    assert config.default_request.sampling.fps == 24


def test_empty_file_gives_embedded_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == ServiceConfig()


def test_unknown_key_is_named_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("streaming:\n  max_sesions: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "streaming.max_sesions" in str(info.value)
    assert str(path) in str(info.value)


def test_wrong_type_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("default_request:\n  sampling:\n    fps: fast\n")
    with pytest.raises(ConfigError, match=r"default_request\.sampling\.fps"):
        load_config(path)


def test_inconsistent_bitrates_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("webrtc:\n  min_bitrate: 5000000\n  max_bitrate: 1000000\n")
    with pytest.raises(ConfigError, match="webrtc"):
        load_config(path)


def test_missing_file_and_bad_yaml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "broken.yaml"
    path.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


# Limits.


# configs/router.yaml is the router's (python -m rtc_server.router), tested in tests/rtc_server/router/.
SERVER_CONFIGS = sorted(path for path in (REPO / "configs").glob("*.yaml") if path.name != "router.yaml")


@pytest.mark.parametrize("name", SERVER_CONFIGS, ids=lambda path: path.name)
def test_every_shipped_config_lies_within_its_limits(name: Path) -> None:
    config = load_config(name)
    sampling = config.default_request.sampling
    assert sampling.num_inference_steps <= config.limits.max_inference_steps
    assert sampling.num_frames <= config.limits.max_num_frames


def test_limits_defaults_and_each_is_documented() -> None:
    limits = LimitsConfig()
    assert limits.max_inference_steps == 50
    assert limits.guidance_scale_range == (0.0, 20.0)
    assert (limits.max_width, limits.max_height, limits.max_num_frames) == (1280, 1280, 240)
    assert (limits.max_prompt_chars, limits.max_curated_prompts) == (2000, 64)
    assert limits.max_image_pixels == 4096 * 4096
    assert (limits.messages_per_second, limits.message_burst, limits.llm_calls_per_minute) == (20.0, 40, 30)
    assert limits.max_queued_event_bytes == 4 * 1024 * 1024
    assert limits.max_rss_bytes is None
    for name, field in LimitsConfig.model_fields.items():
        assert field.description and len(field.description) > 40, f"limits.{name} says nothing of its default"


def test_limits_load_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "limits.yaml"
    path.write_text("limits:\n  max_inference_steps: 8\n  guidance_scale_range: [1.0, 3.5]\n  max_rss_bytes: 2000000000\n")
    limits = load_config(path).limits
    assert limits.max_inference_steps == 8
    assert limits.guidance_scale_range == (1.0, 3.5)
    assert limits.max_rss_bytes == 2_000_000_000


@pytest.mark.parametrize(
    ("yaml_text", "named"),
    [
        ("default_request:\n  sampling:\n    num_inference_steps: 80\n", "limits.max_inference_steps"),
        ("limits:\n  max_width: 256\ndefault_request:\n  sampling:\n    width: 512\n", "limits.max_width"),
        ("limits:\n  max_height: 256\n", "limits.max_height"),
        ("limits:\n  max_num_frames: 12\n", "limits.max_num_frames"),
        ("limits:\n  guidance_scale_range: [2.0, 5.0]\n", "limits.guidance_scale_range"),
        ("limits:\n  max_prompt_chars: 10\n", "limits.max_prompt_chars"),
    ],
)
def test_default_request_beyond_the_limits_is_a_config_error(tmp_path: Path, yaml_text: str, named: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert named in str(info.value)
    assert "default_request." in str(info.value)


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("limits:\n  guidance_scale_range: [5.0, 1.0]\n", "guidance_scale_range"),
        ("limits:\n  guidance_scale_range: [0.0, .inf]\n", "guidance_scale_range"),
        ("limits:\n  guidance_scale_range: [-1.0, 2.0]\n", "guidance_scale_range"),
        ("limits:\n  guidance_scale_range: [1.0]\n", "limits.guidance_scale_range"),
        ("limits:\n  max_inference_steps: 5000\n", "limits.max_inference_steps"),
        ("limits:\n  max_width: 8192\n", "limits.max_width"),
        ("limits:\n  max_prompt_chars: 100000\n", "limits.max_prompt_chars"),
        ("limits:\n  max_image_pixels: 0\n", "limits.max_image_pixels"),
        ("limits:\n  messages_per_second: .nan\n", "limits.messages_per_second"),
        ("limits:\n  max_rss_bytes: 0\n", "limits.max_rss_bytes"),
        ("limits:\n  max_queued_event_bytes: 100\n", "limits.max_queued_event_bytes"),
        ("default_request:\n  sampling:\n    seed: -1\n", "default_request.sampling.seed"),
        ("default_request:\n  sampling:\n    guidance_scale: .nan\n", "default_request.sampling.guidance_scale"),
    ],
)
def test_unusable_limits_are_named(tmp_path: Path, yaml_text: str, key: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(path)


# Recording.


def test_recording_is_off_by_default_and_loads_from_yaml(tmp_path: Path) -> None:
    assert ServiceConfig().streaming.recording_dir is None
    assert ServiceConfig().streaming.recording_retention_seconds == 24 * 3600
    path = tmp_path / "rec.yaml"
    path.write_text(f"streaming:\n  recording_dir: {tmp_path / 'rec'}\n  recording_retention_seconds: 60\n")
    streaming = load_config(path).streaming
    assert streaming.recording_dir == str(tmp_path / "rec")
    assert streaming.recording_retention_seconds == 60


@pytest.mark.parametrize(
    "yaml_text",
    [
        "streaming:\n  recording_dir: ''\n",
        "streaming:\n  recording_retention_seconds: 0\n",
        "streaming:\n  recording_retention_seconds: -5\n",
        "streaming:\n  recording_retention_seconds: .nan\n",
        "streaming:\n  recording_retention_seconds: .inf\n",
    ],
)
def test_unusable_recording_settings_are_named(tmp_path: Path, yaml_text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=r"streaming\.recording_"):
        load_config(path)
