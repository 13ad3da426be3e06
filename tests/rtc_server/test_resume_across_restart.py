"""Resume a stream on a second server process after the first one stopped, through a real Redis."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from rtc_server.clients.ws_client import WebSocketClient
from tests.rtc_server.test_cli import REPO, free_port, get_json

INIT = {"type": "session_init_v2", "curated_prompts": ["a red fox running through fresh snow"]}


def start_server(config_path: Path, port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "rtc_server", "--config", str(config_path), "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if get_json(f"http://127.0.0.1:{port}/readyz")[0] == 200:
                return process
        except OSError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.communicate()[1]}")
        time.sleep(0.1)
    process.kill()
    process.communicate()
    raise TimeoutError("server not ready")


def stop_server(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    _, errors = process.communicate(timeout=10)
    assert process.returncode == 0, errors


async def test_stream_continues_on_a_new_server_process(fresh_redis_url: str, tmp_path: Path) -> None:
    config = {
        "default_request": {"sampling": {"width": 128, "height": 128, "num_frames": 12, "num_inference_steps": 1}},
        # A tiny inline limit sends the motion state through the blob store as well.
        "store": {"backend": "redis", "redis_url": fresh_redis_url, "inline_limit_bytes": 16},
    }
    config_path = tmp_path / "redis.yaml"
    config_path.write_text(yaml.safe_dump(config))

    port_a = free_port()
    server_a = start_server(config_path, port_a)
    try:
        async with WebSocketClient(f"http://127.0.0.1:{port_a}", session_init=INIT) as client:
            await client.connect()
            await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 2)
            await client.send({"type": "snapshot_state"})
            snapshot = (await client.wait_for_event("continuation_state_snapshot"))["state"]
    finally:
        stop_server(server_a)
    assert any(isinstance(v, dict) and "$blob" in v for v in snapshot["payload"].values())
    next_idx = snapshot["payload"]["segment_idx"]

    port_b = free_port()
    server_b = start_server(config_path, port_b)
    try:
        init = {**INIT, "continuation_state": snapshot}
        async with WebSocketClient(f"http://127.0.0.1:{port_b}", session_init=init) as client:
            await client.connect()
            start = await client.wait_for_event("ltx2_segment_start")
            assert start["segment_idx"] == next_idx
            assert not client.events_of("error")
            await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == next_idx)
    finally:
        stop_server(server_b)
