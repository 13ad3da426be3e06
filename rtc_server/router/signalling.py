"""WebRTC signalling and the session endpoints, relayed: only signalling passes the router, media
flows between the browser and the replica directly.

- ``POST /v1/webrtc/offer``: to the chosen replica (``placement.place``); the answer's
  ``session_id`` goes into the session map. A resume (``session_init.resume_session``) needs nothing
  more: it is placed like any new session, on a healthy replica, and its answer moves the entry.
- ``GET /v1/webrtc/ice-servers`` and the CORS preflights: from the chosen replica.
- ``DELETE /v1/sessions/{id}``, ``GET /v1/sessions/{id}/frames``: to the replica the map names; a
  successful DELETE, or a 404 from that replica, removes the entry. A session the map does not know
  is looked for on every healthy replica in turn.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web

from rtc_server.http_errors import HttpError, json_error, read_body
from rtc_server.router.keys import CONFIG, METRICS, REPLICAS
from rtc_server.router.placement import SESSION_ID, forget, lookup, passive_failure, place, record, send
from rtc_server.router.proxy import ReplicaFailed, ReplicaUnreachable, relay

__all__ = ["add_signalling_routes"]

logger = logging.getLogger(__name__)


def _with_cors_of(request: web.Request, response: web.Response) -> web.Response:
    """Router-made errors get the CORS header a replica would have added, so a page can read them."""
    origin = request.headers.get("Origin")
    if origin is not None and "Access-Control-Allow-Origin" not in response.headers:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    return response


async def _offer(request: web.Request) -> web.StreamResponse:
    app = request.app
    try:
        body = await read_body(request, limit=app[CONFIG].max_body_bytes)
        replica, answer = await place(request, body=body, new_session=True)
    except HttpError as exc:
        return _with_cors_of(request, exc.response())
    if answer.status == 200:
        session_id = _answer_session_id(answer.body)
        if session_id is not None:
            await record(app, session_id, replica.url)
            replica.note_placed()
            app[METRICS].sessions_routed.labels(transport="webrtc").inc()
            logger.info("router: session %s (webrtc) placed on %s", session_id[:8], replica.url)
    return relay(answer)


def _answer_session_id(body: bytes) -> str | None:
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    session_id = payload.get("session_id") if isinstance(payload, dict) else None
    return session_id if isinstance(session_id, str) and SESSION_ID.match(session_id) else None


async def _not_a_session(request: web.Request) -> web.StreamResponse:
    """ice-servers and CORS preflights: asked of the chosen replica, nothing recorded."""
    try:
        _, answer = await place(request, body=None, new_session=False)
    except HttpError as exc:
        return _with_cors_of(request, exc.response())
    return relay(answer)


async def _session_request(request: web.Request) -> web.StreamResponse:
    """DELETE /v1/sessions/{id} and GET /v1/sessions/{id}/frames, on the replica holding the session."""
    app = request.app
    session_id = request.match_info["session_id"]
    if not SESSION_ID.match(session_id):
        return json_error(404, "invalid_message", "no live session with that id")
    path = request.rel_url.raw_path_qs
    url = await lookup(app, session_id)
    replica = app[REPLICAS].get(url) if url is not None else None  # only configured replicas are asked
    if replica is None:
        return await _ask_every_replica(request, session_id, path)
    try:
        answer = await send(request, replica, body=None, path=path)
    except (ReplicaUnreachable, ReplicaFailed) as exc:
        passive_failure(replica, str(exc))
        return json_error(
            502, "worker_failed", f"the replica holding session {session_id!r} is unreachable", retryable=True
        )
    if answer.status == 404 or (request.method == "DELETE" and 200 <= answer.status < 300):
        await forget(app, session_id, replica.url)
    return relay(answer)


async def _ask_every_replica(request: web.Request, session_id: str, path: str) -> web.StreamResponse:
    """A session the map does not know (its entry expired, or Redis was away when it was placed):
    the healthy replicas are asked in turn; the first that does not answer 404 holds it."""
    app = request.app
    for replica in app[REPLICAS].healthy():
        try:
            answer = await send(request, replica, body=None, path=path)
        except (ReplicaUnreachable, ReplicaFailed):
            continue
        if answer.status == 404:
            continue
        if request.method != "DELETE" and 200 <= answer.status < 300:
            await record(app, session_id, replica.url)
        return relay(answer)
    return json_error(404, "invalid_message", f"no live session {session_id!r}")


def add_signalling_routes(app: web.Application) -> None:
    app.router.add_post("/v1/webrtc/offer", _offer)
    app.router.add_route("OPTIONS", "/v1/webrtc/offer", _not_a_session)
    app.router.add_get("/v1/webrtc/ice-servers", _not_a_session)
    app.router.add_route("OPTIONS", "/v1/webrtc/ice-servers", _not_a_session)
    app.router.add_delete("/v1/sessions/{session_id}", _session_request)
    app.router.add_get("/v1/sessions/{session_id}/frames", _session_request)
