"""``python -m rtc_server.router`` as a real process: bad configs, readiness, SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from rtc_server.clients.ws_client import WebSocketClient
from tests.conftest import LOOPBACK, RunningServer
from tests.processes import free_port
from tests.rtc_server.router.conftest import INIT, REPO, spawn, wait_http_ok

EXIT_TIMEOUT_S = 10.0


def run_router(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rtc_server.router", *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_bad_config_exits_2_naming_the_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"router": {"replicas": [{"url": "http://a:8080"}], "failure_threshold": 0}}))
    result = run_router("--config", str(bad))
    assert result.returncode == 2, result.stderr
    assert str(bad) in result.stderr and "router.failure_threshold" in result.stderr

    two_primaries = {"replicas": [{"url": "http://a", "role": "primary"}, {"url": "http://b", "role": "primary"}]}
    bad.write_text(yaml.safe_dump(two_primaries))
    result = run_router("--config", str(bad))
    assert result.returncode == 2 and "replicas" in result.stderr and "at most one replica may be primary" in result.stderr

    result = run_router("--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "cannot read config file" in result.stderr


async def test_sigterm_closes_bridged_sessions_with_1001_and_exits_0(tmp_path: Path, server: RunningServer) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(
        yaml.safe_dump({"host": LOOPBACK, "replicas": [{"url": server.url}], "health_check_interval_seconds": 0.2})
    )
    handle = spawn("rtc_server.router", config, free_port(LOOPBACK), tmp_path / "router.log")
    process = handle.process
    try:
        await wait_http_ok(handle, "/readyz")
        async with WebSocketClient(handle.url, session_init=INIT) as client:
            await client.connect()
            await client.wait_for_event("ltx2_segment_start", timeout=20)
            process.send_signal(signal.SIGTERM)
            assert await client.wait_closed(timeout=EXIT_TIMEOUT_S) == 1001
        assert await asyncio.to_thread(process.wait, EXIT_TIMEOUT_S) == 0, handle.log()
        assert "listening on" in handle.log()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

