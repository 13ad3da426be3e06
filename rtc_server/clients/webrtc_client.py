"""A headless WebRTC client (aiortc) that opens a session and records what it receives.

Used by the test suite and the load tool: it decodes every frame, reads the
synthetic generator's embedded frame marker back, and keeps the control events.
With ``receive_audio`` it offers an audio m-line too and keeps the decoded sound.

Each decoded frame (video or audio) also records when the first RTP packet of it arrived: aiortc's
receive side holds frames back (video until the next frame begins, audio four packets), unequally
for the two kinds, so decode time would skew an audio/video comparison that packet arrival does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import aiohttp
import numpy as np
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

from gpu.frame_marker import FrameMarker, read_marker
from rtc_server.clients.events import EventLog
from rtc_server.transports.ice import build_rtc_configuration, recheck_on_peer_checks, release_listeners
from rtc_server.transports.ice_gathering import GatheringLog, GatheringPolicy, install_gathering

__all__ = [
    "IceGatheringFailed",
    "OfferRejected",
    "ReceivedAudio",
    "ReceivedFrame",
    "WebRTCClient",
    "fetch_ice_servers",
]

THUMB_STEP_PX = 8  # keep every 8th pixel of the luma plane per frame, for cheap comparisons
_ARRIVALS_KEPT = 1024  # RTP timestamps remembered per track: far more than a receiver holds back
_RTP_TIMESTAMP_MOD = 1 << 32
_INT16_SCALE = 32768.0


class OfferRejected(RuntimeError):
    """The server answered the offer with an error status."""

    def __init__(self, status: int, body: Any, headers: dict[str, str]) -> None:
        super().__init__(f"offer rejected with HTTP {status}: {body}")
        self.status = status
        self.body = body
        self.headers = headers


class IceGatheringFailed(RuntimeError):
    """A relay-only client got no relay candidate: the TURN server refused it or did not answer."""


async def fetch_ice_servers(
    base_url: str, *, auth_token: str | None = None, http: aiohttp.ClientSession | None = None
) -> tuple[list[dict[str, Any]], int]:
    """The ICE servers (with fresh TURN credentials) a server hands its clients, and their TTL in seconds."""
    headers = {"Authorization": f"Bearer {auth_token}"} if auth_token else {}
    async with contextlib.AsyncExitStack() as stack:
        if http is None:
            http = await stack.enter_async_context(aiohttp.ClientSession())
        async with http.get(f"{base_url.rstrip('/')}/v1/webrtc/ice-servers", headers=headers) as response:
            body = await response.json(content_type=None)
            if response.status != 200:
                raise OfferRejected(response.status, body, dict(response.headers))
    return list(body["ice_servers"]), int(body["ttl_seconds"])


@dataclass(frozen=True)
class ReceivedFrame:
    """One decoded frame: when it arrived (monotonic s), its size, its marker and a luma thumbnail."""

    received_at: float
    width: int
    height: int
    marker: FrameMarker | None
    thumb: np.ndarray
    arrived_at: float | None = None  # monotonic s when its first RTP packet came in
    pts: int | None = None  # its RTP timestamp (90 kHz), counted from the stream's first


@dataclass(frozen=True)
class ReceivedAudio:
    """One decoded audio frame: when it was decoded and when its RTP packet arrived (monotonic s),
    its position in the stream (``pts`` samples, from the first packet) and its samples mixed to mono."""

    received_at: float
    arrived_at: float | None
    pts: int
    sample_rate: int
    samples: np.ndarray  # (n,) float32 in [-1, 1]


class _ArrivalLog:
    """When the first packet of each RTP timestamp reached a receiver (monotonic s), keyed the way
    aiortc stamps decoded frames: timestamps counted from the first packet's."""

    def __init__(self, receiver: RTCRtpReceiver) -> None:
        self._arrivals: OrderedDict[int, float] = OrderedDict()
        self._origin: int | None = None
        handle = receiver._handle_rtp_packet  # aiortc calls it as each packet is read off the socket

        async def recording(packet: Any, arrival_time_ms: int) -> None:
            self._record(packet.timestamp)
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = recording  # type: ignore[method-assign]

    def _record(self, timestamp: int) -> None:
        if self._origin is None:
            self._origin = timestamp
        key = (timestamp - self._origin) % _RTP_TIMESTAMP_MOD
        if key not in self._arrivals:
            self._arrivals[key] = time.monotonic()
            if len(self._arrivals) > _ARRIVALS_KEPT:
                self._arrivals.popitem(last=False)

    def arrival(self, pts: int | None) -> float | None:
        return None if pts is None else self._arrivals.get(pts % _RTP_TIMESTAMP_MOD)


