"""WHEP egress: viewers of a session over WebRTC, sent the packets the owner gets (encoded once per tier).

``POST /v1/sessions/{id}/whep`` (``Content-Type: application/sdp``, ``Authorization: Bearer
<watch_token>``) with an SDP offer answers ``201 Created``: the SDP answer (all candidates in it: no
trickle) and the viewer resource's ``Location``; ``DELETE`` that location to leave (``PATCH``, trickle
ICE, is answered 405). ``GET /v1/sessions/{id}/ice-servers`` (the same token) gives the viewer the
STUN/TURN servers to gather with before it offers. Refusals are JSON ``{error: {code, message, retryable}}``: 404 unknown session
(or viewers off), 401 missing or wrong token, 503 + ``Retry-After`` when it has ``max_per_session``
viewers, 415 not SDP, 400 an offer that cannot receive video.

A WebRTC owner's viewers share its tiers (``WatchHub.rtc_media``); the viewers of any other owner share
a paced feed of their own (rtc_server/viewers/paced_feed.py), from the next segment on.

A viewer is receive-only: video from its codec's tier, and sound where the session has it. It leaves
when the session ends, when it never connects, when it stops sending receiver reports, when its
connection fails, or when it falls ``MAX_QUEUED_VIDEO_PACKETS`` behind (nobody waits for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from aiohttp import web
from aiortc import RTCPeerConnection, RTCRtpTransceiver

from rtc_server.auth import bearer_token
from rtc_server.config import ServiceConfig
from rtc_server.http_errors import HttpError
from rtc_server.media.packet_track import PacketTrack
from rtc_server.media.shared_media import SharedMedia
from rtc_server.registry import SessionRegistry
from rtc_server.transports.gate import Gate
from rtc_server.transports.ice import release_listeners
from rtc_server.transports.tier_senders import follow_receiver, negotiated_codec, send_as_is, set_offer
from rtc_server.transports.webrtc import WebRTCTransport
from rtc_server.viewers.fmp4_fanout import WatchFull, WatchHub
from rtc_server.viewers.paced_feed import PacedFeed
from rtc_server.viewers.watch_access import watched_hub
from rtc_server.viewers.watch_endpoint import FULL_RETRY_AFTER_S

__all__ = ["WHEP", "WhepService", "WhepViewer", "register_routes"]

logger = logging.getLogger(__name__)

SDP_TYPE = "application/sdp"
WATCHDOG_INTERVAL_S = 1.0
_SENDABLE = ("sendonly", "sendrecv")  # aiortc keeps the offer's direction reversed: what this side may do


class WhepViewer:
    """One WHEP viewer: its peer connection, its tracks on the session's tiers, and its watchdog."""

    def __init__(
        self, *, session_id: str, pc: RTCPeerConnection, hub: WatchHub, media: SharedMedia, label: str
    ) -> None:
        self.id = secrets.token_urlsafe(16)  # the resource's name: unguessable, it is all DELETE asks for
        self.session_id = session_id
        self.pc = pc
        self.hub = hub
        self.media = media
        self.label = label
        self.video: PacketTrack | None = None
        self.audio: PacketTrack | None = None
        self.left = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[None] | None = None
        self._answered = time.monotonic()

    @property
    def location(self) -> str:
        return f"/v1/sessions/{self.session_id}/whep/{self.id}"

    def subscribe(self, video: RTCRtpTransceiver, audio: RTCRtpTransceiver | None, *, starts_media: bool) -> None:
        """Take the offer's video (and audio) sections with tracks on the session's tiers
        (``starts_media``: the feed of a non-WebRTC owner, paced from the first viewer's first read)."""
        self.video = self.media.video_track(
            negotiated_codec(video).mimeType, on_overflow=lambda: self.leave("fell behind"), starts_media=starts_media
        )
        follow_receiver(send_as_is(self.pc.addTrack(self.video), self.video), self.media, self.video, follow_bitrate=False)
        if audio is not None and self.media.has_audio:
            self.audio = self.media.audio_track(negotiated_codec(audio), on_overflow=lambda: self.leave("audio fell behind"))
            send_as_is(self.pc.addTrack(self.audio), self.audio)

    def wire(self, *, connect_timeout_s: float, peer_timeout_s: float) -> None:
        """Watch the connection from the answer on."""
        self._answered = time.monotonic()
        self.pc.on("connectionstatechange", self._on_state)
        self._watchdog = asyncio.create_task(self._watch(connect_timeout_s, peer_timeout_s), name=f"whep-{self.id[:8]}")

    async def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self.leave(f"connection {self.pc.connectionState}")

    def leave(self, why: str) -> None:
        """End this viewer (from any callback): its resource goes, its connection closes."""
        if not self.left.is_set():
            logger.info("%s: viewer %s leaves (%s)", self.label, self.id[:8], why)
            self.left.set()

    async def _watch(self, connect_timeout_s: float, peer_timeout_s: float) -> None:
        media_since: float | None = None
        while not self.left.is_set():
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            if self.pc.connectionState != "connected":
                if time.monotonic() - self._answered > connect_timeout_s:
                    self.leave(f"not connected after {connect_timeout_s:.0f}s")
                continue
            if self.video is None or self.video.packets_sent == 0:
                continue  # receivers report only on media they got
            media_since = media_since or time.monotonic()
            if time.monotonic() - (self.video.heard_at or media_since) > peer_timeout_s:
                self.leave(f"no RTCP for {peer_timeout_s:.1f}s")

    async def close(self) -> None:
        """Drop the tracks from their tiers and close the connection (idempotent)."""
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        self._closing = asyncio.get_running_loop().create_future()
        self.left.set()
        try:
            watchdog, self._watchdog = self._watchdog, None
            if watchdog is not None and watchdog is not asyncio.current_task():
                watchdog.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watchdog
            for track in (self.video, self.audio):
                if track is not None:
                    self.media.remove(track)
            await self.pc.close()
        finally:
            release_listeners(self.pc)
            self._closing.set_result(None)


