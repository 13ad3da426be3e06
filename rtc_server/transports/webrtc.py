"""WebRTC transport: HTTP offer/answer, the paced video (and audio) tracks and the ``control`` data channel.

An offer with an audio m-line gets an Opus track next to the video when the backend makes sound
(``pool.audio_format``); otherwise the session is video only and the audio m-line is answered
without a track (inactive).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Literal

from aiohttp import web
from aiortc import RTCDataChannel, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rtc_server.auth import bearer_token
from rtc_server.client_limits import TooManyRequests
from rtc_server.config import LimitsConfig, ServiceConfig
from rtc_server.controller import SessionController
from rtc_server.http_errors import HttpError, read_json_body
from rtc_server.inbound import validate_session_init
from rtc_server.media.audio_track import AudioTimeline, PacedAudioTrack
from rtc_server.media.packet_track import PacketTrack
from rtc_server.media.shared_media import SharedMedia
from rtc_server.media.track import PacedVideoTrack, PlayoutBuffer
from rtc_server.protocol import InvalidMessage, SessionInitV2
from rtc_server.registry import SessionRegistry
from rtc_server.session import SessionRejected
from rtc_server.session_failures import SessionFailure
from rtc_server.session_start import SessionRefused
from rtc_server.sink import CloseReason
from rtc_server.transports.gate import Caller, Gate, too_many
from rtc_server.transports.ice import (
    build_rtc_configuration,
    recheck_on_peer_checks,
    refuse_invalid_text_gently,
    release_listeners,
)
from rtc_server.transports.ice_gathering import GatheringPolicy, PortRangeFull, install_gathering
from rtc_server.transports.inbox import ControlInbox
from rtc_server.transports.tier_senders import follow_receiver, negotiated_codec, send_as_is, set_offer
from rtc_server.transports.turn_credentials import IceServerList
from rtc_server.transports.webrtc_sink import WebRTCSink

__all__ = ["OfferBody", "PeerSession", "WebRTCTransport"]

logger = logging.getLogger(__name__)

PORTS_RETRY_AFTER_S = 5  # sessions end every few seconds under churn; sooner retries would only spin

CONTROL_CHANNEL_LABEL = "control"
WATCHDOG_INTERVAL_S = 0.5  # how often a peer's liveness is checked


class OfferBody(BaseModel):
    """The body of ``POST /v1/webrtc/offer``."""

    model_config = ConfigDict(extra="ignore")

    sdp: str = Field(min_length=1)
    type: Literal["offer"]
    session_init: dict[str, Any] | None = None


class PeerSession:
    """One browser peer: connection, tracks, control channel, controller, and the watchdog that ends them."""

    def __init__(
        self,
        *,
        pc: RTCPeerConnection,
        media: SharedMedia,
        sink: WebRTCSink,
        controller: SessionController,
        peer_timeout_s: float,
        connect_timeout_s: float,
        init_timeout_s: float,
        inbox: ControlInbox,
    ) -> None:
        self.pc = pc
        self.media = media
        self.track: PacketTrack | None = None  # the owner's video from the session's tier, once negotiated
        self.audio_track: PacketTrack | None = None
        self.sink = sink
        self.controller = controller
        self._peer_timeout_s = peer_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._init_timeout_s = init_timeout_s
        self._inbox = inbox
        self._answered = time.monotonic()
        self._watchdog: asyncio.Task[None] | None = None
        self._channels: list[RTCDataChannel] = []
        self._closing: asyncio.Future[None] | None = None
        self._label = f"session {controller.session.short_id}"
        # The transport's key for this peer: the session's id when the answer was made. An init on
        # the data channel that resumes another session changes the session's id later.
        self.key = controller.session.id

    @property
    def session_id(self) -> str:
        return self.controller.session.id

    def wire(self) -> None:
        """Subscribe to the connection's events and start the liveness watchdog (once the answer is made)."""
        # The connect timeout counts from the answer: time spent gathering is not the peer's to pay.
        self._answered = time.monotonic()
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_connection_state)
        self.sink.on_backlog = lambda: self._begin_departure("control channel backed up")
        self._watchdog = asyncio.create_task(self._watch(), name=f"watchdog-{self.controller.session.short_id}")

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != CONTROL_CHANNEL_LABEL:
            logger.info("%s: ignoring data channel %r", self._label, channel.label)
            return
        self.sink.attach_channel(channel)
        self._channels.append(channel)
        channel.on("message", self._inbox.push)
        channel.on("close", self._on_channel_close)

    def _on_channel_close(self) -> None:
        self._begin_departure("control channel closed")

    async def _on_connection_state(self) -> None:
        if self.pc.connectionState == "connected":
            self.sink.connected()
        if self.pc.connectionState in ("failed", "closed"):
            self._begin_departure(f"connection {self.pc.connectionState}")

    def fell_behind(self, kind: str) -> None:
        """The owner's sender stopped taking the session's packets: the owner is gone."""
        self._begin_departure(f"{kind} sender fell behind")

    def _begin_departure(self, why: str) -> None:
        if self._closing is not None or self.controller.closed:
            return
        logger.info("%s: client gone (%s)", self._label, why)
        asyncio.create_task(self.controller.client_left()).add_done_callback(_log_task_failure)

    async def _watch(self) -> None:
        """End the session when the peer never connects, connects but never sends session_init_v2,
        or stops sending RTCP reports on our video."""
        sender = self._video_sender()
        media_since: float | None = None
        connected_at: float | None = None
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            if self.pc.connectionState != "connected":
                if time.monotonic() - self._answered > self._connect_timeout_s:
                    self._begin_departure(f"not connected after {self._connect_timeout_s:.0f}s")
                    return
                continue
            connected_at = connected_at or time.monotonic()
            if not self.controller.started and time.monotonic() - connected_at > self._init_timeout_s:
                await self._refuse_uninitialised()
                return
            if self.media.source.stats.frames_released == 0:
                # Receivers only report on media they got; before the first frame (a slow
                # first segment) there is nothing to judge by but the connection state.
                continue
            if media_since is None:
                media_since = time.time()
            # A peer that vanished before its first receiver report is timed from the first frame.
            last_heard = await _last_receiver_report(sender) or media_since
            if time.time() - last_heard > self._peer_timeout_s:
                self._begin_departure(f"no RTCP for {self._peer_timeout_s:.1f}s")
                return

    def _video_sender(self) -> RTCRtpSender:
        # The offer's m-line order decides the senders' order: audio may come first.
        return next(s for s in self.pc.getSenders() if s.track is not None and s.track is self.track)

    async def _refuse_uninitialised(self) -> None:
        message = f"no session_init_v2 received within {self._init_timeout_s:g}s of connecting"
        logger.info("%s: %s", self._label, message)
        await self.controller.refuse(SessionFailure("invalid_message", message, False))

    async def close(self) -> None:
        """Stop the watchdog, the track and the connection. Idempotent; concurrent callers wait for the first."""
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        self._closing = asyncio.get_running_loop().create_future()
        try:
            if self._watchdog is not None and self._watchdog is not asyncio.current_task():
                self._watchdog.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watchdog
            # The owner's connection carries the session's media: the viewers' tracks end with it.
            await self.media.close()
            await self._inbox.close()
            await self.pc.close()
        finally:
            # Listeners are bound methods of this peer: dropping them leaves no cycle through the
            # connection, so the session's objects go when the last reference does, not at a GC pass.
            for channel in self._channels:
                channel.remove_all_listeners()
            self._channels.clear()
            release_listeners(self.pc)
            self._watchdog = None
            self._closing.set_result(None)


