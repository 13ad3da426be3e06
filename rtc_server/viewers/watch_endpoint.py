"""``GET /v1/sessions/{id}/watch``: a viewer's WebSocket, the session's fMP4 segments from the next one on.

The watch token (``session_info.watch_token``) rides as ``?token=``, an ``Authorization: Bearer``
header or a ``bearer.<token>`` subprotocol, as tokens do on ``/v1/stream``. Refusals are answered
before the upgrade, as JSON ``{error: {code, message, retryable}}``: 404 unknown session (or viewers
off), 401 missing or wrong token, 503 + ``Retry-After`` when the session has ``max_per_session``
viewers. What a viewer sends is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import WSCloseCode, web

from rtc_server.auth import WS_PROTOCOL, bearer_token, websocket_token
from rtc_server.config import ServiceConfig
from rtc_server.http_errors import HttpError, json_error
from rtc_server.media.fmp4 import Fmp4Encoder
from rtc_server.media.stream_encoder import stream_fmp4_encoder
from rtc_server.registry import SessionRegistry
from rtc_server.transports.gate import Gate
from rtc_server.transports.websocket import CLOSE_HANDSHAKE_TIMEOUT_S, limit_send_buffer
from rtc_server.viewers.fmp4_fanout import Watcher, WatchFull
from rtc_server.viewers.watch_access import watched_hub

__all__ = ["FULL_RETRY_AFTER_S", "WatchService", "register_routes"]

logger = logging.getLogger(__name__)

FULL_RETRY_AFTER_S = 10  # Retry-After of a 503 for a session with all its viewers


class WatchService:
    """Serves the watch sockets of this server's sessions; one encoding thread pool for all hubs."""

    def __init__(self, *, config: ServiceConfig, registry: SessionRegistry, gate: Gate) -> None:
        self._config = config
        self._registry = registry
        self._gate = gate
        self._sockets: set[web.WebSocketResponse] = set()
        self._encoders = ThreadPoolExecutor(max_workers=config.streaming.max_sessions, thread_name_prefix="watch-fmp4")

    def _make_encoder(self) -> Fmp4Encoder:
        return stream_fmp4_encoder(self._config, self._registry.services.pool.audio_format)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        token = websocket_token(request.query.get("token"), offered) or bearer_token(request.headers.get("Authorization"))
        try:
            hub = watched_hub(request, token, config=self._config, registry=self._registry, gate=self._gate)
        except HttpError as exc:
            return exc.response()
        try:
            hub.reserve()
        except WatchFull as exc:
            return json_error(503, "session_rejected", str(exc), retryable=True, headers={"Retry-After": str(FULL_RETRY_AFTER_S)})
        ws = web.WebSocketResponse(
            protocols=(WS_PROTOCOL,), timeout=CLOSE_HANDSHAKE_TIMEOUT_S, heartbeat=self._config.websocket.heartbeat_seconds
        )
        try:
            hub.use_encoder(self._make_encoder, self._encoders)
            await ws.prepare(request)
        except BaseException:
            hub.unreserve()
            raise
        limit_send_buffer(request, self._config.websocket.send_buffer_bytes)
        watcher = Watcher(ws, max_queued_bytes=hub.max_queued_bytes, label=f"{hub.label} {id(ws):x}", transport=request.transport)
        hub.add(watcher)
        self._sockets.add(ws)
        logger.info("%s: a viewer joined (%d watching)", hub.label, len(hub))
        try:
            async for _ in ws:
                pass  # nothing a viewer sends is acted on
        finally:
            self._sockets.discard(ws)
            hub.remove(watcher)
            await watcher.close()
            logger.info("%s: a viewer left (%d watching)", hub.label, len(hub))
        return ws

    async def close(self) -> None:
        """Close the viewers' sockets still open, then the encoding threads."""
        for ws in list(self._sockets):
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
        await asyncio.to_thread(self._encoders.shutdown, wait=True, cancel_futures=True)


def register_routes(
    app: web.Application,
    *,
    config: web.AppKey[ServiceConfig],
    registry: web.AppKey[SessionRegistry],
    gate: web.AppKey[Gate],
) -> None:
    """Add ``GET /v1/sessions/{session_id}/watch`` and the watch service's cleanup context (after the registry's)."""
    service_key = web.AppKey("watch", WatchService)

    async def service_ctx(app: web.Application) -> AsyncIterator[None]:
        app[service_key] = WatchService(config=app[config], registry=app[registry], gate=app[gate])
        yield
        await app[service_key].close()

    async def watch(request: web.Request) -> web.StreamResponse:
        return await request.app[service_key].handle(request)

    app.cleanup_ctx.append(service_ctx)
    app.router.add_get("/v1/sessions/{session_id}/watch", watch)