class WhepService:
    """The WHEP viewers of this server's sessions."""

    def __init__(self, *, config: ServiceConfig, registry: SessionRegistry, gate: Gate, webrtc: WebRTCTransport) -> None:
        self._config = config
        self._registry = registry
        self._gate = gate
        self._webrtc = webrtc
        self._viewers: dict[str, WhepViewer] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._viewers)

    def viewers_of(self, session_id: str) -> list[WhepViewer]:
        return [v for v in self._viewers.values() if v.session_id == session_id]

    async def join(self, request: web.Request) -> web.Response:
        """Answer a viewer's offer (see the module docstring); raises HttpError."""
        session_id = request.match_info["session_id"]
        token = bearer_token(request.headers.get("Authorization"))
        hub = watched_hub(request, token, config=self._config, registry=self._registry, gate=self._gate)
        if request.content_type != SDP_TYPE:
            raise HttpError(415, "invalid_message", f"a WHEP offer is sent as {SDP_TYPE}")
        try:
            hub.reserve()
        except WatchFull as exc:
            raise HttpError(503, "session_rejected", str(exc), retryable=True, headers={"Retry-After": str(FULL_RETRY_AFTER_S)}) from exc
        try:
            return await self._answer(request, session_id, hub)
        except BaseException:
            hub.unreserve()
            self._close_idle_feed(hub)
            raise

    def _media_of(self, hub: WatchHub) -> tuple[SharedMedia, bool]:
        """The session's shared media, and whether a viewer's first read starts it (a feed's)."""
        media = hub.rtc_media
        if media is not None and not media.closed:
            return media, False
        feed = hub.paced_feed
        if feed is None or feed.media.closed:
            sampling = self._config.default_request.sampling
            feed = hub.paced_feed = PacedFeed(
                fps=sampling.fps,
                audio_format=self._registry.services.pool.audio_format,
                webrtc=self._config.webrtc,
                max_buffered_frames=(self._config.streaming.lookahead_segments + 2) * sampling.num_frames,
                label=hub.label,
            )
            hub.on_close(lambda: self._spawn(feed.close()))
        return feed.media, True

    def _close_idle_feed(self, hub: WatchHub) -> None:
        """A feed nobody watches any more stops pacing (the next viewer makes a new one)."""
        feed = hub.paced_feed
        if feed is not None and not any(v.media is feed.media for v in self._viewers.values()):
            hub.paced_feed = None
            self._spawn(feed.close())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, request: web.Request, session_id: str, hub: WatchHub) -> web.Response:
        limit = self._config.server.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise HttpError(413, "invalid_message", f"the offer is over {limit} bytes")
        body = await request.content.read(limit + 1)
        if len(body) > limit:
            raise HttpError(413, "invalid_message", f"the offer is over {limit} bytes")
        try:
            sdp = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HttpError(400, "invalid_message", "the offer is not UTF-8 text") from exc
        if not sdp.strip():
            raise HttpError(400, "invalid_message", "the offer is empty")
        media, starts_media = self._media_of(hub)
        pc = self._webrtc.peer_connection()
        viewer = WhepViewer(session_id=session_id, pc=pc, hub=hub, media=media, label=hub.label)
        try:
            await set_offer(pc, sdp)
            transceivers = pc.getTransceivers()
            video = next((t for t in transceivers if t.kind == "video" and t._offerDirection in _SENDABLE), None)
            if video is None:
                raise HttpError(400, "invalid_message", "the offer has no video section that receives (recvonly)")
            audio = next((t for t in transceivers if t.kind == "audio" and t._offerDirection in _SENDABLE), None)
            viewer.subscribe(video, audio, starts_media=starts_media)
            answer = await self._webrtc.local_answer(pc)
        except BaseException:
            await viewer.close()
            raise
        if hub.closed or media.closed:  # the session ended while the answer was being made
            await viewer.close()
            raise HttpError(404, "invalid_message", f"session {session_id!r} has ended")
        self._viewers[viewer.id] = viewer
        settings = self._config.webrtc
        viewer.wire(connect_timeout_s=settings.connect_timeout_seconds, peer_timeout_s=settings.peer_timeout_seconds)
        forget = hub.on_close(lambda: viewer.leave("the session ended"))
        task = asyncio.create_task(self._until_left(viewer, hub), name=f"whep-viewer-{viewer.id[:8]}")
        task.add_done_callback(lambda _: forget())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        logger.info("%s: a WHEP viewer joined (%d on WHEP)", hub.label, len(self.viewers_of(session_id)))
        headers = {"Location": viewer.location, "Content-Type": SDP_TYPE, **self._ice_links()}
        return web.Response(status=201, text=answer.sdp, headers=headers, content_type=None)

    def ice_servers(self, request: web.Request) -> dict[str, Any]:
        """``GET /v1/sessions/{id}/ice-servers`` for a holder of the watch token: what
        ``/v1/webrtc/ice-servers`` gives an owner (TURN with fresh credentials), without the server's
        access token a viewer does not have. Non-trickle WHEP needs them before its offer."""
        token = bearer_token(request.headers.get("Authorization"))
        watched_hub(request, token, config=self._config, registry=self._registry, gate=self._gate)
        servers = self._webrtc.ice_servers
        return {"ice_servers": servers.for_clients(), "ttl_seconds": servers.ttl_seconds}

    def _ice_links(self) -> dict[str, str]:
        # WHEP's Link rel="ice-server": the STUN/TURN servers a viewer may use (TURN with fresh credentials).
        links = []
        for server in self._webrtc.ice_servers.for_clients():
            urls = server.get("urls", [])
            for url in [urls] if isinstance(urls, str) else urls:
                link = f'<{url}>; rel="ice-server"'
                if "username" in server:
                    link += f'; username="{server["username"]}"; credential="{server.get("credential", "")}"; credential-type="password"'
                links.append(link)
        return {"Link": ", ".join(links)} if links else {}

    async def _until_left(self, viewer: WhepViewer, hub: WatchHub) -> None:
        try:
            await viewer.left.wait()
        finally:
            self._viewers.pop(viewer.id, None)
            hub.unreserve()
            await viewer.close()
            self._close_idle_feed(hub)

    async def leave(self, session_id: str, viewer_id: str) -> None:
        """``DELETE`` of a viewer resource; HttpError 404 for one that is not there."""
        viewer = self._viewers.get(viewer_id)
        if viewer is None or viewer.session_id != session_id:
            raise HttpError(404, "invalid_message", "no such viewer (it has left already)")
        viewer.leave("DELETE")
        await viewer.close()

    async def close(self) -> None:
        """End every viewer and wait for their connections to close."""
        for viewer in list(self._viewers.values()):
            viewer.leave("server shutdown")
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