def luma_plane(frame: VideoFrame) -> np.ndarray:
    """The Y plane of a decoded frame as (height, width) uint8, without the row padding."""
    if frame.format.name not in ("yuv420p", "yuvj420p"):
        frame = frame.reformat(format="yuv420p")
    plane = frame.planes[0]
    rows = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(frame.height, plane.line_size)
    return rows[:, : frame.width]


def mono_samples(frame: AudioFrame) -> np.ndarray:
    """A decoded audio frame's samples as (n,) float32 in [-1, 1], channels averaged."""
    channels = len(frame.layout.channels)
    data = frame.to_ndarray()
    if frame.format.is_planar:
        pcm = data.T.astype(np.float32)  # (channels, n) -> (n, channels)
    else:
        pcm = data.reshape(-1, channels).astype(np.float32)
    if frame.format.name.startswith("s16"):
        pcm /= _INT16_SCALE
    return np.ascontiguousarray(pcm.mean(axis=1), dtype=np.float32)


class WebRTCClient(EventLog):
    """One session over WebRTC: offer/answer over HTTP, frames over RTP, events over ``control``."""

    def __init__(
        self,
        base_url: str,
        *,
        session_init: dict[str, Any] | None = None,
        host_addresses: list[str] | None = None,
        on_frame: Callable[[ReceivedFrame], None] | None = None,
        keep_frames: bool = True,
        auth_token: str | None = None,
        ice_servers: list[dict[str, Any]] | None = None,
        relay_only: bool = False,
        receive_audio: bool = False,
        control_channel: bool = True,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._session_init = session_init
        self._host_addresses = host_addresses if host_addresses is not None else ["127.0.0.1"]
        self._on_frame = on_frame
        self._keep_frames = keep_frames
        self._auth_token = auth_token
        self._relay_only = relay_only
        self._receive_audio = receive_audio
        super().__init__()
        self.pc = RTCPeerConnection(build_rtc_configuration(ice_servers or [], relay_only=relay_only))
        self.gathering = GatheringLog()
        self.channel = self.pc.createDataChannel("control") if control_channel else None
        self.frames: list[ReceivedFrame] = []
        self.frame_count = 0
        self.audio: list[ReceivedAudio] = []
        self.audio_frame_count = 0
        self.audio_track_received = False
        self.session_id: str | None = None
        self.offer_posted_at: float | None = None
        self.first_frame_at: float | None = None
        self._channel_open = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._audio_reader: asyncio.Task[None] | None = None
        if self.channel is not None:
            self.channel.on("open", self._channel_open.set)
            self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)

    async def connect(self, *, http: aiohttp.ClientSession | None = None) -> str:
        """Send the offer (with the init in the body) and apply the answer; returns the session id.

        A relay-only client that gets no relay candidate raises IceGatheringFailed saying why.
        """
        body: dict[str, Any] = {"sdp": await self.local_offer(), "type": "offer"}
        if self._session_init is not None:
            body["session_init"] = self._session_init
        self.offer_posted_at = time.monotonic()
        async with contextlib.AsyncExitStack() as stack:
            if http is None:
                http = await stack.enter_async_context(aiohttp.ClientSession())
            headers = {"Authorization": f"Bearer {self._auth_token}"} if self._auth_token else {}
            async with http.post(f"{self._base_url}/v1/webrtc/offer", json=body, headers=headers) as response:
                payload = await response.json(content_type=None)
                if response.status != 200:
                    raise OfferRejected(response.status, payload, dict(response.headers))
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=payload["sdp"], type=payload["type"]))
        self.session_id = payload["session_id"]
        return payload["session_id"]

    async def local_offer(self, *, video_codec: str | None = None) -> str:
        """Receive-only transceivers (video, and audio if asked), gathered: the offer's SDP.

        ``video_codec`` (e.g. ``video/H264``) offers only that video codec."""
        video = self.pc.addTransceiver("video", direction="recvonly")
        if video_codec is not None:
            codecs = RTCRtpSender.getCapabilities("video").codecs
            video.setCodecPreferences([c for c in codecs if c.mimeType.lower() in (video_codec.lower(), "video/rtx")])
        if self._receive_audio:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.gathering = install_gathering(self.pc, GatheringPolicy(host_addresses=self._host_addresses))
        recheck_on_peer_checks(self.pc)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        if self._relay_only and " typ relay" not in self.pc.localDescription.sdp:
            why = "; ".join(self.gathering.failures) or "no TURN server among the ICE servers"
            raise IceGatheringFailed(f"no relay candidate: {why}")
        return str(self.pc.localDescription.sdp)

    async def wait_channel_open(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._channel_open.wait(), timeout)

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        """Send a control message (a dict is JSON-encoded; text and bytes go as they are)."""
        assert self.channel is not None, "this client has no control channel"
        self.channel.send(json.dumps(message) if isinstance(message, dict) else message)

    def _on_message(self, data: str | bytes) -> None:
        self.record_event(json.loads(data))

    def _on_track(self, track: MediaStreamTrack) -> None:
        receiver = next((t.receiver for t in self.pc.getTransceivers() if t.receiver.track is track), None)
        arrivals = _ArrivalLog(receiver) if receiver is not None else None
        if track.kind == "video" and self._reader is None:
            self._reader = asyncio.create_task(self._read_frames(track, arrivals), name="client-frames")
        elif track.kind == "audio" and self._audio_reader is None:
            self.audio_track_received = True
            self._audio_reader = asyncio.create_task(self._read_audio(track, arrivals), name="client-audio")

    async def _read_frames(self, track: MediaStreamTrack, arrivals: _ArrivalLog | None) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, VideoFrame)
                now = time.monotonic()
                luma = luma_plane(frame)
                received = ReceivedFrame(
                    received_at=now,
                    width=frame.width,
                    height=frame.height,
                    marker=read_marker(luma),
                    thumb=luma[::THUMB_STEP_PX, ::THUMB_STEP_PX].copy(),
                    arrived_at=arrivals.arrival(frame.pts) if arrivals is not None else None,
                    pts=frame.pts,
                )
                if self.first_frame_at is None:
                    self.first_frame_at = now
                self.frame_count += 1
                if self._keep_frames:
                    self.frames.append(received)
                if self._on_frame is not None:
                    self._on_frame(received)

    async def _read_audio(self, track: MediaStreamTrack, arrivals: _ArrivalLog | None) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, AudioFrame)
                now = time.monotonic()
                self.audio_frame_count += 1
                if not self._keep_frames:
                    continue
                self.audio.append(
                    ReceivedAudio(
                        received_at=now,
                        arrived_at=arrivals.arrival(frame.pts) if arrivals is not None else None,
                        pts=int(frame.pts or 0),
                        sample_rate=frame.sample_rate,
                        samples=mono_samples(frame),
                    )
                )

    async def close(self) -> None:
        await self.pc.close()
        release_listeners(self.pc)
        if self.channel is not None:
            self.channel.remove_all_listeners()
        for reader in (self._reader, self._audio_reader):
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
