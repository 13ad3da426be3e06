"""Router config: the original system's keys and defaults, validation naming the key, the shipped example."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rtc_server.config import ConfigError
from rtc_server.router.config import RouterConfig, load_router_config

REPO = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_are_the_original_systems() -> None:
    config = RouterConfig.model_validate({"replicas": [{"url": "http://a:8080"}]})
    assert (config.host, config.port, config.health_check_path) == ("0.0.0.0", 9000, "/health")
    assert (config.health_check_interval_seconds, config.health_check_timeout_seconds) == (5.0, 2.0)
    assert (config.failure_threshold, config.recovery_threshold) == (3, 2)
    assert config.replicas[0].role == "secondary" and config.replicas[0].primary is False
    assert config.redis_url is None


def test_the_shipped_example_loads() -> None:
    config = load_router_config(REPO / "configs" / "router.yaml")
    assert [r.role for r in config.replicas] == ["primary", "secondary"]
    assert config.redis_url is not None and config.port == 9000


def test_the_router_wrapper_and_the_original_spellings_are_accepted(tmp_path: Path) -> None:
    data = {
        "router": {
            "port": 9100,
            "replicas": [{"url": "http://streamer-a:8000/", "primary": True}, {"url": "HTTP://Streamer-B:8000"}],
            "health_check": {"path": "/status", "interval_seconds": 1, "failure_threshold": 4},
        }
    }
    config = load_router_config(write(tmp_path, data))
    assert [r.url for r in config.replicas] == ["http://streamer-a:8000", "http://streamer-b:8000"]
    assert config.replicas[0].role == "primary"
    assert (config.health_check_path, config.health_check_interval_seconds, config.failure_threshold) == ("/status", 1, 4)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"replicas": []}, "replicas"),
        ({}, "replicas"),
        ({"replicas": [{"url": "ftp://a"}]}, "replicas.0.url"),
        ({"replicas": [{"url": "a:8080"}]}, "replicas.0.url"),
        ({"replicas": [{"url": "http://a:8080"}, {"url": "http://A:8080/"}]}, "replicas"),
        ({"replicas": [{"url": "http://a", "role": "primary"}, {"url": "http://b", "role": "primary"}]}, "replicas"),
        ({"replicas": [{"url": "http://a", "role": "leader"}]}, "replicas.0.role"),
        ({"replicas": [{"url": "http://a", "weight": 2}]}, "replicas.0.weight"),
        ({"replicas": [{"url": "http://a"}], "failure_threshold": 0}, "failure_threshold"),
        ({"replicas": [{"url": "http://a"}], "recovery_threshold": 0}, "recovery_threshold"),
        ({"replicas": [{"url": "http://a"}], "health_check_interval_seconds": 0}, "health_check_interval_seconds"),
        ({"replicas": [{"url": "http://a"}], "health_check_timeout_seconds": -1}, "health_check_timeout_seconds"),
        ({"replicas": [{"url": "http://a"}], "health_check_path": "health"}, "health_check_path"),
        ({"replicas": [{"url": "http://a"}], "redis_url": "http://r"}, "redis_url"),
        ({"replicas": [{"url": "http://a"}], "prot": 1}, "prot"),
    ],
)
def test_a_bad_config_is_an_error_naming_the_key(tmp_path: Path, data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_router_config(write(tmp_path, data))
    assert f"  {key}:" in str(caught.value), str(caught.value)
    with pytest.raises(ConfigError) as wrapped:
        load_router_config(write(tmp_path, {"router": data}))
    assert f"  router.{key}:" in str(wrapped.value), str(wrapped.value)
