"""``python -m rtc_server`` as a real subprocess, and the start-up checks it relies on."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from aiohttp.test_utils import TestServer

from prompt.safety import SafetyModelError
from rtc_server.app import build_app
from rtc_server.cli import access_problem
from tests.conftest import LOOPBACK, make_config

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_server_becomes_ready_and_exits_0_on_sigterm_within_5s() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "rtc_server", "--config", "configs/dev.yaml", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        status: tuple[int, dict] | None = None
        while time.monotonic() < deadline:
            try:
                status = get_json(f"http://127.0.0.1:{port}/readyz")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
                continue
            if status[0] == 200:
                break
            time.sleep(0.1)
        assert status is not None and status[0] == 200, status
        assert status[1]["status"] == "ready" and status[1]["ready_gpu_workers"] == 1
        health = get_json(f"http://127.0.0.1:{port}/healthz")
        assert health[1]["status"] == "ok"
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        out, err = process.communicate(timeout=5)
        assert time.monotonic() - started < 5
        assert process.returncode == 0, err
        assert f"http://127.0.0.1:{port}/" in out
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("streaming:\n  lookahead_segments: lots\n")
    result = subprocess.run(
        [sys.executable, "-m", "rtc_server", "--config", str(config)],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "streaming.lookahead_segments" in result.stderr
    assert str(config) in result.stderr


def test_sigterm_with_worker_processes_leaves_none_behind(tmp_path: Path) -> None:
    config = tmp_path / "subprocess.yaml"
    # Worker pids are operator detail in /status: the admin token shows them.
    config.write_text("server:\n  admin_token: cli-test-admin\npool:\n  backend: subprocess\n  num_workers: 2\n")
    admin = {"Authorization": "Bearer cli-test-admin"}
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "rtc_server", "--config", str(config), "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status = get_json(f"http://127.0.0.1:{port}/status", admin)[1]
                if status["warmup_successful_gpus"] == 2:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "workers did not come up"
            time.sleep(0.1)
        pids = [worker["pid"] for worker in status["gpu_status"].values()]
        assert all(pids)
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=10)
        assert process.returncode == 0, errors
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_safety_enabled_with_an_unusable_model_exits_2_naming_the_path(tmp_path: Path) -> None:
    # Fail closed: the server refuses to start rather than let prompts through unchecked.
    not_a_model = tmp_path / "not-a-model.bin"
    not_a_model.write_text("__label__safe a fox\n")
    for model in (tmp_path / "absent" / "model.bin", not_a_model):
        config = tmp_path / "safety.yaml"
        config.write_text(f"streaming:\n  safety:\n    enabled: true\n    classifier_path: {model}\n")
        result = subprocess.run(
            [sys.executable, "-m", "rtc_server", "--config", str(config), "--port", str(free_port())],
            cwd=REPO,
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2, result.stderr
        assert str(model) in result.stderr and "streaming.safety" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and "listening" not in result.stdout


async def test_the_app_itself_fails_closed_without_the_cli_check(tmp_path: Path) -> None:
    # An app built by other code (tests, an embedding) still refuses to start with an unusable model.
    missing = tmp_path / "model.bin"
    config = make_config(streaming={"safety": {"enabled": True, "classifier_path": str(missing)}})
    server = TestServer(build_app(config), host=LOOPBACK, port=0)
    try:
        with pytest.raises(SafetyModelError, match=str(missing)):
            await server.start_server()
    finally:
        await server.close()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rtc_server", *args],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def test_binding_beyond_loopback_without_auth_exits_2_before_listening() -> None:
    # Anyone on the network could spend the GPUs: refuse rather than serve an open port by accident.
    result = run_cli("--host", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode == 2, result.stderr
    assert "server.host 0.0.0.0" in result.stderr and "auth" in result.stderr
    assert "listening" not in result.stdout and "Traceback" not in result.stderr


def test_auth_mode_none_is_an_explicit_choice_to_serve_everyone() -> None:
    open_config = make_config(server={"host": "0.0.0.0"}, auth={"mode": "none"})
    assert access_problem(open_config) is None
    assert access_problem(make_config(server={"host": "0.0.0.0"})) is not None
    assert access_problem(make_config(server={"host": "::1"})) is None


def test_a_token_variable_missing_from_the_environment_exits_2_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "auth.yaml"
    config.write_text("auth:\n  mode: token\n  token_envs: [RTCVS_TEST_TOKEN_UNSET]\n")
    env = {key: value for key, value in os.environ.items() if key != "RTCVS_TEST_TOKEN_UNSET"}
    result = run_cli("--config", str(config), "--port", str(free_port()), env=env)
    assert result.returncode == 2, result.stderr
    assert "RTCVS_TEST_TOKEN_UNSET" in result.stderr
    assert "listening" not in result.stdout and "Traceback" not in result.stderr


def test_a_turn_secret_missing_from_the_environment_exits_2_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "turn.yaml"
    config.write_text(
        "webrtc:\n  turn:\n    urls: ['turn:turn.example.com:3478']\n    secret_env: RTCVS_TEST_TURN_UNSET\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "RTCVS_TEST_TURN_UNSET"}
    result = run_cli("--config", str(config), "--port", str(free_port()), env=env)
    assert result.returncode == 2, result.stderr
    assert "RTCVS_TEST_TURN_UNSET" in result.stderr and "webrtc.turn.secret_env" in result.stderr
    assert "listening" not in result.stdout and "Traceback" not in result.stderr


def test_check_prints_the_resolved_config_with_secrets_masked_and_exits_0(tmp_path: Path) -> None:
    config = tmp_path / "check.yaml"
    config.write_text(
        "server:\n  admin_token: admin-secret-value\nstore:\n  backend: redis\n  redis_url: redis://:redis-pw@127.0.0.1:6379/0\n"
        "auth:\n  mode: token\n  token_envs: [RTCVS_CHECK_TOKEN]\n"
        "webrtc:\n  ice_servers: [{urls: 'turn:turn.example.com', username: u, credential: turn-pw}]\n"
    )
    env = {**os.environ, "RTCVS_CHECK_TOKEN": "env-token-value"}
    result = run_cli("--config", str(config), "--check", env=env)
    assert result.returncode == 0, result.stderr
    for secret in ("admin-secret-value", "redis-pw", "turn-pw", "env-token-value"):
        assert secret not in result.stdout
    printed = yaml.safe_load(result.stdout)
    assert printed["server"]["admin_token"] == "***"
    assert printed["auth"]["token_envs"] == ["RTCVS_CHECK_TOKEN"]  # the variable's name, not its value
    assert printed["store"]["redis_url"] == "redis://:***@127.0.0.1:6379/0"
    assert printed["streaming"]["prompt"]["max_tokens"] == 256  # not a secret
    assert printed["streaming"]["lookahead_segments"] == 1  # every key, defaults included
    assert "listening" not in result.stdout


def test_check_with_no_config_prints_the_embedded_defaults() -> None:
    result = run_cli("--check")
    assert result.returncode == 0, result.stderr
    server = yaml.safe_load(result.stdout)["server"]
    assert (server["host"], server["port"]) == ("127.0.0.1", 8080)


def test_check_on_a_bad_config_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("streaming:\n  lookahead_segments: lots\n")
    result = run_cli("--config", str(config), "--check")
    assert result.returncode == 2
    assert "streaming.lookahead_segments" in result.stderr and str(config) in result.stderr
    assert result.stdout == ""


def test_check_runs_the_startup_checks_that_need_no_network(tmp_path: Path) -> None:
    config = tmp_path / "auth.yaml"
    config.write_text("auth:\n  mode: token\n  token_envs: [RTCVS_CHECK_UNSET]\n")
    env = {key: value for key, value in os.environ.items() if key != "RTCVS_CHECK_UNSET"}
    result = run_cli("--config", str(config), "--check", env=env)
    assert result.returncode == 2 and "RTCVS_CHECK_UNSET" in result.stderr and str(config) in result.stderr
    result = run_cli("--check", "--host", "0.0.0.0")
    assert result.returncode == 2 and "server.host 0.0.0.0" in result.stderr
    config.write_text("generator:\n  backend: diffusers\n  options: {model_path: /nonexistent/model}\n")
    result = run_cli("--config", str(config), "--check")
    assert result.returncode == 2 and "/nonexistent/model" in result.stderr and "Traceback" not in result.stderr
