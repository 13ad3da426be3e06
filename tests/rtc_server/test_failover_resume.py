"""Resuming a session on another server sharing Redis: session_info, resume_session, refusals, shutdown.

Two servers run in this test process with the same store (``store.backend: redis``); the first one is
shut down as SIGTERM would (stop listening, drain its sessions), and the client resumes on the second.
The SIGKILL and rolling-restart cases with real server processes are in test_failover_processes.py.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gpu.generator import ContinuationState
from rtc_server.app import REGISTRY, RESUME, SESSION_LOG
from rtc_server.clients.webrtc_client import OfferRejected, WebRTCClient
from rtc_server.clients.ws_client import WebSocketClient
from rtc_server.generation_policy import PolicyState
from rtc_server.resume_record import ResumeRecord
from rtc_server.session_continuity import Resumed
from tests.conftest import RunningServer, make_config
from tests.rtc_server.failover import (
    CURATED,
    NUM_FRAMES,
    Client,
    markers,
    open_client,
    resume_init,
    sampling,
    seen_segments,
    wait_closed,
    wait_for_marker,
)
from tests.rtc_server.offers import real_offer_sdp

TRANSPORTS = ["websocket", "webrtc"]
INIT = {"type": "session_init_v2", "curated_prompts": CURATED, "loop_generation_enabled": True}


def redis_config(redis_url: str, **sections: dict[str, Any]) -> Any:
    return make_config(
        default_request={"sampling": sampling()},
        store={"backend": "redis", "redis_url": redis_url, "inline_limit_bytes": 16},
        limits={"sessions_per_client": 8},
        **sections,
    )


async def stop(server: RunningServer) -> None:
    """Shut a server down as SIGTERM does (aiohttp's runner cleanup: stop listening, on_shutdown, cleanup)."""
    await server._server.close()  # type: ignore[attr-defined]


async def streaming(client: Client, segments: int = 2) -> dict[str, Any]:
    """Wait until ``segments`` segments were made; the session's session_info."""
    await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == segments - 1, timeout=15)
    return client.events_of("session_info")[0]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_session_info_comes_once_right_after_gpu_assigned_and_is_never_logged(
    start_server: Any, fresh_redis_url: str, tmp_path: Path, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await start_server(redis_config(fresh_redis_url, streaming={"session_log_dir": str(tmp_path)}))
    client = await open_client(transport, server.url, INIT)
    try:
        info = await streaming(client, segments=2)
        kinds = [e["type"] for e in client.events]
        assert kinds.count("session_info") == 1
        assert kinds[kinds.index("gpu_assigned") + 1] == "session_info"
        token = info["resume_token"]
        assert len(token) >= 43 and all(c.isalnum() or c in "-_" for c in token)
        if isinstance(client, WebRTCClient):
            assert info["session_id"] == client.session_id
        stored = await server.app[RESUME].get(info["session_id"])
        assert stored is not None and token not in stored.token_hash and token.encode() not in stored.data
    finally:
        await client.close()
    await asyncio.sleep(0.2)
    assert server.app[SESSION_LOG].flush(5.0)
    logs = "".join(p.read_text() for p in tmp_path.glob("*.jsonl"))
    assert info["session_id"] in "".join(p.name for p in tmp_path.glob("*.jsonl"))
    assert token not in logs and token not in caplog.text


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resume_on_another_server_continues_at_the_next_segment_with_cursor_toggles_and_state(
    start_server: Any, fresh_redis_url: str, transport: str
) -> None:
    first = await start_server(redis_config(fresh_redis_url))
    second = await start_server(redis_config(fresh_redis_url))
    client = await open_client(transport, first.url, INIT)
    try:
        info = await streaming(client, segments=3)
        await stop(first)
        error = await client.wait_for_event("error")
        assert error == {
            "type": "error",
            "code": "gpu_unavailable",
            "message": "this server is shutting down; resume elsewhere",
            "retryable": True,
        }
        code = await wait_closed(client)
        assert code in (None, 1012)
        seen = max(seen_segments(client))
    finally:
        await client.close()

    resumed = await open_client(transport, second.url, resume_init(info))
    try:
        start = await resumed.wait_for_event("ltx2_segment_start")
        next_idx = start["segment_idx"]
        # The segment after the last one the client had frames of (a look-ahead it never saw is made again).
        assert next_idx == seen + 1
        assert start["prompt"] == CURATED[next_idx % len(CURATED)]  # the curated cursor, loop still on
        kinds = [e["type"] for e in resumed.events]
        assert kinds[: kinds.index("ltx2_stream_start") + 1][-3:] == ["gpu_assigned", "session_info", "ltx2_stream_start"]
        new_info = resumed.events_of("session_info")[0]
        assert new_info["session_id"] == info["session_id"]
        assert new_info["resume_token"] != info["resume_token"]
        if isinstance(resumed, WebRTCClient):
            assert resumed.session_id == info["session_id"]
        # The generator's own state went on: frame numbers continue where the first server's stream stopped.
        marker = await wait_for_marker(resumed, next_idx)
        assert marker.frame_number >= next_idx * NUM_FRAMES
        assert min(m.frame_number for m in markers(resumed) if m.segment_idx == next_idx) == next_idx * NUM_FRAMES
        after = await resumed.wait_for_event("ltx2_segment_start", lambda e: e["segment_idx"] == next_idx + 1)
        assert after["prompt"] == CURATED[(next_idx + 1) % len(CURATED)]
        assert not resumed.events_of("error")
    finally:
        await resumed.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_paused_session_resumes_paused(start_server: Any, fresh_redis_url: str, transport: str) -> None:
    first = await start_server(redis_config(fresh_redis_url))
    second = await start_server(redis_config(fresh_redis_url))
    client = await open_client(transport, first.url, INIT)
    try:
        info = await streaming(client, segments=2)
        await client.send({"type": "generation_paused_updated", "paused": True})
        await asyncio.sleep(0.3)  # the toggle reaches the record in the background
        await stop(first)
        await client.wait_for_event("error")
        await wait_closed(client)
        made = max(e["segment_idx"] for e in client.events_of("ltx2_segment_complete"))
    finally:
        await client.close()

    resumed = await open_client(transport, second.url, resume_init(info))
    try:
        await resumed.wait_for_event("ltx2_stream_start")
        await asyncio.sleep(1.0)
        assert not resumed.events_of("ltx2_segment_start"), "a paused session made a segment after resuming"
        await resumed.send({"type": "generation_paused_updated", "paused": False})
        start = await resumed.wait_for_event("ltx2_segment_start")
        assert 0 < start["segment_idx"] <= made + 1
    finally:
        await resumed.close()


async def test_resume_with_the_init_on_the_data_channel_keeps_messages_sent_right_behind_it(
    start_server: Any, fresh_redis_url: str
) -> None:
    first = await start_server(redis_config(fresh_redis_url))
    second = await start_server(redis_config(fresh_redis_url))
    client = await open_client("websocket", first.url, INIT)
    try:
        info = await streaming(client, segments=2)
        await stop(first)
        await wait_closed(client)
    finally:
        await client.close()
    async with WebRTCClient(second.url) as resumed:
        await resumed.connect()
        await resumed.wait_channel_open()
        await resumed.send(resume_init(info))
        # Right behind the init, before the record is loaded: applied to the restored policy, not lost.
        await resumed.send({"type": "loop_generation_updated", "enabled": False})
        start = await resumed.wait_for_event("ltx2_segment_start")
        after = await resumed.wait_for_event("ltx2_segment_start", lambda e: e["segment_idx"] == start["segment_idx"] + 1)
        assert after["prompt"] == start["prompt"]  # loop off: the scene goes on with the last prompt
        assert resumed.events_of("session_info")[0]["session_id"] == info["session_id"]
        assert len(second.app[REGISTRY]) == 1


async def refused_over(transport: str, url: str, init: dict[str, Any]) -> tuple[str, int | None]:
    """The error message a refused resume gets, and the close code (WebRTC: the offer's HTTP status)."""
    if transport == "webrtc":
        with pytest.raises(OfferRejected) as info:
            async with WebRTCClient(url, session_init={k: v for k, v in init.items() if k != "type"}) as rtc:
                await rtc.connect()
        error = info.value.body["error"]
        assert error["code"] == "invalid_message"
        return error["message"], info.value.status
    async with WebSocketClient(url, session_init={k: v for k, v in init.items() if k != "type"}) as ws:
        await ws.connect()
        error = await ws.wait_for_event("error")
        assert error["code"] == "invalid_message" and error["retryable"] is False
        return error["message"], await ws.wait_closed()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_wrong_unknown_and_spent_resumes_are_refused_naming_resume_session(
    start_server: Any, fresh_redis_url: str, transport: str
) -> None:
    first = await start_server(redis_config(fresh_redis_url))
    second = await start_server(redis_config(fresh_redis_url))
    client = await open_client("websocket", first.url, INIT)
    try:
        info = await streaming(client, segments=2)
        await stop(first)
        await wait_closed(client)
    finally:
        await client.close()
    refused_code = 400 if transport == "webrtc" else 1003

    wrong = {**info, "resume_token": info["resume_token"][::-1]}
    message, code = await refused_over(transport, second.url, resume_init(wrong))
    assert message.startswith("resume_session.resume_token") and code == refused_code
    unknown = {**info, "session_id": "0" * 32}
    message, code = await refused_over(transport, second.url, resume_init(unknown))
    assert message.startswith("resume_session.session_id") and code == refused_code

    async with WebSocketClient(second.url, session_init=resume_init(info)) as resumed:
        await resumed.connect()
        await resumed.wait_for_event("ltx2_segment_start")
        # The token was spent by that resume: a second one with it is refused, the session goes on.
        message, code = await refused_over(transport, second.url, resume_init(info))
        assert message.startswith("resume_session.resume_token") and code == refused_code
        await resumed.wait_for_event("ltx2_segment_complete")
        assert not resumed.events_of("error")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_refused_resume_with_fallback_fresh_starts_a_new_stream_at_segment_0(
    start_server: Any, fresh_redis_url: str, transport: str
) -> None:
    server = await start_server(redis_config(fresh_redis_url))
    init = resume_init({"session_id": "f" * 32, "resume_token": "x" * 43}, continuation_fallback="fresh")
    client = await open_client(transport, server.url, {**init, "curated_prompts": CURATED})
    try:
        error = await client.wait_for_event("error")
        assert error["code"] == "invalid_message"
        assert error["message"].startswith("resume_session.session_id") and "fresh" in error["message"]
        start = await client.wait_for_event("ltx2_segment_start")
        assert (start["segment_idx"], start["prompt"]) == (0, CURATED[0])
        info = client.events_of("session_info")[0]
        assert info["session_id"] != "f" * 32
    finally:
        await client.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_normal_end_deletes_the_record_and_a_later_resume_is_refused(
    start_server: Any, fresh_redis_url: str, transport: str
) -> None:
    server = await start_server(redis_config(fresh_redis_url))
    records = server.app[RESUME]
    client = await open_client(transport, server.url, INIT)
    try:
        info = await streaming(client, segments=1)
        assert await records.get(info["session_id"]) is not None
    finally:
        await client.close()  # the client leaves: a normal end
    for _ in range(100):
        if await records.get(info["session_id"]) is None:
            break
        await asyncio.sleep(0.05)
    assert await records.get(info["session_id"]) is None
    message, _ = await refused_over("websocket", server.url, resume_init(info))
    assert message.startswith("resume_session.session_id")


async def test_a_resume_on_the_same_server_takes_over_a_connection_it_has_not_noticed_dropping(
    start_server: Any, fresh_redis_url: str
) -> None:
    server = await start_server(redis_config(fresh_redis_url))
    old = WebSocketClient(server.url, session_init=INIT)
    await old.connect()
    try:
        info = await streaming(old, segments=2)
        async with WebSocketClient(server.url, session_init=resume_init(info)) as resumed:
            await resumed.connect()
            start = await resumed.wait_for_event("ltx2_segment_start")
            told = await old.wait_for_event("error")
            assert (told["code"], told["retryable"]) == ("session_rejected", False)
            assert await old.wait_closed() == 1000
            assert start["segment_idx"] > 0
            await resumed.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == start["segment_idx"])
            assert resumed.events_of("session_info")[0]["session_id"] == info["session_id"]
    finally:
        await old.close()


