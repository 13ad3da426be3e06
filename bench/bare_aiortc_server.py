"""The floor for bench/webrtc_session.py: a bare aiortc server with nothing between offer and frames.

It speaks the service's signalling (``POST /v1/webrtc/offer``: ``{sdp, type}`` in,
``{sdp, type, session_id}`` out), pins host candidates and VP8 bitrate bounds with the service's own
helpers, accepts the client's data channel, and streams frames made once at startup through a
track paced at ``--fps`` from its first ``recv``. No sessions, no generation, no playout buffer:
the time from offer to first frame here is what aiortc itself costs on this machine.

Usage: python bench/bare_aiortc_server.py --port PORT [--size 512] [--fps 24] [--bitrate 1500000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Final

import numpy as np
from aiohttp import web
from aiortc import (
    MediaStreamTrack,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.encoder_cost import frames_for
from rtc_server.transports.ice import (
    apply_bitrate_bounds,
    build_rtc_configuration,
    restrict_host_candidates,
)

LOOPBACK: Final = "127.0.0.1"
RTP_VIDEO_CLOCK_HZ: Final = 90_000  # RTP clock of every video payload format
PREMADE_SECONDS: Final = 2  # frames made at startup, then cycled
DEFAULT_BITRATE_BPS: Final = 1_500_000  # what bench/webrtc_session.py pins the real server's encoder to


class PremadeVideoTrack(MediaStreamTrack):
    """Hands out pre-made RGB frames, one every 1/fps s counted from the first ``recv``."""

    kind = "video"

    def __init__(self, frames: Sequence[np.ndarray], *, fps: int) -> None:
        super().__init__()
        self._frames = frames
        self._fps = fps
        self._time_base = Fraction(1, RTP_VIDEO_CLOCK_HZ)
        self._started_at: float | None = None
        self._sent = 0

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._started_at is None:
            self._started_at = now
        delay = self._started_at + self._sent / self._fps - now
        if delay > 0:
            await asyncio.sleep(delay)
        # Zero-copy, as the service's own track does: the encoder converts from RGB in both.
        frame = VideoFrame.from_numpy_buffer(self._frames[self._sent % len(self._frames)], format="rgb24")
        frame.pts = self._sent * RTP_VIDEO_CLOCK_HZ // self._fps
        frame.time_base = self._time_base
        self._sent += 1
        return frame


class BarePeers:
    """The open peer connections, answered from offers and closed one by one at shutdown."""

    def __init__(self, frames: Sequence[np.ndarray], *, fps: int) -> None:
        self._frames = frames
        self._fps = fps
        self._peers: dict[str, RTCPeerConnection] = {}
        self._channels: dict[str, RTCDataChannel] = {}

    async def answer(self, sdp: str, sdp_type: str) -> dict[str, str]:
        """Answer one offer with a paced track; the order of steps is the service's."""
        pc = RTCPeerConnection(build_rtc_configuration([]))  # no STUN (aiortc's default): loopback only
        session_id = uuid.uuid4().hex
        self._peers[session_id] = pc

        def on_datachannel(channel: RTCDataChannel) -> None:
            self._channels[session_id] = channel  # accepted and held; nothing is sent on it

        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close_session(session_id)

        pc.on("datachannel", on_datachannel)
        pc.on("connectionstatechange", on_state)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=sdp_type))
        pc.addTrack(PremadeVideoTrack(self._frames, fps=self._fps))
        restrict_host_candidates(pc, [LOOPBACK])
        await pc.setLocalDescription(await pc.createAnswer())
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "session_id": session_id}

    def __len__(self) -> int:
        return len(self._peers)

    async def close_session(self, session_id: str) -> bool:
        """Close one peer; False if it is not open."""
        pc = self._peers.pop(session_id, None)
        self._channels.pop(session_id, None)
        if pc is None:
            return False
        await pc.close()
        return True

    async def close(self) -> None:
        """Close every peer, one by one."""
        for session_id in list(self._peers):
            await self.close_session(session_id)


PEERS = web.AppKey("peers", BarePeers)


async def offer(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        sdp, sdp_type = str(body["sdp"]), str(body["type"])
    except (ValueError, KeyError, TypeError) as exc:
        return web.json_response({"error": {"code": "invalid_message", "message": str(exc), "retryable": False}}, status=400)
    return web.json_response(await request.app[PEERS].answer(sdp, sdp_type))


async def ready(request: web.Request) -> web.Response:
    return web.json_response({"ready": True})


async def health(request: web.Request) -> web.Response:
    """Open sessions, as the service's ``/health`` reports them (the bench waits for 0 between runs)."""
    return web.json_response({"status": "ok", "sessions": len(request.app[PEERS])})


async def delete_session(request: web.Request) -> web.Response:
    if not await request.app[PEERS].close_session(request.match_info["session_id"]):
        return web.json_response({"error": {"code": "invalid_message", "message": "no such session", "retryable": False}}, status=404)
    return web.json_response({"closed": True})


def build_app(frames: Sequence[np.ndarray], *, fps: int) -> web.Application:
    """The bare server: the offer endpoint, a readiness probe, and the peers it owns."""
    app = web.Application()

    async def peers_ctx(app: web.Application) -> AsyncIterator[None]:
        peers = BarePeers(frames, fps=fps)
        app[PEERS] = peers
        yield
        await peers.close()

    app.cleanup_ctx.append(peers_ctx)
    app.router.add_post("/v1/webrtc/offer", offer)
    app.router.add_get("/readyz", ready)
    app.router.add_get("/health", health)
    app.router.add_delete("/v1/sessions/{session_id}", delete_session)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--bitrate", type=int, default=DEFAULT_BITRATE_BPS, help="VP8 min = start = max (bit/s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    apply_bitrate_bounds(min_bps=args.bitrate, max_bps=args.bitrate, start_bps=args.bitrate)
    frames = list(frames_for(args.size, args.size, PREMADE_SECONDS * args.fps))  # before listening: /readyz means ready
    # run_app turns SIGTERM/SIGINT into a graceful shutdown that runs the cleanup (closes the peers).
    web.run_app(build_app(frames, fps=args.fps), host=LOOPBACK, port=args.port, print=None)


if __name__ == "__main__":
    main()
