"""Admission queue, resume, initial images and session logs, end to end over loopback."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from rtc_server.app import IMAGE_DIR, REGISTRY, STORE
from rtc_server.clients.webrtc_client import OfferRejected, WebRTCClient
from rtc_server.clients.ws_client import WebSocketClient
from tests.conftest import RunningServer, make_config

INIT = {"curated_prompts": ["a red fox running through fresh snow"]}


def png_base64(size: int = 32, colour: tuple[int, int, int] = (250, 20, 20)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


async def open_ws(server: RunningServer, init: dict[str, Any] | None = None) -> WebSocketClient:
    client = WebSocketClient(server.url, session_init=INIT if init is None else init)
    await client.connect()
    return client


async def test_queue_admits_fifo_with_positions_and_rejects_beyond_it(start_server: Any) -> None:
    server = await start_server(make_config(streaming={"max_sessions": 1, "max_queue": 2}))
    first = await open_ws(server)
    await first.wait_for_event("ltx2_segment_start")
    second = await open_ws(server)
    await second.wait_for_event("queue_status")
    third = await open_ws(server)
    await third.wait_for_event("queue_status")
    fourth = await open_ws(server)
    try:
        assert first.events[0] == {"type": "queue_status", "position": 0, "queue_depth": 0}
        assert second.events_of("queue_status")[-1] == {"type": "queue_status", "position": 1, "queue_depth": 1}
        assert third.events_of("queue_status")[-1] == {"type": "queue_status", "position": 2, "queue_depth": 2}
        rejected = await fourth.wait_for_event("error")
        assert rejected["code"] == "session_rejected" and await fourth.wait_closed() == 1013
        with pytest.raises(OfferRejected) as info:  # the same limit over WebRTC
            async with WebRTCClient(server.url, session_init=INIT) as rtc:
                await rtc.connect()
        assert info.value.status == 503 and info.value.body["error"]["code"] == "session_rejected"
        assert not second.events_of("ltx2_stream_start")

        await first.close()
        await second.wait_for_event("queue_status", lambda e: e["position"] == 0)
        await second.wait_for_event("ltx2_segment_start")
        await third.wait_for_event("queue_status", lambda e: e["position"] == 1 and e["queue_depth"] == 1)
        kinds = [e["type"] for e in second.events]
        opening = kinds[: kinds.index("ltx2_stream_start") + 1][-4:]
        assert opening == ["queue_status", "gpu_assigned", "session_info", "ltx2_stream_start"]
    finally:
        for client in (first, second, third, fourth):
            await client.close()


async def test_a_queued_client_that_leaves_frees_its_place(start_server: Any) -> None:
    server = await start_server(make_config(streaming={"max_sessions": 1, "max_queue": 2}))
    async with await open_ws(server) as first, await open_ws(server) as second:
        await first.wait_for_event("ltx2_segment_start")
        await second.wait_for_event("queue_status", lambda e: e["position"] == 1)
        async with await open_ws(server) as third:
            await third.wait_for_event("queue_status", lambda e: e["position"] == 2)
            await second.close()
            await third.wait_for_event("queue_status", lambda e: e["position"] == 1)


async def test_the_idle_timeout_applies_while_queued(start_server: Any) -> None:
    config = make_config(streaming={"max_sessions": 1, "max_queue": 1, "session_timeout_seconds": 1})
    server = await start_server(config)
    async with await open_ws(server) as first, await open_ws(server) as waiting:
        await first.wait_for_event("ltx2_segment_start")
        timeout = await waiting.wait_for_event("session_timeout", timeout=5)
        assert timeout["timeout_seconds"] == 1
        assert await waiting.wait_closed() == 1000
        assert not waiting.events_of("ltx2_stream_start")


async def test_snapshot_then_resume_continues_segments_and_motion(server: RunningServer) -> None:
    async with await open_ws(server) as first:
        await first.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 1)
        await first.send({"type": "snapshot_state"})
        snapshot = (await first.wait_for_event("continuation_state_snapshot"))["state"]
    resumed_at = snapshot["payload"]["segment_idx"]
    async with await open_ws(server, {**INIT, "continuation_state": snapshot}) as second:
        start = await second.wait_for_event("ltx2_segment_start")
        assert start["segment_idx"] == resumed_at
        await second.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == resumed_at)
        await second.send({"type": "snapshot_state"})
        later = (await second.wait_for_event("continuation_state_snapshot"))["state"]["payload"]
    assert later["segment_idx"] >= resumed_at + 1
    assert later["frame_number"] >= snapshot["payload"]["frame_number"] + 24


@pytest.mark.parametrize(
    ("state", "fragment"),
    [
        ({"kind": "ltx.v1", "payload": {"segment_idx": 3}}, "ltx.v1"),
        ({"kind": "synthetic.v1", "payload": {"segment_idx": "three"}}, "segment_idx"),
        ({"kind": "synthetic.v1", "payload": {"segment_idx": 1, "frame_number": 24, "shapes": {"$blob": "feed"}}}, "feed"),
    ],
)
async def test_unusable_continuation_state_is_refused_not_silently_dropped(
    server: RunningServer, state: dict[str, Any], fragment: str
) -> None:
    async with await open_ws(server, {**INIT, "continuation_state": state}) as client:
        error = await client.wait_for_event("error")
        assert error["code"] == "invalid_message" and "continuation_state" in error["message"]
        assert fragment in error["message"]
        assert await client.wait_closed() == 1003
        assert not client.events_of("ltx2_segment_start")


async def test_fresh_fallback_reports_the_refusal_then_starts_over(server: RunningServer) -> None:
    init = {**INIT, "continuation_state": {"kind": "other.v9", "payload": {}}, "continuation_fallback": "fresh"}
    async with await open_ws(server, init) as client:
        error = await client.wait_for_event("error")
        assert "other.v9" in error["message"] and "fresh" in error["message"]
        start = await client.wait_for_event("ltx2_segment_start")
        assert start["segment_idx"] == 0


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        ("a string", "object"),
        ({"mime": "image/gif", "data": png_base64()}, "mime"),
        ({"mime": "image/png", "data": "@@not base64@@"}, "base64"),
        ({"mime": "image/png", "data": ""}, "empty"),
        ({"mime": "image/png", "data": base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 3000).decode()}, "limit"),
    ],
)
async def test_each_initial_image_fault_gets_its_own_error(
    start_server: Any, image: Any, fragment: str
) -> None:
    server = await start_server(make_config(streaming={"max_init_image_bytes": 2048}))
    async with await open_ws(server, {**INIT, "initial_image": image}) as client:
        error = await client.wait_for_event("error")
        assert error["code"] == "invalid_message" and "initial_image" in error["message"]
        assert fragment in error["message"]
        assert await client.wait_closed() == 1003
    assert not list(server.app[IMAGE_DIR].iterdir())


async def test_initial_image_is_blended_in_and_deleted_at_the_end(server: RunningServer) -> None:
    image = {"mime": "image/png", "name": "../../etc/passwd.png", "data": png_base64(64)}
    async with await open_ws(server, {**INIT, "initial_image": image}) as client:
        await client.wait_for_event("ltx2_segment_complete")
        files = list(server.app[IMAGE_DIR].iterdir())
        assert len(files) == 1 and files[0].stat().st_mode & 0o777 == 0o600
    for _ in range(50):
        if not list(server.app[IMAGE_DIR].iterdir()):
            break
        await asyncio.sleep(0.05)
    assert not list(server.app[IMAGE_DIR].iterdir())


async def test_many_sessions_leave_stores_and_image_dir_empty(start_server: Any) -> None:
    config = make_config(
        default_request={"sampling": {"width": 64, "height": 64, "num_frames": 2, "num_inference_steps": 1}},
        streaming={"max_sessions": 50},
        store={"inline_limit_bytes": 16},  # every payload part goes to the blob store
        limits={"sessions_per_client": 50, "offers_per_minute": 10_000},  # one client, 1000 sessions
    )
    server = await start_server(config)
    image = {"mime": "image/png", "data": png_base64(16)}
    semaphore = asyncio.Semaphore(25)

    async def one() -> None:
        async with semaphore, await open_ws(server, {**INIT, "initial_image": image}) as client:
            await client.wait_for_event("ltx2_segment_complete", timeout=30)

    await asyncio.gather(*(one() for _ in range(1000)))
    for _ in range(100):
        if len(server.app[REGISTRY]) == 0:
            break
        await asyncio.sleep(0.05)
    store = server.app[STORE]
    assert len(server.app[REGISTRY]) == 0
    assert await store.count() == 0
    assert await store.blobs.count() == 0  # type: ignore[attr-defined]
    assert not list(server.app[IMAGE_DIR].iterdir())


async def test_session_log_holds_the_events_in_order(start_server: Any, tmp_path: Path) -> None:
    server = await start_server(make_config(streaming={"session_log_dir": str(tmp_path)}))
    async with await open_ws(server) as client:
        await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 0)
        await client.send({"type": "segment_prompt_source", "prompt": "a castle on a hill"})
        await client.wait_for_event("prompt_received")
        await client.send("{oops")
        await client.wait_for_event("error")
        start = await client.wait_for_event("ltx2_segment_start", lambda e: e["prompt"] == "a castle on a hill")
        await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == start["segment_idx"])
        session_id = next(iter(server.app[REGISTRY]._controllers))
    for _ in range(100):
        path = tmp_path / f"session-{session_id}.jsonl"  # the original's file name
        if path.exists() and '"end"' in path.read_text():
            break
        await asyncio.sleep(0.05)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(list(line) == ["session_id", "event", "ts", "payload"] for line in lines)  # the original's shape
    events = [line["event"] for line in lines]
    assert events[:4] == ["ws_session_start", "queue", "gpu_assigned", "segment_complete"]
    assert events[-1] == "end" and lines[-1]["payload"]["reason"] == "client_left"
    assert events.index("append_prompt") < events.index("error")
    segments = [line["payload"] for line in lines if line["event"] == "segment_complete"]
    assert segments[0]["segment_idx"] == 0 and segments[0]["generation_ms"] > 0
    assert any(s["prompt"] == "a castle on a hill" for s in segments)
    assert all(line["session_id"] == session_id for line in lines)
    assert [line["ts"] for line in lines] == sorted(line["ts"] for line in lines)
