"""The router as an aiohttp application: a client uses the router's URL as if it were a server.

Routes: ``GET /v1/stream`` (``stream.py``); ``POST /v1/webrtc/offer``, ``GET /v1/webrtc/ice-servers``,
``DELETE /v1/sessions/{id}``, ``GET /v1/sessions/{id}/frames`` (``signalling.py``); the viewers'
``POST|OPTIONS /v1/sessions/{id}/whep``, ``DELETE|PATCH|OPTIONS /v1/sessions/{id}/whep/{viewer}``,
``GET /v1/sessions/{id}/watch`` (WebSocket) and ``GET /v1/sessions/{id}/recording[/{name}]``
(``viewers.py``); ``/``, ``/watch`` and ``/client/…`` (the pages, from where the server serves them),
``/healthz``, ``/readyz``, ``/health``, ``/status``, ``/metrics`` (``endpoints.py``).

Shared objects live under the typed keys of ``keys.py``, each opened in a cleanup context: the HTTP
client to the replicas, the session map, the health-check loop. At shutdown the bridged sessions are
closed first (on_shutdown, 1001 on both sides), then the contexts close in reverse order: the probes
stop, the map closes, the HTTP client closes. The router keeps no state of its own but probe results:
the session map is in Redis, so several routers act as one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from rtc_server.packaged import shipped_dir
from rtc_server.router.config import RouterConfig
from rtc_server.router.endpoints import add_own_endpoints
from rtc_server.router.keys import BRIDGES, CONFIG, HTTP, METRICS, REPLICAS, SERVICE_NAME, SESSIONS
from rtc_server.router.metrics import RouterMetrics
from rtc_server.router.probe import Probe, run_health_check_loop
from rtc_server.router.proxy import RefusalKeepingResponse
from rtc_server.router.registry import ReplicaRegistry
from rtc_server.router.session_map import open_session_map
from rtc_server.router.signalling import add_signalling_routes
from rtc_server.router.stream import add_stream_route, close_bridges
from rtc_server.router.viewers import add_viewer_routes
from rtc_server.web_page import add_web_client

__all__ = ["BRIDGES", "CONFIG", "HTTP", "METRICS", "REPLICAS", "SERVICE_NAME", "SESSIONS", "build_router_app"]

logger = logging.getLogger(__name__)


async def _http_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    # No pool limit: every bridged WebSocket holds one connection for its whole life. No total
    # timeout at session level (it would cut bridges); requests set their own.
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.health_check_timeout_seconds)
    # Auto headers skipped: the client's own User-Agent travels, and no compressed answer is asked
    # for (bodies are relayed as they are read).
    # Answers are RefusalKeepingResponse: a replica's refusal of a WebSocket upgrade keeps its body.
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        response_class=RefusalKeepingResponse,
    ) as http:
        app[HTTP] = http
        yield


async def _sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    async with open_session_map(
        config.redis_url, key_prefix=config.key_prefix, ttl_s=config.session_ttl_seconds
    ) as session_map:
        app[SESSIONS] = session_map
        yield


def _health_ctx(probe: Probe | None) -> Callable[[web.Application], AsyncIterator[None]]:
    """The cleanup context running the health-check loop with ``probe`` (None: the httpx probe)."""

    async def health(app: web.Application) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_health_check_loop(
                app[REPLICAS], app[CONFIG], stop_event=stop, http_get=probe, observe=app[METRICS].observe_probe
            ),
            name="router-health",
        )
        yield
        stop.set()
        try:
            await asyncio.wait_for(task, app[CONFIG].health_check_timeout_seconds + 1.0)
        except TimeoutError:
            logger.warning("router: health loop did not stop in time; cancelled")
        except Exception:
            logger.exception("router: health loop failed")

    return health


def build_router_app(
    config: RouterConfig, *, registry: ReplicaRegistry | None = None, probe: Probe | None = None
) -> web.Application:
    """The router as an aiohttp application.

    ``registry`` and ``probe`` can be injected (tests); by default the registry is built from
    ``config.replicas`` and replicas are probed over HTTP with httpx.
    """
    app = web.Application(client_max_size=config.max_body_bytes)
    app[CONFIG] = config
    app[REPLICAS] = registry or ReplicaRegistry(
        config.replicas, failure_threshold=config.failure_threshold, recovery_threshold=config.recovery_threshold
    )
    app[METRICS] = RouterMetrics()
    app[BRIDGES] = set()
    app[METRICS].watch(app[REPLICAS], lambda: len(app[BRIDGES]))
    app.cleanup_ctx.extend([_http_ctx, _sessions_ctx, _health_ctx(probe)])
    app.on_shutdown.append(close_bridges)
    add_own_endpoints(app)
    add_stream_route(app)
    add_signalling_routes(app)
    add_viewer_routes(app)
    add_web_client(app, Path(config.web_client_dir) if config.web_client_dir else shipped_dir("web_client"))
    return app