async def test_a_resume_whose_connection_never_comes_up_leaves_the_session_to_the_old_token(
    start_server: Any, fresh_redis_url: str
) -> None:
    first = await start_server(redis_config(fresh_redis_url))
    second = await start_server(redis_config(fresh_redis_url, webrtc={"connect_timeout_seconds": 0.5}))
    client = await open_client("websocket", first.url, INIT)
    try:
        info = await streaming(client, segments=2)
        await stop(first)
        await wait_closed(client)
    finally:
        await client.close()
    # An offer that resumes the session, from a peer that never connects: it never gets session_info.
    body = {"sdp": await real_offer_sdp(), "type": "offer", "session_init": resume_init(info)}
    async with aiohttp.ClientSession() as http, http.post(f"{second.url}/v1/webrtc/offer", json=body) as response:
        assert response.status == 200 and (await response.json())["session_id"] == info["session_id"]
    registry = second.app[REGISTRY]
    for _ in range(100):
        if len(registry) == 0:
            break
        await asyncio.sleep(0.05)
    assert len(registry) == 0
    resumed = await open_client("websocket", second.url, resume_init(info))  # the old token still works
    try:
        start = await resumed.wait_for_event("ltx2_segment_start")
        assert start["segment_idx"] > 0 and not resumed.events_of("error")
    finally:
        await resumed.close()


