"""A session's viewer endpoints, relayed to the replica holding the session (``signalling.relay_to_holder``
finds it: the session map, else every healthy replica in turn). Only HTTP passes the router: a WHEP
viewer's media flows between it and the replica directly, as the owner's WebRTC media does.

- ``POST /v1/sessions/{id}/whep`` (the SDP offer passed on as it came, ``Content-Type`` and
  ``Authorization`` included), ``OPTIONS`` on it, and ``DELETE``/``PATCH``/``OPTIONS`` on
  ``/v1/sessions/{id}/whep/{viewer}``: the replica's answer relayed whole (its ``Location`` is a path,
  so the viewer's ``DELETE`` comes back through the router; ``Link`` headers travel). No WHEP answer
  removes the session's map entry: a 404 here may only mean "no such viewer". ``GET`` (and ``OPTIONS``)
  ``/v1/sessions/{id}/ice-servers``, the viewer's STUN/TURN list, the same way.
- ``GET /v1/sessions/{id}/watch``: the fMP4 WebSocket, bridged to the holding replica frame by frame
  (``bridge.WebSocketBridge``, both ways, close codes across). The replica's refusal before the upgrade
  (401, 404, 503 + ``Retry-After``) reaches the client as that status with the replica's JSON body.
- ``GET /v1/sessions/{id}/recording`` and ``GET /v1/sessions/{id}/recording/{name}``: the answer
  streamed through as it arrives (an MP4 may be large; never held whole), ``Range``/``Content-Range``/
  ``Accept-Ranges``/``Content-Type``/``Content-Length`` passed across. Recordings outlive the session
  and its map entry: the replica the map names is asked first, then (when it answers 404) every other
  healthy replica.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from rtc_server.http_errors import HttpError, json_error, read_body
from rtc_server.protocol import ErrorCode
from rtc_server.router.bridge import WebSocketBridge
from rtc_server.router.keys import CONFIG, HTTP, METRICS, REPLICAS
from rtc_server.router.placement import SESSION_ID, lookup, passive_failure, record
from rtc_server.router.proxy import (
    GATEWAY_FAILURES,
    ReplicaAnswer,
    ReplicaFailed,
    ReplicaUnreachable,
    open_stream,
    read_small,
    relay,
    relay_stream,
    request_headers,
)
from rtc_server.router.registry import Replica
from rtc_server.router.signalling import relay_to_holder, with_cors_of
from rtc_server.router.stream import UpgradeRefused, bridge_socket, connect_socket

__all__ = ["add_viewer_routes"]

logger = logging.getLogger(__name__)


def _no_session(session_id: str) -> web.Response:
    return json_error(404, "invalid_message", f"no live session {session_id[:128]!r}")


# -- WHEP -------------------------------------------------------------------------------------


async def _whep_with_body(request: web.Request) -> web.StreamResponse:
    """POST (the offer; a 201 proves the session lives there) and PATCH of a viewer resource."""
    try:
        body = await read_body(request, limit=request.app[CONFIG].max_body_bytes)
    except HttpError as exc:
        return with_cors_of(request, exc.response())
    return await relay_to_holder(request, body=body, session_endpoint=False, proves_live=request.method == "POST")


async def _whep_without_body(request: web.Request) -> web.StreamResponse:
    """DELETE of a viewer resource and the CORS preflights."""
    return await relay_to_holder(request, body=None, session_endpoint=False, proves_live=False)


# -- the fMP4 watch socket -----------------------------------------------------------------------


async def _watch(request: web.Request) -> web.StreamResponse:
    if not web.WebSocketResponse().can_prepare(request).ok:
        # Not an upgrade: the replica answers it as it would (a refusal, or 400), nothing is bridged.
        return await relay_to_holder(request, body=None, session_endpoint=False, proves_live=False)
    app = request.app
    session_id = request.match_info["session_id"]
    if not SESSION_ID.match(session_id):
        return _no_session(session_id)
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    url = await lookup(app, session_id)
    mapped = app[REPLICAS].get(url) if url is not None else None
    not_found: UpgradeRefused | None = None
    for replica in [mapped] if mapped is not None else app[REPLICAS].healthy():
        try:
            upstream = await connect_socket(request, replica, offered, unreachable=lambda status: status in GATEWAY_FAILURES)
        except ReplicaUnreachable as exc:
            if mapped is None:
                continue  # as when asking every replica over HTTP
            passive_failure(replica, str(exc))
            return json_error(
                502, "worker_failed", f"the replica holding session {session_id!r} is unreachable", retryable=True
            )
        except UpgradeRefused as refused:
            if mapped is None and refused.status == 404:
                not_found = refused
                continue
            return _refusal(request, refused)
        if mapped is None:
            await record(app, session_id, replica.url)
        return await bridge_socket(request, replica, upstream, on_end=_watch_ended(app, replica))
    return _refusal(request, not_found) if not_found is not None else _no_session(session_id)


def _refusal(request: web.Request, refused: UpgradeRefused) -> web.Response:
    """The replica's refusal of the upgrade as it gave it; the router's own words when its body was lost."""
    if refused.answer is not None:
        return relay(refused.answer)
    code: ErrorCode = "invalid_message"
    if refused.status in (401, 403):
        code = "unauthorized"
    elif refused.status == 503:
        code = "session_rejected"
    response = json_error(refused.status, code, f"the replica refused the watch socket (HTTP {refused.status})")
    return with_cors_of(request, response)


def _watch_ended(app: web.Application, replica: Replica) -> Callable[[WebSocketBridge], Awaitable[None]]:
    """A viewer's bridge ended: a replica gone mid-watch counts against it (the session map is left alone)."""

    async def ended(bridge: WebSocketBridge) -> None:
        end = bridge.end
        if end is None or bridge.stopping:
            return
        if end.replica_failed:
            app[METRICS].bridge_errors.labels(side="replica").inc()
            passive_failure(replica, f"connection lost mid-watch: {end.reason}")

    return ended


