"""A session that cannot start is refused at once: in the offer's HTTP answer before any peer
connection exists, or (no session_init_v2 at all) at the init timeout, on both transports."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import aiohttp
import pytest

from rtc_server.app import IMAGE_DIR, REGISTRY, WEBRTC
from rtc_server.clients.webrtc_client import OfferRejected, WebRTCClient
from rtc_server.clients.ws_client import WebSocketClient
from tests.conftest import make_config

INIT = {"type": "session_init_v2", "curated_prompts": ["a red fox running through fresh snow"]}
PNG_HEADER_ONLY = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()


async def wait_empty(server: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(server.app[REGISTRY]) or len(server.app[WEBRTC]):
        assert time.monotonic() < deadline, "session not released"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("init", "fragment"),
    [
        ({"continuation_state": {"kind": "ltx.v1", "payload": {"segment_idx": 3}}}, "continuation_state"),
        ({"continuation_state": {"kind": "synthetic.v1", "payload": {"segment_idx": "three"}}}, "segment_idx"),
        ({"initial_image": {"mime": "image/png", "data": "@@not base64@@"}}, "initial_image"),
        ({"initial_image": {"mime": "image/gif", "data": PNG_HEADER_ONLY}}, "mime"),
        ({"initial_image": {"mime": "image/png", "data": base64.b64encode(b"\0" * 3000).decode()}}, "initial_image"),
    ],
)
async def test_a_refused_session_init_is_the_offers_http_answer(
    start_server: Any, init: dict[str, Any], fragment: str
) -> None:
    server = await start_server(make_config(streaming={"max_init_image_bytes": 2048}))
    client = WebRTCClient(server.url, session_init={**INIT, **init})
    try:
        with pytest.raises(OfferRejected) as info:
            await client.connect()
    finally:
        await client.close()
    assert info.value.status == 400
    error = info.value.body["error"]
    assert error["code"] == "invalid_message" and fragment in error["message"] and error["retryable"] is False
    await wait_empty(server)
    assert not list(server.app[IMAGE_DIR].iterdir())


async def test_a_peer_that_never_sends_session_init_is_told_and_closed(start_server: Any) -> None:
    server = await start_server(make_config(websocket={"init_timeout_seconds": 1.0}))
    async with WebRTCClient(server.url, session_init=None) as client:
        await client.connect()
        await client.wait_channel_open()
        opened = time.monotonic()
        error = await client.wait_for_event("error", timeout=5)
        assert error["code"] == "invalid_message" and "session_init_v2" in error["message"]
        assert time.monotonic() - opened < 2.5
        await wait_empty(server)


async def test_a_socket_that_never_sends_session_init_is_closed_at_the_init_timeout(start_server: Any) -> None:
    server = await start_server(make_config(websocket={"init_timeout_seconds": 1.0}))
    client = WebSocketClient(server.url, session_init={})
    try:
        await client.connect(send_init=False)
        assert await client.wait_closed() == 1003
        assert client.events_of("error")[0]["code"] == "invalid_message"
    finally:
        await client.close()


async def test_a_silent_socket_is_released_at_the_init_timeout_not_twice_it(start_server: Any) -> None:
    # A client that sends nothing and reads nothing, not even the close frame: the server must not
    # wait out a long close handshake on top of the init timeout (it took 20 s for a 10 s timeout).
    server = await start_server(make_config(websocket={"init_timeout_seconds": 1.0}))
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server.url}/v1/stream", autoclose=False, autoping=False)
        started = time.monotonic()
        while not len(server.app[REGISTRY]):
            await asyncio.sleep(0.01)
        await wait_empty(server, timeout=5.0)
        assert time.monotonic() - started < 2.6
        await ws.close()
