"""A headless WHEP viewer (aiortc): plain WHEP requests, then frames and sound recorded as the owner's client does.

``POST`` the SDP offer (``application/sdp``, ``Authorization: Bearer <watch_token>``) to
``/v1/sessions/{id}/whep``; a 201 carries the answer and the viewer's ``Location``, which ``leave()``
deletes. Run as a module it watches a session until it ends, printing what it got (a stand-alone
viewer process for tests and load runs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any
from urllib.parse import urljoin

import aiohttp
from aiortc import RTCSessionDescription

from rtc_server.clients.webrtc_client import OfferRejected, WebRTCClient

__all__ = ["WhepClient"]


class WhepClient(WebRTCClient):
    """One viewer of a session over WHEP (receive-only: no control channel, no events)."""

    def __init__(
        self,
        base_url: str,
        session_id: str,
        watch_token: str | None,
        *,
        video_codec: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(base_url, control_channel=False, **options)
        self.session_id = session_id
        self._watch_token = watch_token
        self._video_codec = video_codec
        self.location: str | None = None  # the viewer resource, absolute
        self.link_header: str | None = None
        self.connected = asyncio.Event()
        self.pc.on("connectionstatechange", self._on_state)

    @property
    def endpoint(self) -> str:
        return f"{self._base_url}/v1/sessions/{self.session_id}/whep"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._watch_token}"} if self._watch_token is not None else {}

    async def connect(self, *, http: aiohttp.ClientSession | None = None) -> str:
        """Offer, take the answer; returns the viewer resource's URL. OfferRejected on any status but 201."""
        sdp = await self.local_offer(video_codec=self._video_codec)
        self.offer_posted_at = time.monotonic()
        headers = {**self._headers(), "Content-Type": "application/sdp"}
        async with contextlib.AsyncExitStack() as stack:
            if http is None:
                http = await stack.enter_async_context(aiohttp.ClientSession())
            async with http.post(self.endpoint, data=sdp.encode(), headers=headers) as response:
                text = await response.text()
                if response.status != 201:
                    body: Any = text
                    with contextlib.suppress(ValueError):
                        body = json.loads(text)
                    raise OfferRejected(response.status, body, dict(response.headers))
                self.location = urljoin(self.endpoint, response.headers["Location"])
                self.link_header = response.headers.get("Link")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
        return self.location

    async def _on_state(self) -> None:
        if self.pc.connectionState == "connected":
            self.connected.set()

    async def leave(self, *, http: aiohttp.ClientSession | None = None) -> int:
        """``DELETE`` the viewer resource; returns the status (200, or 404 once it is gone)."""
        assert self.location is not None, "not connected"
        async with contextlib.AsyncExitStack() as stack:
            if http is None:
                http = await stack.enter_async_context(aiohttp.ClientSession())
            async with http.delete(self.location, headers=self._headers()) as response:
                return response.status


async def _watch(args: argparse.Namespace) -> int:
    async with WhepClient(
        args.url, args.session, args.token, keep_frames=False, receive_audio=args.audio, video_codec=args.codec
    ) as client:
        await client.connect()
        print(json.dumps({"event": "connected", "location": client.location}), flush=True)
        started = time.monotonic()
        while args.seconds is None or time.monotonic() - started < args.seconds:
            await asyncio.sleep(1.0)
            print(json.dumps({"event": "progress", "frames": client.frame_count, "audio": client.audio_frame_count}), flush=True)
            if client.pc.connectionState in ("failed", "closed"):
                break
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rtc_server.clients.whep_client", description=__doc__)
    parser.add_argument("url", help="server base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("session", help="session id")
    parser.add_argument("token", help="the session's watch token")
    parser.add_argument("--seconds", type=float, default=None, help="watch this long (default: until the end)")
    parser.add_argument("--audio", action="store_true", help="receive the sound too")
    parser.add_argument("--codec", default=None, help="offer only this video codec, e.g. video/H264")
    return asyncio.run(_watch(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
