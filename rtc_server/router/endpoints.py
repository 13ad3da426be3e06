"""The router's own endpoints: health, readiness, status, metrics, and the page (as a server serves it)."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from rtc_server.auth import bearer_token
from rtc_server.http_errors import json_error
from rtc_server.router.keys import BRIDGES, CONFIG, METRICS, REPLICAS, SERVICE_NAME

__all__ = ["add_own_endpoints"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus text format


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _admin_refusal(request: web.Request) -> web.Response | None:
    """None when the request may see operator detail (no admin_token configured, or it carries it)."""
    token = request.app[CONFIG].admin_token
    if token is None:
        return None
    offered = bearer_token(request.headers.get("Authorization"))
    if offered is not None and hmac.compare_digest(offered.encode(), token.encode()):
        return None
    return json_error(401, "unauthorized", "this endpoint needs the router's admin_token")


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "service": SERVICE_NAME, "ts": _now_iso()})


async def _readyz(request: web.Request) -> web.Response:
    """Ready (200) while any replica is healthy; 503 otherwise."""
    registry = request.app[REPLICAS]
    healthy = len(registry.healthy())
    body = {
        "status": "ready" if healthy else "unavailable",
        "service": SERVICE_NAME,
        "healthy_replicas": healthy,
        "total_replicas": len(registry),
        "ts": _now_iso(),
    }
    return web.json_response(body, status=200 if healthy else 503)


async def _health(request: web.Request) -> web.Response:
    body = {
        "status": "ok",
        "service": SERVICE_NAME,
        "healthy_replicas": len(request.app[REPLICAS].healthy()),
        "bridged_streams": len(request.app[BRIDGES]),
    }
    return web.json_response(body)


async def _status(request: web.Request) -> web.Response:
    refusal = _admin_refusal(request)
    if refusal is not None:
        return refusal
    registry = request.app[REPLICAS]
    body: dict[str, Any] = {
        "service": SERVICE_NAME,
        "replicas": [replica.to_json() for replica in registry],
        "healthy_replicas": len(registry.healthy()),
        "bridged_streams": len(request.app[BRIDGES]),
    }
    return web.json_response(body)


async def _metrics(request: web.Request) -> web.Response:
    refusal = _admin_refusal(request)
    if refusal is not None:
        return refusal
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE})


def add_own_endpoints(app: web.Application) -> None:
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/health", _health)
    app.router.add_get("/status", _status)
    app.router.add_get("/metrics", _metrics)


