"""Who may watch: the live session's hub, for a holder of its watch token. Shared by the watch socket and WHEP."""

from __future__ import annotations

from aiohttp import web

from rtc_server.config import ServiceConfig
from rtc_server.http_errors import HttpError
from rtc_server.registry import SessionRegistry
from rtc_server.transports.gate import Gate
from rtc_server.viewers.fmp4_fanout import WatchHub

__all__ = ["watched_hub"]


def watched_hub(
    request: web.Request, token: str | None, *, config: ServiceConfig, registry: SessionRegistry, gate: Gate
) -> WatchHub:
    """The hub of the request's ``{session_id}``; HttpError 404 (viewers off, no live session here),
    403 (web origin not allowed) or 401 (missing or wrong watch token)."""
    session_id = request.match_info["session_id"]
    if not config.streaming.viewers.enabled:
        raise HttpError(404, "invalid_message", "viewers are not enabled on this server")
    gate.check_origin(request)
    controller = registry.get(session_id)
    hub = controller.viewers if controller is not None and not controller.closed else None
    if hub is None or hub.closed:
        raise HttpError(404, "invalid_message", f"no live session {session_id!r} here")
    if not hub.token.matches(token):
        raise HttpError(
            401, "unauthorized", "a valid watch token is required (session_info.watch_token)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return hub
