"""How sessions end, as the original system ends them: idle timeout, shutdown, no GPU worker in time, a full server.

Over real sockets on loopback, on both transports where the ending is the transport's business.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from gpu.subprocess_pool import SubprocessGpuPool
from rtc_server.app import POOL, REGISTRY
from rtc_server.clients.resuming import ResumingSession
from rtc_server.clients.webrtc_client import WebRTCClient
from rtc_server.clients.ws_client import WebSocketClient
from rtc_server.session import SessionRejected, SessionState
from tests.conftest import RunningServer, make_config

INIT = {"curated_prompts": ["a red fox running through fresh snow"]}
Client = WebSocketClient | WebRTCClient


async def open_client(server: RunningServer, transport: str) -> Client:
    client: Client
    if transport == "websocket":
        client = WebSocketClient(server.url, session_init=INIT)
    else:
        client = WebRTCClient(server.url, session_init={"type": "session_init_v2", **INIT})
    try:
        await client.connect()
    except BaseException:
        await client.close()
        raise
    return client


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def at_position(position: int) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event["position"] == position


def kinds(client: Client) -> list[str]:
    return [e["type"] for e in client.events]


@pytest.mark.parametrize("transport", ["websocket", "webrtc"])
async def test_idle_timeout_completes_the_stream_then_says_session_timeout(start_server: Any, transport: str) -> None:
    server = await start_server(make_config(streaming={"session_timeout_seconds": 1}))
    async with await open_client(server, transport) as client:
        await client.wait_for_event("ltx2_segment_start", timeout=15)
        await client.send({"type": "generation_paused_updated", "paused": True})
        await client.wait_for_event("session_timeout", timeout=10)
        seen = kinds(client)
        complete = client.events_of("ltx2_stream_complete")
        assert complete == [{"type": "ltx2_stream_complete", "reason": "stop_requested"}]  # the original's reason
        assert seen[-2:] == ["ltx2_stream_complete", "session_timeout"]
        if isinstance(client, WebSocketClient):
            assert await client.wait_closed() == 1000
        await wait_until(lambda: len(server.app[REGISTRY]) == 0, 5, "timed-out session not released")


@pytest.mark.parametrize("transport", ["websocket", "webrtc"])
async def test_shutdown_says_resume_elsewhere_then_completes_the_stream(start_server: Any, transport: str) -> None:
    server = await start_server(make_config())
    async with await open_client(server, transport) as client:
        await client.wait_for_event("ltx2_segment_start", timeout=15)
        await server._server.close()  # type: ignore[attr-defined]
        await client.wait_for_event("ltx2_stream_complete", timeout=10)
        error = client.events_of("error")[-1]
        assert (error["code"], error["retryable"]) == ("gpu_unavailable", True)
        assert client.events_of("ltx2_stream_complete") == [{"type": "ltx2_stream_complete", "reason": "stop_requested"}]
        seen = kinds(client)
        assert seen.index("error") < seen.index("ltx2_stream_complete")  # resuming clients see the drop first
        if isinstance(client, WebSocketClient):
            assert await client.wait_closed() == 1012  # the session is not over: resume it elsewhere


async def test_a_resuming_client_takes_the_stream_complete_after_a_drop_as_the_connections_end() -> None:
    session = ResumingSession("http://127.0.0.1:9", transport="websocket", session_init=INIT)
    session._event({"type": "error", "code": "gpu_unavailable", "message": "shutting down", "retryable": True})
    session._event({"type": "ltx2_stream_complete", "reason": "stop_requested"})
    assert not session.ended and not session.events_of("ltx2_stream_complete")
    # Without a drop before it, it is the session's end (DELETE, segment cap).
    ended = ResumingSession("http://127.0.0.1:9", transport="websocket", session_init=INIT)
    ended._event({"type": "ltx2_stream_complete", "reason": "stop_requested"})
    assert ended.ended


async def test_no_worker_in_time_is_gpu_unavailable_and_timeout_while_the_queue_keeps_its_order(
    start_server: Any,
) -> None:
    config = make_config(
        pool={"backend": "subprocess", "num_workers": 2, "sessions_per_worker": 1, "restart_delay_seconds": 60,
              "acquire_timeout_seconds": 2.0},
        streaming={"max_sessions": 2, "max_queue": 2},
    )
    server = await start_server(config)
    pool = server.app[POOL]
    assert isinstance(pool, SubprocessGpuPool)
    registry = server.app[REGISTRY]
    clients: list[WebSocketClient] = []
    try:
        streaming = WebSocketClient(server.url, session_init=INIT)
        clients.append(streaming)
        await streaming.connect()
        await streaming.wait_for_event("ltx2_segment_start", timeout=15)
        spare = next(w for w in ("gpu-0", "gpu-1") if w != pool.binding(next(iter(registry._controllers))))
        pool.kill_worker(spare)  # restarts in a minute: until then only the busy worker is up
        await wait_until(lambda: pool.status().ready_workers == 1, 10, "the killed worker still counts as ready")

        waiting = WebSocketClient(server.url, session_init=INIT)  # takes the second slot, then waits for a worker
        clients.append(waiting)
        await waiting.connect()
        await waiting.wait_for_event("queue_status", lambda e: e["position"] == 0)
        waiting_id = next(i for i, c in registry._controllers.items() if c.session.state is SessionState.GPU_BINDING)
        waiting_session = registry.get(waiting_id).session  # type: ignore[union-attr]
        queued = [WebSocketClient(server.url, session_init=INIT) for _ in range(2)]
        for position, client in enumerate(queued, start=1):
            clients.append(client)
            await client.connect()
            await client.wait_for_event("queue_status", at_position(position))

        error = await waiting.wait_for_event("error", timeout=5)
        assert (error["code"], error["retryable"]) == ("gpu_unavailable", True)
        assert await waiting.wait_closed() == 1013
        assert waiting_session.state is SessionState.TIMEOUT
        assert not waiting.events_of("gpu_assigned") and not waiting.events_of("ltx2_stream_start")
        # The queue went on in its order: the first in line took the freed slot, the second moved up one.
        first, second = queued
        await first.wait_for_event("queue_status", lambda e: e["position"] == 0)
        assert [e["position"] for e in second.events_of("queue_status")][:2] == [2, 1]
        assert not second.closed.is_set()
        assert streaming.events_of("ltx2_segment_start") and not streaming.events_of("error")
    finally:
        for client in clients:
            await client.close()


async def test_a_full_server_rejects_with_session_rejected_not_retryable(start_server: Any) -> None:
    server = await start_server(make_config(streaming={"max_sessions": 1, "max_queue": 0}))
    async with await open_client(server, "websocket") as first:
        await first.wait_for_event("ltx2_segment_start", timeout=15)
        with pytest.raises(SessionRejected) as info:
            server.app[REGISTRY].open(transport="websocket", sink=None, client="other")  # type: ignore[arg-type]
        assert (info.value.code, info.value.retryable) == ("session_rejected", False)


async def test_a_full_server_says_session_rejected_not_retryable_on_the_wire(start_server: Any) -> None:
    server = await start_server(make_config(streaming={"max_sessions": 1, "max_queue": 0}))
    async with await open_client(server, "websocket") as first:
        await first.wait_for_event("ltx2_segment_start", timeout=15)
        async with WebSocketClient(server.url, session_init=INIT) as refused:
            await refused.connect()
            error = await refused.wait_for_event("error")
            assert error["code"] == "session_rejected" and error["retryable"] is False  # as the original
            assert await refused.wait_closed() == 1013


def test_a_warming_or_draining_server_rejects_retryably() -> None:
    assert SessionRejected("no GPU worker is ready yet", code="gpu_unavailable").retryable is True


async def test_a_refused_opening_message_ends_the_session_rejected(start_server: Any, tmp_path: Any) -> None:
    server = await start_server(make_config(streaming={"session_log_dir": str(tmp_path)}))
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{server.url}/v1/stream", protocols=["rtcvs"]) as ws:
        await ws.send_str(json.dumps({"type": "segment_prompt_source", "prompt": "not an init"}))
        error = json.loads((await ws.receive()).data)
        assert error["code"] == "invalid_message"
        assert (await ws.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1003

    def ended() -> list[dict[str, Any]]:
        lines = [json.loads(line) for path in tmp_path.glob("session-*.jsonl") for line in path.read_text().splitlines()]
        return [line for line in lines if line["event"] == "end"]

    await wait_until(lambda: bool(ended()), 5, "no end line in the session log")
    assert ended()[0]["payload"]["state"] == "rejected"  # as the original: refused before it started
