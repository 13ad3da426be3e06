"""A session's recordings over HTTP, for its owner, while they are kept (also after the session ended).

- ``GET /v1/sessions/{id}/recording``: ``{session_id, recordings: [{name, state, frames, duration_s,
  bytes, started_at, ended_at?, audio?, url?}]}``, ``state`` ``recording`` or ``ready`` (``failed``
  when one could not be finalised); ``url`` (finalised ones) is where it downloads;
- ``GET /v1/sessions/{id}/recording/{name}``: the finalised MP4 (``video/mp4``, ranges served).

The owner's resume token (``session_info.resume_token``) rides as ``Authorization: Bearer`` or
``?token=``; it is checked, in constant time, against the SHA-256 each recording's sidecar keeps, so it
works once the session (and its controller) are gone; a resumed session's recordings go with the token
the session had when each began. A watch token grants nothing here. Answers: 401 without a token or
with one that owns none of the session's recordings; 404 recording off, unknown session, no
recording, a name not of this session's recordings; 409 (retryable) for a recording not yet finalised.
Errors are JSON ``{error: {code, message, retryable}}``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from rtc_server.auth import bearer_token
from rtc_server.http_errors import HttpError, json_error
from rtc_server.resume_record import token_matches
from rtc_server.transports.gate import Gate
from rtc_server.viewers.recording import RecordingService
from rtc_server.viewers.recording_files import RecordingMeta, valid_session_id

__all__ = ["register_routes"]

_AUTH_CHALLENGE = {"WWW-Authenticate": "Bearer"}


class _Recordings:
    """The two handlers, over the app's recording service and gate."""

    def __init__(self, service: web.AppKey[RecordingService], gate: web.AppKey[Gate]) -> None:
        self._service = service
        self._gate = gate

    async def listing(self, request: web.Request) -> web.StreamResponse:
        try:
            session_id, mine = await self._owned(request)
        except HttpError as exc:
            return exc.response()
        body = {"session_id": session_id, "recordings": [_describe(meta) for meta in mine]}
        return web.json_response(body, headers=self._cors(request))

    async def download(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        try:
            _, mine = await self._owned(request, name=name)
        except HttpError as exc:
            return exc.response()
        meta = mine[0]
        if meta.state == "recording":
            return json_error(409, "invalid_message", f"{name} is still being recorded; it downloads once finalised", retryable=True)
        if meta.state != "ready":
            return json_error(404, "invalid_message", f"{name} could not be finalised")
        headers = {
            **self._cors(request),
            "Content-Type": "video/mp4",
            "Content-Disposition": f'attachment; filename="{meta.name}"',
            "Cache-Control": "private, no-store",
        }
        return web.FileResponse(request.app[self._service].file_of(meta), headers=headers)

    async def _owned(self, request: web.Request, *, name: str | None = None) -> tuple[str, list[RecordingMeta]]:
        """The session's recordings the caller's token owns (only ``name`` when given); HttpError otherwise."""
        service = request.app[self._service]
        if not service.enabled:
            raise HttpError(404, "invalid_message", "recording is not enabled on this server")
        self._gate_of(request).check_origin(request)
        session_id = request.match_info["session_id"]
        token = request.query.get("token") or bearer_token(request.headers.get("Authorization"))
        if not token:
            raise HttpError(401, "unauthorized", "the session's resume token is required (session_info.resume_token)", headers=_AUTH_CHALLENGE)
        metas = await service.recordings_of(session_id) if valid_session_id(session_id) else []
        if name is not None:
            metas = [meta for meta in metas if meta.name == name]
        if not metas:
            what = f"recording {name[:80]!r}" if name is not None else "recordings"
            raise HttpError(404, "invalid_message", f"no {what} of session {session_id[:80]!r} here")
        mine = [meta for meta in metas if token_matches(token, meta.token_sha256)]
        if not mine:
            raise HttpError(401, "unauthorized", "this token does not own the session's recordings", headers=_AUTH_CHALLENGE)
        return session_id, mine

    def _gate_of(self, request: web.Request) -> Gate:
        return request.app[self._gate]

    def _cors(self, request: web.Request) -> dict[str, str]:
        return self._gate_of(request).cors_headers(request)


def _describe(meta: RecordingMeta) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": meta.name,
        "state": meta.state,
        "frames": meta.frames,
        "duration_s": meta.duration_s,
        "bytes": meta.bytes,
        "started_at": meta.started_at,
    }
    if meta.ended_at is not None:
        entry["ended_at"] = meta.ended_at
    if meta.audio is not None:
        entry["audio"] = meta.audio
    if meta.state == "ready":
        entry["url"] = f"/v1/sessions/{meta.session_id}/recording/{meta.name}"
    return entry


def register_routes(app: web.Application, *, recordings: web.AppKey[RecordingService], gate: web.AppKey[Gate]) -> None:
    """Add the two routes; the app holds the service under ``recordings`` (its own cleanup context)."""
    handlers = _Recordings(recordings, gate)
    app.router.add_get("/v1/sessions/{session_id}/recording", handlers.listing)
    app.router.add_get("/v1/sessions/{session_id}/recording/{name}", handlers.download)