WHEP = web.AppKey("whep", WhepService)  # where the app keeps the service


def register_routes(
    app: web.Application,
    *,
    config: web.AppKey[ServiceConfig],
    registry: web.AppKey[SessionRegistry],
    gate: web.AppKey[Gate],
    webrtc: web.AppKey[WebRTCTransport],
) -> None:
    """Add the WHEP endpoints and their service's cleanup context (after the WebRTC transport's)."""
    service_key = WHEP
    async def service_ctx(app: web.Application) -> AsyncIterator[None]:
        app[service_key] = WhepService(config=app[config], registry=app[registry], gate=app[gate], webrtc=app[webrtc])
        yield
        await app[service_key].close()

    def cors(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        headers = request.app[gate].cors_headers(request)
        if headers:
            response.headers.update(headers)
            response.headers["Access-Control-Expose-Headers"] = "Location, Link"
        return response

    async def post(request: web.Request) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await request.app[service_key].join(request)
        except HttpError as exc:
            response = exc.response()
        return cors(request, response)

    async def delete(request: web.Request) -> web.StreamResponse:
        try:
            await request.app[service_key].leave(request.match_info["session_id"], request.match_info["viewer_id"])
        except HttpError as exc:
            return cors(request, exc.response())
        return cors(request, web.Response(status=200))

    async def ice_servers(request: web.Request) -> web.StreamResponse:
        try:
            body = request.app[service_key].ice_servers(request)
        except HttpError as exc:
            return cors(request, exc.response())
        # Credentials are per request: no cache may hand them on.
        return cors(request, web.json_response(body, headers={"Cache-Control": "no-store"}))

    async def patch(request: web.Request) -> web.StreamResponse:
        # WHEP: a server without trickle ICE answers 405; the answer already holds every candidate.
        return cors(request, web.Response(status=405, headers={"Allow": "DELETE, OPTIONS"}))

    async def preflight(request: web.Request) -> web.Response:
        response = request.app[gate].preflight(request)
        if response.status == 204:
            response.headers["Access-Control-Expose-Headers"] = "Location, Link"
        return response

    app.cleanup_ctx.append(service_ctx)
    app.router.add_post("/v1/sessions/{session_id}/whep", post)
    app.router.add_route("OPTIONS", "/v1/sessions/{session_id}/whep", preflight)
    app.router.add_delete("/v1/sessions/{session_id}/whep/{viewer_id}", delete)
    app.router.add_patch("/v1/sessions/{session_id}/whep/{viewer_id}", patch)
    app.router.add_get("/v1/sessions/{session_id}/ice-servers", ice_servers)
    app.router.add_route("OPTIONS", "/v1/sessions/{session_id}/ice-servers", preflight)
    app.router.add_route("OPTIONS", "/v1/sessions/{session_id}/whep/{viewer_id}", preflight)
