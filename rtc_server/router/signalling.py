"""WebRTC signalling and the session endpoints, relayed: only signalling passes the router, media
flows between the browser and the replica directly.

- ``POST /v1/webrtc/offer``: to the chosen replica (``placement.place``); the answer's
  ``session_id`` goes into the session map. A resume (``session_init.resume_session``) needs nothing
  more: it is placed like any new session, on a healthy replica, and its answer moves the entry.
- ``GET /v1/webrtc/ice-servers`` and the CORS preflights: from the chosen replica.
- ``DELETE /v1/sessions/{id}``, ``GET /v1/sessions/{id}/frames``: to the replica the map names; a
  successful DELETE, or a 404 from that replica, removes the entry. A session the map does not know
  is looked for on every healthy replica in turn.

``relay_to_holder`` does that last part for the viewers' endpoints too (``viewers.py``: WHEP, with the
request's body), whose answers never remove an entry. A ``Location`` naming the replica is relayed as a
path, so what it names is asked of the router.
"""

from __future__ import annotations

import json
import logging

from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

from rtc_server.http_errors import HttpError, json_error, read_body
from rtc_server.router.keys import CONFIG, METRICS, REPLICAS
from rtc_server.router.placement import SESSION_ID, forget, lookup, passive_failure, place, record, send
from rtc_server.router.proxy import ReplicaAnswer, ReplicaFailed, ReplicaUnreachable, relay
from rtc_server.router.registry import Replica

__all__ = ["add_signalling_routes", "relay_from", "relay_to_holder", "with_cors_of"]

logger = logging.getLogger(__name__)


def with_cors_of(request: web.Request, response: web.Response) -> web.Response:
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
        return with_cors_of(request, exc.response())
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
        return with_cors_of(request, exc.response())
    return relay(answer)


async def _session_request(request: web.Request) -> web.StreamResponse:
    """DELETE /v1/sessions/{id} and GET /v1/sessions/{id}/frames, on the replica holding the session."""
    return await relay_to_holder(request, body=None, session_endpoint=True, proves_live=request.method != "DELETE")


async def relay_to_holder(
    request: web.Request, *, body: bytes | None, session_endpoint: bool, proves_live: bool
) -> web.StreamResponse:
    """``request`` (with ``body``) relayed to the replica holding ``{session_id}``, its answer relayed back.

    ``session_endpoint``: the request is one of the session's own endpoints, whose 404 (or successful
    DELETE) means the session is gone, so its map entry goes; no other answer removes an entry (a WHEP
    404 may only mean "no such viewer"). ``proves_live``: a 2xx answer means the session lives on
    that replica, recorded when it was found by asking every replica.
    """
    app = request.app
    session_id = request.match_info["session_id"]
    if not SESSION_ID.match(session_id):
        return json_error(404, "invalid_message", "no live session with that id")
    path = request.rel_url.raw_path_qs
    url = await lookup(app, session_id)
    replica = app[REPLICAS].get(url) if url is not None else None  # only configured replicas are asked
    if replica is None:
        return await _ask_every_replica(request, session_id, path, body=body, proves_live=proves_live)
    try:
        answer = await send(request, replica, body=body, path=path)
    except (ReplicaUnreachable, ReplicaFailed) as exc:
        passive_failure(replica, str(exc))
        return json_error(
            502, "worker_failed", f"the replica holding session {session_id!r} is unreachable", retryable=True
        )
    if session_endpoint and (answer.status == 404 or (request.method == "DELETE" and 200 <= answer.status < 300)):
        await forget(app, session_id, replica.url)
    return relay_from(replica, answer)


async def _ask_every_replica(
    request: web.Request, session_id: str, path: str, *, body: bytes | None, proves_live: bool
) -> web.StreamResponse:
    """A session the map does not know (its entry expired, or Redis was away when it was placed):
    the healthy replicas are asked in turn; the first that does not answer 404 holds it."""
    app = request.app
    for replica in app[REPLICAS].healthy():
        try:
            answer = await send(request, replica, body=body, path=path)
        except (ReplicaUnreachable, ReplicaFailed):
            continue
        if answer.status == 404:
            continue
        if proves_live and 200 <= answer.status < 300:
            await record(app, session_id, replica.url)
        return relay_from(replica, answer)
    return json_error(404, "invalid_message", f"no live session {session_id!r}")


def relay_from(replica: Replica, answer: ReplicaAnswer) -> web.Response:
    """``relay(answer)``, a ``Location`` naming the replica itself made a path (resolved against the
    router's URL, it comes back through the router)."""
    location = answer.headers.get(hdrs.LOCATION)
    if location is not None and location.startswith(replica.url + "/"):
        headers = CIMultiDict(answer.headers)
        headers[hdrs.LOCATION] = location[len(replica.url) :]
        answer = ReplicaAnswer(status=answer.status, headers=CIMultiDictProxy(headers), body=answer.body)
    return relay(answer)


def add_signalling_routes(app: web.Application) -> None:
    app.router.add_post("/v1/webrtc/offer", _offer)
    app.router.add_route("OPTIONS", "/v1/webrtc/offer", _not_a_session)
    app.router.add_get("/v1/webrtc/ice-servers", _not_a_session)
    app.router.add_route("OPTIONS", "/v1/webrtc/ice-servers", _not_a_session)
    app.router.add_delete("/v1/sessions/{session_id}", _session_request)
    app.router.add_get("/v1/sessions/{session_id}/frames", _session_request)