async def _last_receiver_report(sender: Any) -> float | None:
    """Wall-clock time (s) of the last receiver report for ``sender``, or None before the first."""
    stats = await sender.getStats()
    for report in stats.values():
        if report.type == "remote-inbound-rtp":
            return float(report.timestamp.timestamp())
    return None


def _log_task_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("background task %s failed", task.get_name(), exc_info=task.exception())


class WebRTCTransport:
    """Creates peers for offers and closes them all at shutdown."""

    def __init__(self, *, config: ServiceConfig, registry: SessionRegistry, gate: Gate) -> None:
        self._config = config
        self._registry = registry
        self.gate = gate
        self._peers: dict[str, PeerSession] = {}
        self._departing: set[PeerSession] = set()
        # Reads the TURN secret now: a missing one stops the server at start, not every offer later.
        self.ice_servers = IceServerList(config.webrtc)
        self._rtc_configuration = build_rtc_configuration(config.webrtc.ice_servers)
        settings = config.webrtc
        self._gathering = GatheringPolicy(
            host_addresses=settings.ice_host_addresses,
            public_addresses=settings.public_addresses,
            announce_local_addresses=settings.announce_local_addresses,
            udp_port_range=settings.udp_port_range,
            timeout_s=settings.gather_timeout_seconds,
        )

    def __len__(self) -> int:
        return len(self._peers)

    async def answer_request(self, request: web.Request) -> dict[str, str]:
        """Check an offer request (origin, media type, credentials: before its body is even read), then answer it."""
        self.gate.check_origin(request)
        if request.content_type != "application/json":
            # A cross-site page may POST text/plain without a preflight; JSON needs one.
            raise HttpError(415, "invalid_message", "the offer must be sent as application/json")
        caller = self.gate.caller(request, bearer_token(request.headers.get("Authorization")))
        body = await read_json_body(request, limit=self._config.server.max_body_bytes)
        return await self.answer(body, caller)

    async def answer(self, body: Any, caller: Caller) -> dict[str, str]:
        """Validate an offer, admit a session, and return the answer; raises HttpError."""
        try:
            offer = OfferBody.model_validate(body)
        except ValidationError as exc:
            raise HttpError(400, "invalid_message", f"invalid offer: {_first_error(exc)}") from exc
        init = _parse_init(offer.session_init, self._config.limits)
        sampling = self._config.default_request.sampling
        audio_format = self._registry.services.pool.audio_format
        buffer = PlayoutBuffer()
        peer_box: list[PeerSession] = []

        async def close_peer(reason: CloseReason) -> None:
            if peer_box:
                await self._close_peer(peer_box[0])

        sink = WebRTCSink(
            buffer=buffer,
            lookahead_frames=self._config.streaming.lookahead_segments * sampling.num_frames,
            queue_limit=self._config.webrtc.channel_queue_limit,
            on_close=close_peer,
            max_queued_event_bytes=self._config.limits.max_queued_event_bytes,
            fps=sampling.fps,
            audio_format=audio_format,
        )
        try:
            controller = self._registry.open(
                transport="webrtc", sink=sink, client=caller.client, principal=caller.principal
            )
        except TooManyRequests as exc:
            raise too_many(exc) from exc
        except SessionRejected as exc:
            raise HttpError(
                503,
                exc.code,
                str(exc),
                retryable=exc.retryable,
                headers={"Retry-After": str(exc.retry_after_seconds)},
            ) from exc
        if init is not None:
            await _begin_or_answer(controller, init.model_copy(update={"stream_mode": "webrtc"}))
        pc = self.peer_connection()
        delivery = controller.delivery
        # The session's sound is paced whenever the backend makes some: viewers may want it even when
        # the owner's offer has no audio section.
        timeline = AudioTimeline(audio_format, fps=sampling.fps) if audio_format is not None else None
        source = PacedVideoTrack(
            buffer, fps=sampling.fps, on_release=delivery.frame_released, on_stall=delivery.stalled, audio=timeline
        )
        settings = self._config.webrtc
        media = SharedMedia(
            source,
            PacedAudioTrack(timeline) if timeline is not None else None,
            fps=sampling.fps,
            bitrate=settings.start_bitrate,
            min_bitrate=settings.min_bitrate,
            max_bitrate=settings.max_bitrate,
            label=f"session {controller.session.short_id}",
        )
        peer = PeerSession(
            pc=pc,
            media=media,
            sink=sink,
            controller=controller,
            peer_timeout_s=settings.peer_timeout_seconds,
            connect_timeout_s=settings.connect_timeout_seconds,
            init_timeout_s=self._config.websocket.init_timeout_seconds,
            inbox=ControlInbox(
                controller=controller, limits=self._config.limits, max_message_bytes=self._config.server.max_message_bytes
            ),
        )
        peer_box.append(peer)
        sink.label = f"session {controller.session.short_id}"
        try:
            answer = await self._negotiate(peer, offer.sdp)
        except HttpError:
            await media.close()
            await controller.client_left()
            raise
        if controller.viewers is not None:
            controller.viewers.rtc_media = media  # WHEP viewers subscribe to the owner's tiers
        self._peers[peer.key] = peer
        peer.wire()
        return {"sdp": answer.sdp, "type": answer.type, "session_id": peer.session_id}

    def peer_connection(self) -> RTCPeerConnection:
        """A new peer connection with the server's ICE servers (TURN credentials fresh for this one)."""
        per_offer = self.ice_servers.for_server()
        return RTCPeerConnection(build_rtc_configuration(per_offer) if per_offer is not None else self._rtc_configuration)

    async def _negotiate(self, peer: PeerSession, sdp: str) -> RTCSessionDescription:
        pc = peer.pc
        await set_offer(pc, sdp)
        video = [t for t in pc.getTransceivers() if t.kind == "video"]
        if not video:
            raise HttpError(400, "invalid_message", "the offer has no video media section to receive the stream")
        if pc.sctp is None:
            raise HttpError(400, "invalid_message", "the offer has no data channel (expected one labelled 'control')")
        refuse_invalid_text_gently(pc)
        media = peer.media
        track = media.video_track(
            negotiated_codec(video[0]).mimeType,
            on_overflow=lambda: peer.fell_behind("video"),
            starts_media=True,
        )
        peer.track = track
        follow_receiver(send_as_is(pc.addTrack(track), track), media, track, follow_bitrate=True)
        audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
        if media.has_audio and audio:
            # Takes the offer's audio transceiver: never a section the offer lacks.
            peer.audio_track = media.audio_track(negotiated_codec(audio[0]), on_overflow=lambda: peer.fell_behind("audio"))
            send_as_is(pc.addTrack(peer.audio_track), peer.audio_track)
        return await self.local_answer(pc)

    async def local_answer(self, pc: RTCPeerConnection) -> RTCSessionDescription:
        """Gather (with the server's policy) and set the answer to the offer ``pc`` holds; HttpError 503 when out of ports."""
        install_gathering(pc, self._gathering)
        recheck_on_peer_checks(pc)
        try:
            await pc.setLocalDescription(await pc.createAnswer())
        except PortRangeFull as exc:
            logger.warning("offer refused: %s (webrtc.udp_port_range is too small for this load)", exc)
            self._registry.services.metrics.admission_rejections.labels(reason="ice_ports").inc()
            raise HttpError(
                503,
                "ice_ports_exhausted",
                f"{exc}: too many WebRTC sessions for webrtc.udp_port_range; retry shortly or use the WebSocket stream",
                retryable=True,
                headers={"Retry-After": str(PORTS_RETRY_AFTER_S)},
            ) from exc
        except Exception as exc:
            raise HttpError(400, "invalid_message", f"cannot answer this offer: {exc}") from exc
        return pc.localDescription

    async def _close_peer(self, peer: PeerSession) -> None:
        if self._peers.get(peer.key) is peer:
            del self._peers[peer.key]
        self._departing.add(peer)
        try:
            await peer.close()
        finally:
            self._departing.discard(peer)

    async def close(self) -> None:
        """Close every peer connection, one by one, and wait for those already closing."""
        for peer in list(self._peers.values()):
            await peer.controller.shutdown()
            await self._close_peer(peer)
        # A client that left just before shutdown has its peer closing in another task: a
        # connection still closing when the loop ends leaves its sockets to the garbage collector.
        for peer in list(self._departing):
            await peer.close()