# -- recordings ----------------------------------------------------------------------------------


async def _recording(request: web.Request) -> web.StreamResponse:
    app = request.app
    config = app[CONFIG]
    session_id = request.match_info["session_id"]
    if not SESSION_ID.match(session_id):
        return json_error(404, "invalid_message", "no recordings of a session with that id")
    url = await lookup(app, session_id)
    mapped = app[REPLICAS].get(url) if url is not None else None
    candidates = [mapped] if mapped is not None else []
    candidates += [r for r in app[REPLICAS].healthy() if r is not mapped]
    not_found: ReplicaAnswer | None = None
    failed = False
    for replica in candidates:
        try:
            response = await open_stream(
                app[HTTP],
                request.method,
                replica.url + request.rel_url.raw_path_qs,
                headers=request_headers(request),
                read_timeout_s=config.proxy_timeout_seconds,
                connect_timeout_s=config.health_check_timeout_seconds,
            )
        except (ReplicaUnreachable, ReplicaFailed) as exc:
            if replica is mapped:
                passive_failure(replica, str(exc))
            failed = True
            continue
        try:
            if response.status == 404:
                not_found = await read_small(response)
                continue
            return await relay_stream(request, response)
        finally:
            response.release()
    if not_found is not None:
        return relay(not_found)
    if failed:
        return with_cors_of(
            request, json_error(502, "worker_failed", "no replica holding the recordings answered", retryable=True)
        )
    return with_cors_of(request, json_error(404, "invalid_message", f"no recordings of session {session_id[:128]!r}"))


def add_viewer_routes(app: web.Application) -> None:
    app.router.add_post("/v1/sessions/{session_id}/whep", _whep_with_body)
    app.router.add_route("OPTIONS", "/v1/sessions/{session_id}/whep", _whep_without_body)
    app.router.add_delete("/v1/sessions/{session_id}/whep/{viewer_id}", _whep_without_body)
    app.router.add_patch("/v1/sessions/{session_id}/whep/{viewer_id}", _whep_with_body)
    app.router.add_route("OPTIONS", "/v1/sessions/{session_id}/whep/{viewer_id}", _whep_without_body)
    app.router.add_get("/v1/sessions/{session_id}/ice-servers", _whep_without_body)
    app.router.add_route("OPTIONS", "/v1/sessions/{session_id}/ice-servers", _whep_without_body)
    app.router.add_get("/v1/sessions/{session_id}/watch", _watch)
    app.router.add_get("/v1/sessions/{session_id}/recording", _recording)
    app.router.add_get("/v1/sessions/{session_id}/recording/{name}", _recording)
