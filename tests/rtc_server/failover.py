"""Helpers for the failover tests: sessions over either transport, their frames' markers, resume inits."""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from gpu.frame_marker import FrameMarker, read_marker
from rtc_server.clients.webrtc_client import WebRTCClient
from rtc_server.clients.ws_client import ReceivedSegment, WebSocketClient

Client = WebSocketClient | WebRTCClient

CURATED = ["a red fox running through fresh snow", "a lighthouse in a storm", "a paper boat on a pond"]
NUM_FRAMES = 12  # frames per segment in these tests: half a second at 24 fps


def sampling() -> dict[str, Any]:
    return {"width": 128, "height": 128, "fps": 24, "num_frames": NUM_FRAMES, "num_inference_steps": 1}


def resume_init(info: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A session_init_v2 that resumes the session a ``session_info`` event describes."""
    resume = {"session_id": info["session_id"], "resume_token": info["resume_token"]}
    return {"type": "session_init_v2", "resume_session": resume, **extra}


async def open_client(transport: str, url: str, init: dict[str, Any]) -> Client:
    """A connected session: the init in the offer (WebRTC) or as the first message (WebSocket)."""
    body = {k: v for k, v in init.items() if k != "type"}
    if transport == "webrtc":
        rtc = WebRTCClient(url, session_init=body)
        await rtc.connect()
        return rtc
    ws = WebSocketClient(url, session_init=body)
    await ws.connect()
    return ws


def ws_markers(segment: ReceivedSegment) -> list[FrameMarker]:
    """The frame markers of one fMP4 segment as a WebSocket client received it."""
    markers: list[FrameMarker] = []
    with av.open(io.BytesIO(segment.data), mode="r") as container:
        for frame in container.decode(video=0):
            marker = read_marker(np.asarray(frame.to_ndarray(format="rgb24")))
            if marker is not None:
                markers.append(marker)
    return markers


def markers(client: Client) -> list[FrameMarker]:
    """Every frame marker the client has decoded so far (WebSocket: complete segments only)."""
    if isinstance(client, WebRTCClient):
        return [f.marker for f in client.frames if f.marker is not None]
    found: list[FrameMarker] = []
    for segment in client.complete_segments:
        found.extend(ws_markers(segment))
    return found


def seen_segments(client: Client) -> set[int]:
    """Indices of the segments the client got any media of."""
    if isinstance(client, WebRTCClient):
        return {m.segment_idx for m in markers(client)}
    return {s.segment_idx for s in client.segments if s.chunks}


async def wait_for_marker(client: Client, segment_idx: int, timeout: float = 10.0) -> FrameMarker:
    """The first decoded frame of segment ``segment_idx``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for marker in markers(client):
            if marker.segment_idx == segment_idx:
                return marker
        await asyncio.sleep(0.02)
    raise TimeoutError(f"no frame of segment {segment_idx} within {timeout}s; saw {sorted(seen_segments(client))}")


async def wait_closed(client: Client, timeout: float = 10.0) -> int | None:
    """Wait until the server closed the session: the WebSocket's close code, or None for WebRTC."""
    if isinstance(client, WebSocketClient):
        return await client.wait_closed(timeout)
    deadline = time.monotonic() + timeout
    while client.channel.readyState != "closed" and client.pc.connectionState not in ("closed", "failed"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"peer still {client.pc.connectionState}, channel {client.channel.readyState}")
        await asyncio.sleep(0.05)
    return None


async def wait_segment_complete(client: WebSocketClient, segment_idx: int) -> None:
    await client.wait_for_event("media_segment_complete", lambda e: e["segment_idx"] == segment_idx)


@dataclass
class FirstFrame:
    """When a resumed session's first frame arrived, measured from sending the resume."""

    marker: FrameMarker
    seconds: float


async def first_frame_after(client: Client, sent_at: float, timeout: float = 10.0) -> FirstFrame:
    """The first frame a (resumed) client decodes, and how long after ``sent_at`` (monotonic) it arrived."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if isinstance(client, WebRTCClient):
            marker = client.frames[0].marker if client.frames else None
            if marker is not None:
                return FirstFrame(marker, client.frames[0].received_at - sent_at)
        elif client.segments and client.segments[0].chunks:
            arrived = time.monotonic()  # a WebSocket frame is usable once its fragment is here
            segment = client.segments[0]
            await wait_segment_complete(client, segment.segment_idx)
            return FirstFrame(ws_markers(segment)[0], arrived - sent_at)
        await asyncio.sleep(0.002)
    raise TimeoutError("no frame from the resumed session")
