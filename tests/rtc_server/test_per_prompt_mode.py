"""generation_mode per_prompt end to end over the WebSocket: one segment per prompt, in order, none
dropped, a bounded queue, pause, the segment cap, continuation across segments."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from rtc_server.clients.ws_client import WebSocketClient
from tests.conftest import RunningServer, make_config

PROMPTS = ["a paper boat on a pond", "a lighthouse in a storm", "a cat asleep on a windowsill"]


@pytest.fixture
async def open_ws() -> AsyncIterator[Callable[..., Any]]:
    clients: list[WebSocketClient] = []

    async def open_(server: RunningServer, **init: Any) -> WebSocketClient:
        client = WebSocketClient(server.url, session_init={"type": "session_init_v2", **init})
        clients.append(client)
        await client.connect()
        await client.wait_for_event("ltx2_stream_start")
        return client

    yield open_
    for client in clients:
        await client.close()


async def send_prompts(client: WebSocketClient, prompts: list[str]) -> None:
    for prompt in prompts:
        await client.send({"type": "segment_prompt_source", "prompt": prompt})


def starts(client: WebSocketClient) -> list[tuple[int, str]]:
    return [(e["segment_idx"], e["prompt"]) for e in client.events_of("ltx2_segment_start")]


async def test_the_server_config_sets_per_prompt_and_each_segment_continues_the_last(
    start_server: Callable[..., Any], open_ws: Callable[..., Any]
) -> None:
    server = await start_server(make_config(streaming={"generation_mode": "per_prompt"}))
    client = await open_ws(server, curated_prompts=["a red fox"], auto_extension_enabled=True)
    await asyncio.sleep(0.4)
    assert starts(client) == []
    await send_prompts(client, PROMPTS)
    await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 2)
    await asyncio.sleep(0.4)
    assert starts(client) == list(enumerate(PROMPTS))
    await client.send({"type": "snapshot_state"})
    snapshot = await client.wait_for_event("continuation_state_snapshot")
    assert snapshot["state"]["payload"]["segment_idx"] == 3
    assert snapshot["state"]["payload"]["frame_number"] == 3 * 24  # each segment went on from the last


async def test_a_session_may_choose_continuous_on_a_per_prompt_server(
    start_server: Callable[..., Any], open_ws: Callable[..., Any]
) -> None:
    server = await start_server(make_config(streaming={"generation_mode": "per_prompt"}))
    client = await open_ws(server, curated_prompts=["a red fox"], generation_mode="continuous")
    await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 1)
    assert starts(client)[:2] == [(0, "a red fox"), (1, "a red fox")]


async def test_paused_prompts_wait_and_one_beyond_the_queue_is_refused(
    start_server: Callable[..., Any], open_ws: Callable[..., Any]
) -> None:
    server = await start_server(make_config(streaming={"generation_mode": "per_prompt", "max_queued_prompts": 2}))
    client = await open_ws(server)
    await client.send({"type": "generation_paused_updated", "paused": True})
    await send_prompts(client, PROMPTS)
    error = await client.wait_for_event("error")
    assert error["code"] == "rate_limited" and error["retryable"] is True and "max_queued_prompts" in error["message"]
    await asyncio.sleep(0.4)
    assert starts(client) == []
    await client.send({"type": "generation_paused_updated", "paused": False})
    await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 1)
    await send_prompts(client, PROMPTS[2:])  # room again: the dropped prompt may be sent again
    await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 2)
    assert starts(client) == list(enumerate(PROMPTS))


async def test_the_segment_cap_ends_a_per_prompt_stream(
    start_server: Callable[..., Any], open_ws: Callable[..., Any]
) -> None:
    config = make_config(streaming={"generation_mode": "per_prompt", "generation_segment_cap": 2})
    server = await start_server(config)
    client = await open_ws(server, single_clip_mode=True)
    await send_prompts(client, PROMPTS)
    done = await client.wait_for_event("ltx2_stream_complete", timeout=15)
    assert done["reason"] == "segment_cap"
    assert starts(client) == list(enumerate(PROMPTS[:2]))
