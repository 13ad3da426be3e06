"""Failover between real server processes sharing a real Redis: a replica killed (SIGKILL) mid-stream,
and a rolling restart (SIGTERM under four sessions). Clients resume on the other replica themselves,
as the router and the page will do for them."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rtc_server.clients.webrtc_client import WebRTCClient
from tests.rtc_server.failover import (
    CURATED,
    NUM_FRAMES,
    Client,
    first_frame_after,
    open_client,
    resume_init,
    sampling,
    seen_segments,
    wait_closed,
)
from tests.rtc_server.test_cli import REPO, free_port, get_json

INIT = {"type": "session_init_v2", "curated_prompts": CURATED, "loop_generation_enabled": True}
READY_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 10.0  # SIGTERM: drain (a segment being watched may take 2 s) + aiohttp's 3 s + cleanup


class Replica:
    """One ``python -m rtc_server`` process; its log goes to a file (a full pipe would stall it)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("w") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rtc_server", "--config", str(config), "--port", str(self.port)],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=sink,
                text=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if get_json(f"{self.url}/readyz")[0] == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"replica exited: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        self.process.kill()
        raise TimeoutError("replica not ready")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def replicas(fresh_redis_url: str, tmp_path: Path) -> Iterator[list[Replica]]:
    """Two replicas of one config sharing the Redis store."""
    config = {
        "default_request": {"sampling": sampling()},
        "store": {"backend": "redis", "redis_url": fresh_redis_url},
        "webrtc": {"ice_host_addresses": ["127.0.0.1"]},
        "streaming": {"max_sessions": 8},
        "limits": {"sessions_per_client": 8, "offers_per_minute": 120},
    }
    path = tmp_path / "replica.yaml"
    path.write_text(yaml.safe_dump(config))
    started: list[Replica] = []
    try:
        for name in ("a", "b"):
            started.append(Replica(path, tmp_path / f"replica-{name}.log"))
        yield started
    finally:
        for replica in started:
            replica.stop()


def check_continued(resumed: Client, start: dict[str, Any], first_marker: Any) -> None:
    """The resumed stream's first frame continues the generator's state at the resumed index."""
    idx = start["segment_idx"]
    assert start["prompt"] == CURATED[idx % len(CURATED)]
    assert (first_marker.segment_idx, first_marker.frame_number) == (idx, idx * NUM_FRAMES)
    assert not resumed.events_of("error")


@pytest.mark.parametrize("transport", ["websocket", "webrtc"])
async def test_a_session_whose_replica_is_killed_resumes_on_another_at_the_next_segment(
    replicas: list[Replica], transport: str
) -> None:
    first, second = replicas
    client = await open_client(transport, first.url, INIT)
    try:
        await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 2, timeout=15)
        info = client.events_of("session_info")[0]
        first.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        first.process.wait(5)
        made = max(e["segment_idx"] for e in client.events_of("ltx2_segment_complete"))
    finally:
        await client.close()

    sent_at = time.monotonic()
    resumed = await open_client(transport, second.url, resume_init(info))
    try:
        frame = await first_frame_after(resumed, sent_at)
        start = resumed.events_of("ltx2_segment_start")[0]
        # After a kill, the stream goes on after the last segment whose state was stored: the one the
        # client saw complete, or one more if the kill fell between storing and telling.
        assert start["segment_idx"] in (made + 1, made + 2)
        check_continued(resumed, start, frame.marker)
        print(
            f"\n[{transport}] SIGKILL resume: segment {start['segment_idx']} (last made {made}); "
            f"resume init -> first frame {frame.seconds * 1000:.0f} ms; "
            f"kill -> first frame {(sent_at + frame.seconds - killed_at) * 1000:.0f} ms"
        )
        assert frame.seconds < 2.0
    finally:
        await resumed.close()


async def test_a_rolling_restart_moves_four_sessions_to_the_other_replica(replicas: list[Replica]) -> None:
    first, second = replicas
    transports = ["websocket", "webrtc", "websocket", "webrtc"]
    clients = [await open_client(t, first.url, INIT) for t in transports]
    resumed: list[Client] = []
    try:
        for client in clients:
            await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 1, timeout=20)
        infos = [c.events_of("session_info")[0] for c in clients]

        first.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        for client in clients:
            error = await client.wait_for_event("error", timeout=10)
            assert (error["code"], error["retryable"]) == ("gpu_unavailable", True)
            assert await wait_closed(client) in (None, 1012)
        code = await asyncio.to_thread(first.process.wait, EXIT_TIMEOUT_S)
        exited_s = time.monotonic() - signalled
        assert code == 0, first.log.read_text()[-2000:]
        print(f"\nSIGTERM with 4 sessions: exit 0 after {exited_s:.2f} s")

        for transport, client, info in zip(transports, clients, infos, strict=True):
            seen = max(seen_segments(client))
            sent_at = time.monotonic()
            session = await open_client(transport, second.url, resume_init(info))
            resumed.append(session)
            frame = await first_frame_after(session, sent_at)
            start = session.events_of("ltx2_segment_start")[0]
            # After SIGTERM the stream goes on at the first segment the client had no frame of. Over
            # WebRTC its very last frames may still be in flight when the peer closes (the receiver
            # holds each frame until the next one arrives), so it may have decoded one segment less.
            expected = (seen + 1,) if transport == "websocket" else (seen + 1, seen + 2)
            assert start["segment_idx"] in expected, (transport, seen, start)
            check_continued(session, start, frame.marker)
            print(f"[{transport}] resumed at segment {start['segment_idx']} in {frame.seconds * 1000:.0f} ms")
        assert all(isinstance(s, WebRTCClient) == (t == "webrtc") for s, t in zip(resumed, transports, strict=True))
    finally:
        for client in clients + resumed:
            await client.close()
