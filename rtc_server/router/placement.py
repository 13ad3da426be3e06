"""Placing a request on a replica, and the session map as the request handlers use it.

A new session goes to ``ReplicaRegistry.select``'s choice. A replica that refuses the connection
(or whose gateway answers 502/504) is tried no more for that request: the next one is, and the
failure counts towards marking it unhealthy (passive health), so clients reconnecting after a
replica died are placed at once, before the probes notice. A replica answering a new session with
503 (full, warming) is passed over the same way. Every move to another replica counts as a failover.

Session map errors (Redis away) never fail a request: a placement goes unrecorded, a lookup
falls back to asking the replicas.
"""

from __future__ import annotations

import logging
import math
import re

from aiohttp import web

from rtc_server.http_errors import HttpError
from rtc_server.protocol import ErrorCode
from rtc_server.router.config import RouterConfig
from rtc_server.router.keys import CONFIG, HTTP, METRICS, REPLICAS, SESSIONS
from rtc_server.router.proxy import ReplicaAnswer, ReplicaFailed, ReplicaUnreachable, forward, request_headers
from rtc_server.router.registry import Replica, ReplicaRegistry
from rtc_server.router.session_map import SessionMapError

__all__ = [
    "SESSION_ID",
    "forget",
    "lookup",
    "no_replica",
    "passive_failure",
    "place",
    "record",
    "retry_after",
    "send",
]

logger = logging.getLogger(__name__)

SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")  # what a replica's ids look like; anything else is unknown


def retry_after(config: RouterConfig) -> dict[str, str]:
    """The ``Retry-After`` of a refusal: a replica may be back by the next probe round."""
    return {"Retry-After": str(max(1, math.ceil(config.health_check_interval_seconds)))}


def no_replica(registry: ReplicaRegistry) -> tuple[ErrorCode, str]:
    """Why no replica can take a new session: none healthy, or every healthy one full."""
    if registry.healthy():
        return "session_rejected", "every healthy replica is full; try again shortly"
    return "gpu_unavailable", "router: no healthy replica available"


def retryable_refusal(code: ErrorCode) -> bool:
    """As a replica says it: a full server (``session_rejected``) is not retryable, as in the original
    system (Retry-After still says when to come back); no healthy replica (``gpu_unavailable``) is."""
    return code != "session_rejected"


def passive_failure(replica: Replica, error: str) -> None:
    """A failure seen while relaying: it counts like a failed probe."""
    logger.warning("router: replica %s unreachable: %s", replica.url, error)
    replica.record_failure(error)


async def send(
    request: web.Request, replica: Replica, *, body: bytes | None, path: str | None = None
) -> ReplicaAnswer:
    """``request`` (its method, ``path`` or its own path and query, its headers) sent to ``replica``."""
    app = request.app
    config = app[CONFIG]
    return await forward(
        app[HTTP],
        request.method,
        replica.url + (path if path is not None else request.rel_url.raw_path_qs),
        headers=request_headers(request),
        body=body,
        timeout_s=config.proxy_timeout_seconds,
        connect_timeout_s=config.health_check_timeout_seconds,
    )


async def place(request: web.Request, *, body: bytes | None, new_session: bool) -> tuple[Replica, ReplicaAnswer]:
    """Send ``request`` to the chosen replica, moving on while replicas are unreachable (or, for a
    ``new_session``, full). When every replica tried was full, the last one's 503 is the answer.

    HttpError 503 (``Retry-After``) when no replica is left; 502 when one took the request and never answered.
    """
    app = request.app
    registry, metrics = app[REPLICAS], app[METRICS]
    tried: list[str] = []
    moved_because: str | None = None
    refused_as_full: tuple[Replica, ReplicaAnswer] | None = None
    while True:
        replica = registry.select(exclude=tried)
        if replica is None:
            if refused_as_full is not None:
                return refused_as_full
            code, message = no_replica(registry)
            metrics.refusals.labels(code=code).inc()
            raise HttpError(503, code, message, retryable=retryable_refusal(code), headers=retry_after(app[CONFIG]))
        if moved_because is not None:
            metrics.failovers.labels(reason=moved_because).inc()
        tried.append(replica.url)
        try:
            answer = await send(request, replica, body=body)
        except ReplicaUnreachable as exc:
            passive_failure(replica, str(exc))
            moved_because = "unreachable"
            continue
        except ReplicaFailed as exc:
            logger.warning("router: replica %s took %s and gave no answer: %s", replica.url, request.path, exc)
            raise HttpError(502, "worker_failed", f"the replica gave no answer: {exc}", retryable=True) from exc
        if new_session and answer.status == 503:
            replica.note_full()  # until the next probe says otherwise
            refused_as_full, moved_because = (replica, answer), "full"
            continue
        return replica, answer


async def lookup(app: web.Application, session_id: str) -> str | None:
    """The URL of the replica holding ``session_id`` per the map (renewing its entry), or None."""
    try:
        return await app[SESSIONS].get(session_id)
    except SessionMapError as exc:
        app[METRICS].session_map_errors.labels(operation="get").inc()
        logger.warning("router: %s", exc)
        return None


async def record(app: web.Application, session_id: str, replica_url: str) -> None:
    """Write (or move) the map entry of ``session_id``."""
    try:
        await app[SESSIONS].put(session_id, replica_url)
    except SessionMapError as exc:
        app[METRICS].session_map_errors.labels(operation="put").inc()
        logger.warning("router: session %s on %s not recorded: %s", session_id[:8], replica_url, exc)


async def forget(app: web.Application, session_id: str, replica_url: str) -> None:
    """Remove the map entry of ``session_id`` if it still names ``replica_url``."""
    try:
        await app[SESSIONS].remove(session_id, replica_url)
    except SessionMapError as exc:
        app[METRICS].session_map_errors.labels(operation="remove").inc()
        logger.warning("router: session %s not removed from the map (it expires): %s", session_id[:8], exc)
