"""One set of protocol scenarios, run against both transports so they cannot drift apart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import pytest

from rtc_server.app import REGISTRY
from rtc_server.clients.webrtc_client import WebRTCClient
from rtc_server.clients.ws_client import WebSocketClient
from tests.conftest import RunningServer, make_config

TRANSPORTS = ["webrtc", "websocket"]
POOLS = ["inprocess", "subprocess"]
INIT = {"curated_prompts": ["a red fox running through fresh snow"]}


class ProtocolClient(Protocol):
    events: list[dict[str, Any]]

    def events_of(self, kind: str) -> list[dict[str, Any]]: ...

    async def wait_for_event(
        self, kind: str, predicate: Callable[[dict[str, Any]], bool] | None = None, timeout: float = 10.0
    ) -> dict[str, Any]: ...

    async def send(self, message: dict[str, Any] | str | bytes) -> None: ...

    async def close(self) -> None: ...


Opener = Callable[..., Awaitable[ProtocolClient]]


@pytest.fixture(params=POOLS)
async def server(request: pytest.FixtureRequest, start_server: Callable[..., Any]) -> RunningServer:
    """The scenarios run on both pool backends too: worker processes must not change the protocol."""
    return await start_server(make_config(pool={"backend": request.param, "num_workers": 1, "sessions_per_worker": 4}))


@pytest.fixture(params=TRANSPORTS)
async def open_session(request: pytest.FixtureRequest) -> AsyncIterator[Opener]:
    """Open sessions over the transport under test; closes them afterwards."""
    clients: list[ProtocolClient] = []

    async def open_(server: RunningServer, init: dict[str, Any] | None = None) -> ProtocolClient:
        init = {"type": "session_init_v2", **(INIT if init is None else init)}
        client: ProtocolClient
        if request.param == "webrtc":
            rtc = WebRTCClient(server.url, session_init=init)
            clients.append(rtc)
            await rtc.connect()
            await rtc.wait_channel_open()
            client = rtc
        else:
            ws = WebSocketClient(server.url, session_init=init)
            clients.append(ws)
            await ws.connect()
            client = ws
        return client

    yield open_
    for client in clients:
        await client.close()


def media_events(kinds: list[str]) -> list[str]:
    return [k for k in kinds if k not in ("media_init", "media_segment_complete")]


async def test_events_arrive_in_protocol_order(server: RunningServer, open_session: Opener) -> None:
    client = await open_session(server)
    await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 1)
    kinds = [e["type"] for e in client.events]
    # session_info (this project's addition) comes once, right after gpu_assigned.
    assert kinds[:4] == ["queue_status", "gpu_assigned", "session_info", "ltx2_stream_start"]
    assert kinds.count("session_info") == 1
    first = kinds[4 : kinds.index("ltx2_segment_complete") + 1]
    assert media_events(first) == ["ltx2_segment_start", "step_complete", "step_complete", "ltx2_segment_complete"]
    if "media_init" in first:
        assert first.index("step_complete") < first.index("media_init") < first.index("media_segment_complete")
        assert first.index("media_segment_complete") == len(first) - 2
    assert client.events[0] == {"type": "queue_status", "position": 0, "queue_depth": 0}
    stream = client.events[3]
    assert (stream["width"], stream["height"], stream["fps"], stream["num_frames"]) == (256, 256, 24, 24)
    assert [e["segment_idx"] for e in client.events_of("ltx2_segment_start")][:2] == [0, 1]


async def test_prompt_change_is_acknowledged_and_used_next(server: RunningServer, open_session: Opener) -> None:
    client = await open_session(server)
    await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 0)
    await client.send({"type": "segment_prompt_source", "prompt": "a lighthouse in a storm", "source": "curated"})
    ack = await client.wait_for_event("prompt_received")
    assert (ack["prompt"], ack["prompt_used"], ack["source"], ack["enhanced"]) == (
        "a lighthouse in a storm",
        "a lighthouse in a storm",
        "curated",
        False,
    )
    start = await client.wait_for_event("ltx2_segment_start", lambda e: e["prompt"] == "a lighthouse in a storm")
    assert start["segment_idx"] == ack["segment_idx"]
    following = await client.wait_for_event("ltx2_segment_start", lambda e: e["segment_idx"] == start["segment_idx"] + 1)
    assert following["prompt"] == "a lighthouse in a storm"


async def test_pause_stops_segments_and_resume_continues(server: RunningServer, open_session: Opener) -> None:
    client = await open_session(server)
    await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 0)
    await client.send({"type": "generation_paused_updated", "paused": True})
    await asyncio.sleep(0.5)
    starts = len(client.events_of("ltx2_segment_start"))
    await asyncio.sleep(2.0)
    assert len(client.events_of("ltx2_segment_start")) == starts
    await client.send({"type": "generation_paused_updated", "paused": False})
    await client.wait_for_event("ltx2_segment_start", lambda e: e["segment_idx"] == starts, timeout=5)


async def test_segment_cap_ends_the_stream(start_server: Callable[..., Any], open_session: Opener) -> None:
    server = await start_server(make_config(streaming={"generation_segment_cap": 2}))
    client = await open_session(server)
    done = await client.wait_for_event("ltx2_stream_complete", timeout=15)
    assert done["reason"] == "segment_cap"
    assert [e["segment_idx"] for e in client.events_of("ltx2_segment_complete")] == [0, 1]
    assert client.events[-1] == done
    deadline = time.monotonic() + 5
    while len(server.app[REGISTRY]) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(server.app[REGISTRY]) == 0


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ("{broken", "not valid JSON"),
        ('{"type": "warp_drive"}', "unknown message type"),
        ('{"type": "segment_prompt_source", "prompt": 42}', "prompt"),
        ('{"type": "loop_generation_updated"}', "enabled"),
        (b"\x00\x01", "binary"),
    ],
)
async def test_invalid_messages_get_an_error_and_the_session_goes_on(
    server: RunningServer, open_session: Opener, message: str | bytes, fragment: str
) -> None:
    client = await open_session(server)
    await client.wait_for_event("ltx2_segment_start")
    await client.send(message)
    error = await client.wait_for_event("error")
    assert error["code"] == "invalid_message" and fragment in error["message"] and error["retryable"] is False
    done = len(client.events_of("ltx2_segment_complete"))
    await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] >= done + 1, timeout=5)


async def test_snapshot_returns_the_continuation_state(server: RunningServer, open_session: Opener) -> None:
    client = await open_session(server)
    await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 1)
    await client.send({"type": "snapshot_state"})
    snapshot = await client.wait_for_event("continuation_state_snapshot")
    state = snapshot["state"]
    assert state["kind"] == "synthetic.v1"
    assert state["payload"]["segment_idx"] >= 2
    assert state["payload"]["frame_number"] >= 48


async def test_snapshot_before_the_first_segment_is_an_error(
    start_server: Callable[..., Any], open_session: Opener
) -> None:
    slow = make_config(generator={"backend": "synthetic", "options": {"step_delay_s": 0.5}})
    server = await start_server(slow)
    client = await open_session(server)
    await client.send({"type": "snapshot_state"})
    error = await client.wait_for_event("error")
    assert error["code"] == "invalid_message" and "nothing to snapshot" in error["message"]


async def test_single_clip_mode_makes_one_segment_per_user_prompt(server: RunningServer, open_session: Opener) -> None:
    client = await open_session(server, {**INIT, "single_clip_mode": True})
    await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 0)
    await asyncio.sleep(1.2)
    assert len(client.events_of("ltx2_segment_start")) == 1
    await client.send({"type": "segment_prompt_source", "prompt": "a paper boat on a pond"})
    ack = await client.wait_for_event("prompt_received")
    assert ack["segment_idx"] == 1
    start = await client.wait_for_event("ltx2_segment_start", lambda e: e["segment_idx"] == 1)
    assert start["prompt"] == "a paper boat on a pond"
    await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 1)
    await asyncio.sleep(1.2)
    assert len(client.events_of("ltx2_segment_start")) == 2


PER_PROMPT_PROMPTS = ["a paper boat on a pond", "a lighthouse in a storm", "a cat asleep on a windowsill"]


async def test_per_prompt_makes_one_segment_per_prompt_in_order(server: RunningServer, open_session: Opener) -> None:
    """generation_mode per_prompt (the original system's rule) on a server whose default is continuous."""
    client = await open_session(server, {**INIT, "loop_generation_enabled": True, "generation_mode": "per_prompt"})
    await client.wait_for_event("ltx2_stream_start")
    await asyncio.sleep(0.5)
    assert client.events_of("ltx2_segment_start") == []  # nothing without a prompt, not even the curated one
    for prompt in PER_PROMPT_PROMPTS:
        await client.send({"type": "segment_prompt_source", "prompt": prompt})
    await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 2)
    acks = client.events_of("prompt_received")
    assert [(a["prompt"], a["segment_idx"]) for a in acks] == [(p, i) for i, p in enumerate(PER_PROMPT_PROMPTS)]
    await asyncio.sleep(0.6)
    starts = client.events_of("ltx2_segment_start")
    assert [(s["segment_idx"], s["prompt"]) for s in starts] == list(enumerate(PER_PROMPT_PROMPTS))
    assert [e["segment_idx"] for e in client.events_of("ltx2_segment_complete")] == [0, 1, 2]
