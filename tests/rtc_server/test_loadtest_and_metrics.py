"""The load tool against a real server, and /metrics as Prometheus sees it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rtc_server.clients.ws_client import WebSocketClient
from tests.conftest import RunningServer, make_config
from tests.rtc_server.test_cli import REPO


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["webrtc", "ws"])
async def test_load_tool_reports_every_session_getting_frames(
    server: RunningServer, tmp_path: Path, transport: str
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rtc_server.loadtest", "--url", server.url, "--sessions", "3", "--duration", "4",
        "--transport", transport, "--ramp", "0.5", "--prompt-interval", "1.5", "--out", str(tmp_path), "--quiet",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, (out.decode(), err.decode())
    report = json.loads((tmp_path / "report.json").read_text())
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = report["summary"]
    assert summary["sessions"] == summary["sessions_with_frames"] == 3
    assert set(summary) >= {"ttff_ms", "delivered_fps", "frame_latency_ms", "stalls", "errors"}
    assert summary["ttff_ms"]["median"] is not None and summary["errors"] == {}
    for session in report["sessions"]:
        assert session["frames"] > 24 and session["prompts_sent"] >= 1
        assert len(session["fps_series"]) >= 3
    if transport == "webrtc":
        assert summary["frame_latency_ms"]["median"] is not None
        assert all(s["latency_samples"] > 0 for s in report["sessions"])
        # Every session sent prompts and saw the first one's frames (read from the marker's prompt tag),
        # within a segment and its generation at most, plus slack for this loaded machine.
        assert summary["prompt_to_pixels_samples"] >= 3
        assert 0 < summary["prompt_to_pixels_ms"]["median"] <= summary["prompt_to_pixels_ms"]["max"] < 2500


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["webrtc", "ws"])
async def test_load_tool_watches_each_session_with_whep_viewers(server: RunningServer, tmp_path: Path, transport: str) -> None:
    code, summary, err = await run_load_tool(
        server.url, tmp_path, "--sessions", "2", "--duration", "4", "--viewers", "3", "--transport", transport
    )
    assert code == 0, err
    viewers = summary["viewers"]
    assert viewers["viewers"] == viewers["viewers_with_frames"] == 6 and viewers["errors"] == {}
    assert viewers["ttff_ms"]["median"] is not None
    assert viewers["min_delivered_fps"] > 18  # 24 fps paced, less the time to the first keyframe


async def run_load_tool(url: str, out: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rtc_server.loadtest", "--url", url, "--out", str(out), "--quiet",
        "--prompt-interval", "60", *args,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "RTCVS_TOKEN"},
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, json.loads((out / "report.json").read_text())["summary"], err.decode()


@pytest.mark.slow
async def test_load_tool_sends_its_token_and_says_when_the_servers_client_share_refused_it(
    start_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOADTEST_SERVER_TOKEN", "load-secret")
    server = await start_server(
        make_config(
            auth={"mode": "token", "token_envs": ["LOADTEST_SERVER_TOKEN"]},
            streaming={"max_sessions": 4},
            limits={"sessions_per_client": 2},
        )
    )
    code, summary, err = await run_load_tool(server.url, tmp_path / "anonymous", "--sessions", "1", "--duration", "1")
    assert code == 1 and summary["errors"] == {"unauthorized": 1}
    assert "--token" in err

    # Load sessions share one address: the third is over this client's share of two.
    code, summary, err = await run_load_tool(
        server.url, tmp_path / "token", "--sessions", "3", "--duration", "2", "--token", "load-secret"
    )
    assert code == 1, err
    assert summary["sessions_with_frames"] == 2 and summary["errors"] == {"rate_limited": 1}
    assert "limits.sessions_per_client" in err


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


ADMIN_TOKEN = "operator-secret"  # /metrics is for operators


async def scrape(server: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as response:
            assert response.status == 200 and response.content_type == "text/plain"
            return metric_values(await response.text())


async def test_metrics_parse_and_move_during_a_session(start_server: Any) -> None:
    from tests.conftest import make_config

    server = await start_server(make_config(server={"admin_token": ADMIN_TOKEN}))
    before = await scrape(server)
    assert before[("rtcvs_pool_workers_ready", ())] == 1
    assert before[("rtcvs_sessions_active", ())] == 0
    async with WebSocketClient(server.url, session_init={}) as client:
        await client.connect()
        await client.wait_for_event("media_segment_complete", lambda e: e["segment_idx"] == 1)
        await client.send({"type": "segment_prompt_source", "prompt": "a castle"})
        await client.send("{bad json")
        await client.wait_for_event("error")
        during = await scrape(server)
    ws = (("transport", "websocket"),)
    assert during[("rtcvs_sessions_active", ())] == 1
    assert during[("rtcvs_segments_generated_total", ws)] >= 2
    assert during[("rtcvs_frames_sent_total", ws)] >= 48
    assert during[("rtcvs_segment_generation_seconds_count", ())] >= 2
    assert during[("rtcvs_fmp4_encode_seconds_count", ())] >= 2
    assert during[("rtcvs_time_to_first_frame_seconds_count", ws)] == 1
    assert during[("rtcvs_control_messages_total", (("type", "segment_prompt_source"),))] == 1
    assert during[("rtcvs_errors_total", (("code", "invalid_message"),))] == 1


async def test_rejections_are_counted(start_server: Any) -> None:
    from tests.conftest import make_config

    server = await start_server(make_config(streaming={"max_sessions": 1}, server={"admin_token": ADMIN_TOKEN}))
    async with WebSocketClient(server.url, session_init={}) as first, WebSocketClient(server.url, session_init={}) as second:
        await first.connect()
        await first.wait_for_event("ltx2_segment_start")
        await second.connect()
        await second.wait_for_event("error")
        values = await scrape(server)
    assert values[("rtcvs_admission_rejections_total", (("reason", "full"),))] == 1
