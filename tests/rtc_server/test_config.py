from pathlib import Path

import pytest

from rtc_server.config import ConfigError, ServiceConfig, load_config

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
