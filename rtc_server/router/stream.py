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
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import WSCloseCode, web
from multidict import CIMultiDict, CIMultiDictProxy

from rtc_server.auth import WS_PROTOCOL
from rtc_server.http_errors import json_error
from rtc_server.protocol import ErrorMessage, serialize
from rtc_server.router.bridge import CLOSE_TIMEOUT_S, SessionIdCallback, WebSocketBridge
from rtc_server.router.keys import BRIDGES, CONFIG, HTTP, METRICS, REPLICAS
from rtc_server.router.placement import forget, no_replica, passive_failure, record, retryable_refusal
from rtc_server.router.proxy import (
    ReplicaAnswer,
    ReplicaUnreachable,
    keeping_refusals,
    websocket_headers,
    websocket_url,
)
from rtc_server.router.registry import Replica

__all__ = ["UpgradeRefused", "add_stream_route", "bridge_socket", "close_bridges", "connect_socket"]

logger = logging.getLogger(__name__)


class UpgradeRefused(Exception):
    """The replica refused the upgrade (a 4xx; for a viewer's socket, a 503 too): the client gets that status.

    ``answer`` is the replica's own refusal (status, headers, body) when its body could be kept.
    """

    def __init__(self, status: int, answer: ReplicaAnswer | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.answer = answer


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
        except UpgradeRefused as refused:
            return json_error(
                refused.status,
                "unauthorized" if refused.status in (401, 403) else "invalid_message",
                f"the replica refused the WebSocket upgrade (HTTP {refused.status})",
            )
        return await _bridge(request, replica, upstream)


async def _connect(request: web.Request, replica: Replica, offered: list[str]) -> aiohttp.ClientWebSocketResponse:
    return await connect_socket(request, replica, offered, unreachable=lambda status: status >= 500)


async def connect_socket(
    request: web.Request, replica: Replica, offered: list[str], *, unreachable: Callable[[int], bool]
) -> aiohttp.ClientWebSocketResponse:
    """Open the replica's side of ``request``'s socket (same path and query, the client's headers and
    subprotocols). ReplicaUnreachable when it cannot be reached or its upgrade answer is ``unreachable``;
    UpgradeRefused for any other refusal of the upgrade."""
    app = request.app
    url = websocket_url(replica.url, request.rel_url.raw_path_qs)
    try:
        with keeping_refusals() as refusals:
            async with asyncio.timeout(app[CONFIG].proxy_timeout_seconds):
                return await app[HTTP].ws_connect(
                    url,
                    protocols=offered,
                    headers=websocket_headers(request),
                    max_msg_size=0,  # the replica bounds what it sends; the client's side is bounded in the bridge
                    timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT_S),
                )
    except aiohttp.WSServerHandshakeError as exc:
        if unreachable(exc.status):  # a replica (or its gateway) that cannot take sockets now
            raise ReplicaUnreachable(f"upgrade answered {exc.status}") from exc
        answer = None
        if refusals and exc.headers is not None:
            answer = ReplicaAnswer(status=exc.status, headers=CIMultiDictProxy(CIMultiDict(exc.headers)), body=refusals[-1])
        raise UpgradeRefused(exc.status, answer) from exc
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise ReplicaUnreachable(str(exc) or type(exc).__name__) from exc


async def _bridge(
    request: web.Request, replica: Replica, upstream: aiohttp.ClientWebSocketResponse
) -> web.StreamResponse:
    app = request.app

    async def placed(session_id: str) -> None:
        await record(app, session_id, replica.url)
        logger.info("router: session %s (websocket) placed on %s", session_id[:8], replica.url)

    def started() -> None:
        replica.note_placed()
        app[METRICS].sessions_routed.labels(transport="websocket").inc()

    async def ended(bridge: WebSocketBridge) -> None:
        await _after(app, replica, bridge)

    return await bridge_socket(request, replica, upstream, on_session_id=placed, on_start=started, on_end=ended)


async def bridge_socket(
    request: web.Request,
    replica: Replica,
    upstream: aiohttp.ClientWebSocketResponse,
    *,
    on_session_id: SessionIdCallback | None = None,
    on_start: Callable[[], None] | None = None,
    on_end: Callable[[WebSocketBridge], Awaitable[None]] | None = None,
) -> web.WebSocketResponse:
    """Answer the client's upgrade (with the subprotocol the replica chose) and relay both sockets
    until either ends (``WebSocketBridge``): ``on_start`` once bridged, ``on_end`` (shielded, also
    when the handler is cancelled) once over."""
    app = request.app
    config = app[CONFIG]
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

    bridge = WebSocketBridge(client, upstream, label=f"router bridge to {replica.url}", on_session_id=on_session_id)
    if on_start is not None:
        on_start()
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
        if on_end is not None:
            await asyncio.shield(on_end(bridge))
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