# How a refused start is answered over HTTP: a client mistake, or a server that cannot serve now.
_REFUSAL_STATUS: dict[str, int] = {"invalid_message": 400, "gpu_unavailable": 503, "worker_failed": 503}


async def _begin_or_answer(controller: SessionController, init: SessionInitV2) -> None:
    """Start the session of an offer before any peer connection exists; a refusal is the HTTP answer."""
    try:
        await controller.begin(init)
    except SessionRefused as exc:
        failure = exc.failure
        await controller.refuse(failure, tell_client=False)
        status = _REFUSAL_STATUS.get(failure.code, 500)
        headers = {"Retry-After": "5"} if status == 503 else None
        raise HttpError(status, failure.code, failure.message, retryable=failure.retryable, headers=headers) from exc


def _parse_init(raw: dict[str, Any] | None, limits: LimitsConfig) -> SessionInitV2 | None:
    if raw is None:
        return None
    try:
        return validate_session_init(raw, limits=limits)
    except InvalidMessage as exc:
        raise HttpError(400, "invalid_message", f"invalid session_init: {exc}") from exc


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    return f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}"


def register_routes(app: web.Application, transport_key: web.AppKey[WebRTCTransport], config: ServiceConfig) -> None:
    """Add the WebRTC signalling endpoints to ``app``."""

    async def offer(request: web.Request) -> web.Response:
        transport = request.app[transport_key]
        cors = transport.gate.cors_headers(request)
        try:
            answer = await transport.answer_request(request)
        except HttpError as exc:
            response = exc.response()
            response.headers.update(cors)
            return response
        return web.json_response(answer, headers=cors)

    async def preflight(request: web.Request) -> web.Response:
        return request.app[transport_key].gate.preflight(request)

    async def ice_servers(request: web.Request) -> web.Response:
        transport = request.app[transport_key]
        try:
            transport.gate.check_origin(request)
            transport.gate.caller(request, bearer_token(request.headers.get("Authorization")))
        except HttpError as exc:
            response = exc.response()
            response.headers.update(transport.gate.cors_headers(request))
            return response
        servers = transport.ice_servers
        body = {"ice_servers": servers.for_clients(), "ttl_seconds": servers.ttl_seconds}
        # Credentials are per request: no cache (a proxy's or the browser's) may hand them on.
        headers = {"Cache-Control": "no-store", **transport.gate.cors_headers(request)}
        return web.json_response(body, headers=headers)

    app.router.add_post("/v1/webrtc/offer", offer)
    app.router.add_route("OPTIONS", "/v1/webrtc/offer", preflight)
    app.router.add_get("/v1/webrtc/ice-servers", ice_servers)
    app.router.add_route("OPTIONS", "/v1/webrtc/ice-servers", preflight)