async def test_a_draining_server_says_so_and_refuses_new_sessions(server: RunningServer) -> None:
    await server.app[REGISTRY].drain()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/readyz") as response:
            assert response.status == 503 and (await response.json())["status"] == "draining"
        async with http.get(f"{server.url}/health") as response:
            assert (await response.json())["status"] == "draining"
        body = {"sdp": await real_offer_sdp(), "type": "offer", "session_init": {}}
        async with http.post(f"{server.url}/v1/webrtc/offer", json=body) as response:
            error = (await response.json())["error"]
            assert response.status == 503 and response.headers["Retry-After"]
            assert (error["code"], error["retryable"]) == ("gpu_unavailable", True)
    async with WebSocketClient(server.url, session_init=INIT) as ws:
        await ws.connect()
        error = await ws.wait_for_event("error")
        assert (error["code"], error["message"], error["retryable"]) == (
            "gpu_unavailable", "this server is shutting down; resume elsewhere", True
        )
        assert await ws.wait_closed() == 1013


def test_the_stored_states_own_index_wins_over_a_record_written_just_before_a_kill() -> None:
    record = ResumeRecord(session_id="s", token_hash="h", next_segment_idx=4, policy=PolicyState())
    assert Resumed(record, ContinuationState("synthetic.v1", {"segment_idx": 5})).start.segment_idx == 5
    assert Resumed(record, ContinuationState("other.v1", {})).start.segment_idx == 4
    assert Resumed(record, None).start.segment_idx == 4
