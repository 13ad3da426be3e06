"""Hostile clients against a real server on loopback: every malformed message answered, floods bounded,
no session ended or disturbed, memory bounded.

The server runs in this process, so the resident-memory figures include the clients: the bounds
asserted are far below what the faults cost before (600 MB in 4.5 s for one flooding socket).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from PIL import Image

from rtc_server.app import REGISTRY
from rtc_server.clients.webrtc_client import ReceivedFrame, WebRTCClient
from rtc_server.clients.ws_client import WebSocketClient
from rtc_server.process_memory import resident_bytes
from tests.conftest import RunningServer, make_config
from tests.rtc_server.hostile import Hostile, corpus
from tests.rtc_server.offers import real_offer_sdp

INIT = {"type": "session_init_v2", "curated_prompts": ["a red fox running through fresh snow"]}
FUZZ_MESSAGES = 5000
IN_FLIGHT = 200  # malformed messages sent and not yet answered
FPS = 24
ON_TIME_FRACTION = 0.98
MB = 1024 * 1024
WEBRTC_STRING_PPID = 51  # SCTP payload id of a data-channel text message
RAW_SEND_ABOVE_BYTES = 64 * 1024  # aiortc's client refuses to send past the server's advertised maximum


def fuzz_config() -> Any:
    # The per-connection rate limit is tested on its own below; here every message must reach the parser.
    return make_config(limits={"messages_per_second": 1_000_000, "message_burst": 1_000_000})


class FrameWatch:
    """A well-behaved WebRTC viewer: counts the frames it decodes within a time window."""

    def __init__(self, url: str) -> None:
        self.times: list[float] = []
        self.client = WebRTCClient(url, session_init=INIT, on_frame=self._on_frame, keep_frames=False)

    def _on_frame(self, frame: ReceivedFrame) -> None:
        self.times.append(frame.received_at)

    def frames_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.times if start <= t < end)


async def send_hostile(attacker: Any, transport: str, item: Hostile) -> None:
    if transport == "webrtc":
        raw = item.payload if isinstance(item.payload, bytes) else item.payload.encode("utf-8", "surrogatepass")
        if isinstance(item.payload, bytes) or len(raw) > RAW_SEND_ABOVE_BYTES:
            # Text that is not UTF-8, or larger than the server says it takes: an attacker's raw SCTP send.
            await attacker.pc.sctp._send(attacker.channel.id, WEBRTC_STRING_PPID, raw)
        else:
            attacker.channel.send(item.payload)
    else:
        # A WebSocket text frame must be UTF-8 (RFC 6455 fails the connection otherwise):
        # not-UTF-8 bytes go as a binary frame, which the control protocol refuses.
        await attacker.send(item.payload)


async def open_attacker(server: RunningServer, transport: str) -> Any:
    attacker: Any
    if transport == "webrtc":
        attacker = WebRTCClient(server.url, session_init=INIT, keep_frames=False)
        await attacker.connect()
        await attacker.wait_channel_open()
    else:
        attacker = WebSocketClient(server.url, session_init=INIT)
        await attacker.connect()
    await attacker.wait_for_event("ltx2_segment_start")
    return attacker


@pytest.mark.parametrize("transport", ["webrtc", "websocket"])
async def test_five_thousand_malformed_messages_are_each_answered_and_disturb_nobody(
    start_server: Any, transport: str
) -> None:
    server = await start_server(fuzz_config())
    watch = FrameWatch(server.url)
    await watch.client.connect()
    attacker = await open_attacker(server, transport)
    try:
        await watch.client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 1, timeout=15)
        rss_before = resident_bytes() or 0
        errors_before = len(attacker.events_of("error"))
        started = time.monotonic()
        for number, item in enumerate(corpus(FUZZ_MESSAGES)):
            # At most a window of unanswered messages: this process plays the attacker, the viewer
            # and the server on 2 cores, and a deeper burst overflows loopback UDP buffers, which
            # aiortc's SCTP then recovers from at one retransmission timeout (1 s) at a time.
            while number - (len(attacker.events_of("error")) - errors_before) > IN_FLIGHT:
                await asyncio.sleep(0.002)
            await send_hostile(attacker, transport, item)
        deadline = time.monotonic() + 60
        while len(attacker.events_of("error")) - errors_before < FUZZ_MESSAGES:
            assert time.monotonic() < deadline, f"{len(attacker.events_of('error')) - errors_before} answered"
            await asyncio.sleep(0.05)
        ended = time.monotonic()
        answers = attacker.events_of("error")[errors_before:]
        assert {e["code"] for e in answers} == {"invalid_message"}
        assert max(len(e["message"]) for e in answers) <= 200  # nothing echoed unbounded
        rate = FUZZ_MESSAGES / (ended - started)
        print(f"\n{transport}: {FUZZ_MESSAGES} malformed messages answered in {ended - started:.1f} s ({rate:.0f}/s)")
        # Both sessions live on, the good one streaming on time through the attack.
        assert len(server.app[REGISTRY]) == 2
        assert not attacker.events_of("ltx2_stream_complete") and not watch.client.events_of("ltx2_stream_complete")
        window_end = max(ended, started + 2.0)
        await asyncio.sleep(max(0.0, window_end + 0.1 - time.monotonic()))
        expected = (window_end - started) * FPS
        assert watch.frames_between(started, window_end) >= ON_TIME_FRACTION * expected - 2
        assert (resident_bytes() or 0) - rss_before < 300 * MB
    finally:
        await attacker.close()
        await watch.client.close()


async def test_a_data_channel_flood_is_rate_limited_and_the_session_goes_on(start_server: Any) -> None:
    server = await start_server(make_config(limits={"messages_per_second": 20, "message_burst": 40}))
    async with WebRTCClient(server.url, session_init=INIT, keep_frames=False) as client:
        await client.connect()
        await client.wait_channel_open()
        await client.wait_for_event("ltx2_segment_start")
        for _ in range(1000):
            client.channel.send(json.dumps({"type": "warp_drive"}))
        await asyncio.sleep(1.5)
        invalid = [e for e in client.events_of("error") if e["code"] == "invalid_message"]
        limited = [e for e in client.events_of("error") if e["code"] == "rate_limited"]
        assert limited and all(e["retryable"] for e in limited) and len(limited) <= 3
        assert 40 <= len(invalid) <= 40 + 20 * 3  # the burst, then the sustained rate
        # The session still answers and streams.
        start = len(client.events_of("ltx2_segment_complete"))
        await client.wait_for_event("ltx2_segment_complete", lambda e: True, timeout=5)
        await client.wait_for_event(
            "ltx2_segment_complete", lambda e: len(client.events_of("ltx2_segment_complete")) > start, timeout=5
        )
        assert len(server.app[REGISTRY]) == 1


async def test_a_flooding_socket_that_never_reads_is_throttled_and_leaves_no_memory_behind(
    start_server: Any,
) -> None:
    server = await start_server(make_config())
    rss_before = resident_bytes() or 0
    message = json.dumps({"type": "warp_drive" + "x" * 100_000})  # each answer names it, briefly
    flood_s = 6.0
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server.url}/v1/stream", max_msg_size=0)
        await ws.send_str(json.dumps(INIT))
        # The client never reads, and sends as fast as its socket lets it. The server reads it at
        # the configured rate; TCP holds the rest back at the client.
        sent, started = 0, time.monotonic()
        while time.monotonic() - started < flood_s:
            try:
                await asyncio.wait_for(ws.send_str(message), flood_s)
            except TimeoutError:
                break  # the client's socket is full: it is held back
            sent += 1
        elapsed = time.monotonic() - started
        rss_during = (resident_bytes() or 0) - rss_before
        assert len(server.app[REGISTRY]) == 1  # throttled, not dropped: it may go on at the allowed rate
        await ws.close()
    # 20 messages a second and a burst of 40 are read; socket buffers hold a few hundred more on
    # loopback. Unthrottled, 600 MB of them were buffered in 4.5 s.
    assert sent <= 40 + 20 * elapsed + 300, (sent, elapsed)
    assert rss_during < 200 * MB, rss_during / MB
    deadline = time.monotonic() + 10
    while len(server.app[REGISTRY]):
        assert time.monotonic() < deadline, "the flooding session was not released"
        await asyncio.sleep(0.05)
    assert (resident_bytes() or 0) - rss_before < 200 * MB


@pytest.mark.parametrize("transport", ["webrtc", "websocket"])
async def test_sampling_values_beyond_the_limits_are_refused_naming_field_and_limit(
    start_server: Any, transport: str
) -> None:
    server = await start_server(make_config(limits={"max_inference_steps": 8}))
    client = await open_attacker(server, transport)
    try:
        await client.send({"type": "segment_prompt_source", "prompt": "a fox", "num_inference_steps": 1000})
        error = await client.wait_for_event("error")
        assert error["code"] == "invalid_message"
        assert "num_inference_steps" in error["message"] and "8" in error["message"]
        await client.send({"type": "segment_prompt_source", "prompt": "a fox", "num_inference_steps": 8})
        ack = await client.wait_for_event("prompt_received")
        assert ack["prompt"] == "a fox"
    finally:
        await client.close()


def noise_png_base64(side: int) -> str:
    pixels = np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


async def post_in_pieces(server: RunningServer, body: bytes, piece: int, pause_s: float) -> tuple[int, Any]:
    """POST an offer over a raw socket, ``piece`` bytes at a time with pauses, as a slow network would."""
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = (
            f"POST /v1/webrtc/offer HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode())
        for start in range(0, len(body), piece):
            writer.write(body[start : start + piece])
            await writer.drain()
            await asyncio.sleep(pause_s)
        response = await reader.read()
    finally:
        writer.close()
    status = int(response.split(b" ", 2)[1])
    return status, json.loads(response.split(b"\r\n\r\n", 1)[1])


@pytest.mark.parametrize(
    ("image_side", "piece", "pause_s"),
    [(None, 500, 0.01), (580, 16 * 1024, 0.005)],
    ids=["500-byte-pieces", "1.4MB-offer"],
)
async def test_an_offer_arriving_in_pieces_is_read_whole_and_answered(
    server: RunningServer, image_side: int | None, piece: int, pause_s: float
) -> None:
    init: dict[str, Any] = dict(INIT)
    if image_side is not None:
        init["initial_image"] = {"mime": "image/png", "data": noise_png_base64(image_side)}
    body = json.dumps({"sdp": await real_offer_sdp(), "type": "offer", "session_init": init}).encode()
    if image_side is not None:
        assert len(body) > 1_300_000
    status, answer = await post_in_pieces(server, body, piece, pause_s)
    assert status == 200, answer
    assert answer["type"] == "answer" and answer["session_id"]
    async with (
        aiohttp.ClientSession() as http,
        http.delete(f"{server.url}/v1/sessions/{answer['session_id']}") as response,
    ):
        assert response.status == 200


async def test_an_image_bomb_in_an_offer_is_refused_without_decoding(server: RunningServer, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 12_000)).save(bomb)  # a few KB compressed, 144 megapixels
    init = {**INIT, "initial_image": {"mime": "image/png", "data": base64.b64encode(bomb.read_bytes()).decode()}}
    rss_before = resident_bytes() or 0
    started = time.monotonic()
    body = json.dumps({"sdp": await real_offer_sdp(), "type": "offer", "session_init": init}).encode()
    status, answer = await post_in_pieces(server, body, 64 * 1024, 0.0)
    assert status == 400 and answer["error"]["code"] == "invalid_message"
    assert "initial_image" in answer["error"]["message"] and "pixels" in answer["error"]["message"]
    assert time.monotonic() - started < 5
    assert (resident_bytes() or 0) - rss_before < 100 * MB
    assert len(server.app[REGISTRY]) == 0
