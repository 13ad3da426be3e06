"""WebSocket transport: ``GET /v1/stream``, the same control protocol, video as fMP4 for MSE players.

Close codes (protocol.md): 1000 normal end, 1003 invalid first message (a refused
``resume_session`` too), 1011 internal failure, 1013 server full; 1012 when the
server shuts down (after ``error{gpu_unavailable, retryable}``: resume the
session elsewhere); 1001 for a socket that never started a session at shutdown;
1009 for a frame over twice the message limit (aiohttp refuses to read it). A
frame over the limit but under twice it gets ``error{invalid_message}`` and the
session goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from rtc_server.auth import WS_PROTOCOL, websocket_token
from rtc_server.client_limits import TooManyRequests
from rtc_server.config import ServiceConfig
from rtc_server.controller import SessionController
from rtc_server.http_errors import HttpError
from rtc_server.media.fmp4 import Fmp4Encoder
from rtc_server.media.stream_encoder import stream_fmp4_encoder
from rtc_server.protocol import ErrorMessage, InvalidMessage, SessionInitV2, serialize
from rtc_server.registry import SessionRegistry
from rtc_server.session import SessionRejected, SessionState
from rtc_server.session_start import SessionRefused
from rtc_server.transports.gate import Gate
from rtc_server.transports.inbox import ControlInbox, parse_control
from rtc_server.transports.websocket_sink import WebSocketSink

__all__ = ["WebSocketTransport", "register_routes"]

logger = logging.getLogger(__name__)

HARD_LIMIT_FACTOR = 2  # frames above limit x this are not even read
# How long a close waits for the client's close frame: a silent client (the usual reason for
# closing it) would otherwise hold the session 10 s more, aiohttp's default.
CLOSE_HANDSHAKE_TIMEOUT_S = 1.0
CLOSE_UNAUTHORIZED = 4401  # private-use close codes mirroring HTTP 401 and 429
CLOSE_TOO_MANY = 4429


class WebSocketTransport:
    """Serves ``/v1/stream`` sessions and closes them all at shutdown."""

    def __init__(self, *, config: ServiceConfig, registry: SessionRegistry, gate: Gate) -> None:
        self._config = config
        self._registry = registry
        self.gate = gate
        self._sockets: set[web.WebSocketResponse] = set()
        # One encoding thread per streaming session at most (see WebSocketSink).
        self._encoders = ThreadPoolExecutor(max_workers=config.streaming.max_sessions, thread_name_prefix="fmp4")

    def __len__(self) -> int:
        return len(self._sockets)

    def _make_encoder(self) -> Fmp4Encoder:
        return stream_fmp4_encoder(self._config, self._registry.services.pool.audio_format)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            self.gate.check_origin(request)  # WebSockets bypass CORS: the upgrade itself is checked
        except HttpError as exc:
            return exc.response()
        limit = self._config.server.max_message_bytes
        ws = web.WebSocketResponse(
            max_msg_size=limit * HARD_LIMIT_FACTOR,
            timeout=CLOSE_HANDSHAKE_TIMEOUT_S,
            protocols=(WS_PROTOCOL,),
            heartbeat=self._config.websocket.heartbeat_seconds,
        )
        await ws.prepare(request)
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        try:
            caller = self.gate.caller(request, websocket_token(request.query.get("token"), offered))
        except HttpError as exc:
            await _refuse(ws, ErrorMessage(code="unauthorized", message=exc.message), CLOSE_UNAUTHORIZED)
            return ws
        limit_send_buffer(request, self._config.websocket.send_buffer_bytes)
        sink = WebSocketSink(
            ws,
            encoder_factory=self._make_encoder,
            executor=self._encoders,
            lookahead_segments=self._config.streaming.lookahead_segments,
            max_pending_segments=self._config.websocket.max_pending_segments,
            stalled_client_timeout_s=self._config.websocket.stalled_client_timeout_seconds,
            max_queued_event_bytes=self._config.limits.max_queued_event_bytes,
            transport=request.transport if isinstance(request.transport, asyncio.Transport) else None,
        )
        try:
            controller = self._registry.open(
                transport="websocket", sink=sink, client=caller.client, principal=caller.principal
            )
        except TooManyRequests as exc:
            error = ErrorMessage(code="rate_limited", message=f"{exc}; retry in {exc.retry_after_header} s", retryable=True)
            await _refuse(ws, error, CLOSE_TOO_MANY)
            return ws
        except SessionRejected as exc:
            error = ErrorMessage(code=exc.code, message=str(exc), retryable=exc.retryable)
            await _refuse(ws, error, WSCloseCode.TRY_AGAIN_LATER)
            return ws
        sink.label = f"session {controller.session.short_id}"
        sink.on_segment_sent = controller.delivery.segment_sent
        sink.on_encoded = self._registry.services.metrics.encode_seconds.observe
        sink.start()
        self._sockets.add(ws)
        try:
            if await self._receive_init(ws, controller, limit):
                await self._receive_forever(ws, controller, limit)
        finally:
            self._sockets.discard(ws)
            await controller.client_left()
        return ws

    async def _receive_init(self, ws: web.WebSocketResponse, controller: SessionController, limit: int) -> bool:
        try:
            # One deadline for the whole wait: receive(timeout=) restarts it on control frames.
            async with asyncio.timeout(self._config.websocket.init_timeout_seconds):
                message = await ws.receive()
        except TimeoutError:
            await _refuse(
                ws,
                ErrorMessage(code="invalid_message", message="no session_init_v2 received in time"),
                WSCloseCode.UNSUPPORTED_DATA,
            )
            return False
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return False
        problem: str | None = None
        init: Any = None
        if message.type != WSMsgType.TEXT:
            problem = "the first message must be a session_init_v2 text frame"
        else:
            try:
                init = await parse_control(message.data, limits=self._config.limits, max_bytes=limit)
            except InvalidMessage as exc:
                problem = str(exc)
            if problem is None and not isinstance(init, SessionInitV2):
                problem = f"the first message must be session_init_v2, got {init.type}"
        if problem is not None:
            controller.session.end(SessionState.REJECTED)  # a refused opening message, as the original
            await _refuse(ws, ErrorMessage(code="invalid_message", message=problem), WSCloseCode.UNSUPPORTED_DATA)
            return False
        try:
            await controller.begin(init)
        except SessionRefused as exc:
            await controller.refuse(exc.failure)
            return False
        return True

    async def _receive_forever(self, ws: web.WebSocketResponse, controller: SessionController, limit: int) -> None:
        inbox = ControlInbox(controller=controller, limits=self._config.limits, max_message_bytes=limit)
        try:
            async for message in ws:
                if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await inbox.receive(message.data)
                elif message.type == WSMsgType.ERROR:
                    logger.info("session %s: websocket error: %s", controller.session.short_id, ws.exception())
                    return
        finally:
            await inbox.close()

    async def close(self) -> None:
        """Close every open socket (the read loops then end their sessions), then the encoding threads."""
        for ws in list(self._sockets):
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
        await asyncio.to_thread(self._encoders.shutdown, wait=True, cancel_futures=True)


def limit_send_buffer(request: web.Request, size: int | None) -> None:
    """Cap the socket's send buffer at ``size`` bytes (None: the kernel's default)."""
    # Linux autotunes the send buffer up to megabytes; with it, a client that stops reading
    # is only noticed (and its segments skipped) after many seconds of queued video.
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if size is not None and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


async def _refuse(ws: web.WebSocketResponse, error: ErrorMessage, code: int) -> None:
    with contextlib.suppress(ConnectionResetError, RuntimeError):
        await ws.send_str(serialize(error))
        await ws.close(code=code)


def register_routes(app: web.Application, transport_key: web.AppKey[WebSocketTransport]) -> None:
    """Add ``GET /v1/stream``."""

    async def stream(request: web.Request) -> web.StreamResponse:
        return await request.app[transport_key].handle(request)

    app.router.add_get("/v1/stream", stream)

