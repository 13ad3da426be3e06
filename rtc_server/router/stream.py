"""``GET /v1/stream``: the WebSocket, bridged to the chosen replica (``bridge.py`` relays the frames).

The replica's socket is opened first, with the client's headers, query (``?token=``) and offered
subprotocols (``rtcvs``, ``bearer.<token>``): the client's upgrade is then answered with the
subprotocol the replica chose, and a replica's refusal of the upgrade itself (403 for a web origin
it does not allow) reaches the client as that status. A replica that cannot be reached is passed
over (``placement``); with none left the client gets ``error{gpu_unavailable}`` (or
``session_rejected`` when every healthy replica is full) and close 1013.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from aiohttp import WSCloseCode, web

from rtc_server.auth import WS_PROTOCOL
from rtc_server.http_errors import json_error
from rtc_server.protocol import ErrorMessage, serialize
from rtc_server.router.bridge import CLOSE_TIMEOUT_S, WebSocketBridge
from rtc_server.router.keys import BRIDGES, CONFIG, HTTP, METRICS, REPLICAS
from rtc_server.router.placement import forget, no_replica, passive_failure, record, retryable_refusal
from rtc_server.router.proxy import ReplicaUnreachable, websocket_headers, websocket_url
from rtc_server.router.registry import Replica

__all__ = ["add_stream_route", "close_bridges"]

logger = logging.getLogger(__name__)


class _UpgradeRefused(Exception):
    """The replica answered the upgrade with a client error (4xx): the client gets that status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


async def _stream(request: web.Request) -> web.StreamResponse:
    app = request.app
    registry, metrics = app[REPLICAS], app[METRICS]
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    tried: list[str] = []
    moved_because: str | None = None
    while True:
        replica = registry.select(exclude=tried)
        if replica is None:
            code, message = no_replica(registry)
            metrics.refusals.labels(code=code).inc()
            error = ErrorMessage(code=code, message=message, retryable=retryable_refusal(code))
            return await _refuse(request, offered, error)
        if moved_because is not None:
            metrics.failovers.labels(reason=moved_because).inc()
        tried.append(replica.url)
        try:
            upstream = await _connect(request, replica, offered)
        except ReplicaUnreachable as exc:
            passive_failure(replica, str(exc))
            moved_because = "unreachable"
            continue
        except _UpgradeRefused as refused:
            return json_error(
                refused.status,
                "unauthorized" if refused.status in (401, 403) else "invalid_message",
                f"the replica refused the WebSocket upgrade (HTTP {refused.status})",
            )
        return await _bridge(request, replica, upstream)


async def _connect(request: web.Request, replica: Replica, offered: list[str]) -> aiohttp.ClientWebSocketResponse:
    app = request.app
    url = websocket_url(replica.url, request.rel_url.raw_path_qs)
    try:
        async with asyncio.timeout(app[CONFIG].proxy_timeout_seconds):
            return await app[HTTP].ws_connect(
                url,
                protocols=offered,
                headers=websocket_headers(request),
                max_msg_size=0,  # the replica bounds what it sends; the client's side is bounded in _bridge
                timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT_S),
            )
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status >= 500:  # a replica (or its gateway) that cannot take sockets now
            raise ReplicaUnreachable(f"upgrade answered {exc.status}") from exc
        raise _UpgradeRefused(exc.status) from exc
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise ReplicaUnreachable(str(exc) or type(exc).__name__) from exc


async def _bridge(
    request: web.Request, replica: Replica, upstream: aiohttp.ClientWebSocketResponse
) -> web.StreamResponse:
    app = request.app
    config, metrics = app[CONFIG], app[METRICS]
    client = web.WebSocketResponse(
        protocols=(upstream.protocol,) if upstream.protocol else (),
        heartbeat=config.heartbeat_seconds,
        max_msg_size=config.max_message_bytes,
        compress=False,  # video is compressed already: deflating it again would only cost router CPU
        timeout=CLOSE_TIMEOUT_S,
    )
    try:
        await client.prepare(request)
    except BaseException:
        await upstream.close(code=WSCloseCode.GOING_AWAY)
        raise

    async def placed(session_id: str) -> None:
        await record(app, session_id, replica.url)
        logger.info("router: session %s (websocket) placed on %s", session_id[:8], replica.url)

    bridge = WebSocketBridge(client, upstream, label=f"router bridge to {replica.url}", on_session_id=placed)
    replica.note_placed()
    metrics.sessions_routed.labels(transport="websocket").inc()
    app[BRIDGES].add(bridge)
    try:
        await bridge.run()
    finally:
        # Also when the handler is cancelled (a server with handler_cancellation, or shutdown).
        app[BRIDGES].discard(bridge)
        if not upstream.closed:
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await upstream.close(code=WSCloseCode.GOING_AWAY)
        await asyncio.shield(_after(app, replica, bridge))
    return client


async def _after(app: web.Application, replica: Replica, bridge: WebSocketBridge) -> None:
    """Count how the bridged session ended; forget a session that ended normally (close 1000)."""
    end, metrics = bridge.end, app[METRICS]
    if end is None or bridge.stopping:  # unknown, or the router's own shutdown: nobody failed
        return
    if end.replica_failed:
        metrics.bridge_errors.labels(side="replica").inc()
        passive_failure(replica, f"connection lost mid-stream: {end.reason}")
    elif end.code is None:
        metrics.bridge_errors.labels(side="client").inc()
    if end.normal and bridge.session_id is not None:
        await forget(app, bridge.session_id, replica.url)


async def _refuse(request: web.Request, offered: list[str], error: ErrorMessage) -> web.StreamResponse:
    """No replica for this socket: accept it, say why, close 1013 (try again later)."""
    # A browser that offered subprotocols fails a handshake answered with none: answer ours.
    ws = web.WebSocketResponse(protocols=(WS_PROTOCOL,) if WS_PROTOCOL in offered else (), timeout=CLOSE_TIMEOUT_S)
    await ws.prepare(request)
    with contextlib.suppress(ConnectionResetError):
        await ws.send_str(serialize(error))
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"no_healthy_replica")
    return ws


async def close_bridges(app: web.Application) -> None:
    """on_shutdown: end every bridged session (1001 on both sides) before aiohttp waits for handlers,
    so the long-lived WebSocket handlers end at once instead of at the shutdown timeout."""
    bridges = app[BRIDGES]
    for bridge in [*bridges]:
        await bridge.shutdown()


def add_stream_route(app: web.Application) -> None:
    app.router.add_get("/v1/stream", _stream)
