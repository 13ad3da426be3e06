"""``python -m rtc_server`` as a real subprocess."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
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
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "streaming.lookahead_segments" in result.stderr
    assert str(config) in result.stderr


def test_sigterm_with_worker_processes_leaves_none_behind(tmp_path: Path) -> None:
    config = tmp_path / "subprocess.yaml"
    config.write_text("pool:\n  backend: subprocess\n  num_workers: 2\n")
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
                status = get_json(f"http://127.0.0.1:{port}/status")[1]
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
