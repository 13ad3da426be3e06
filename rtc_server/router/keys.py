"""The router application's shared objects, under typed keys (each opened in a cleanup context of ``app.py``)."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from rtc_server.router.bridge import WebSocketBridge
from rtc_server.router.config import RouterConfig
from rtc_server.router.metrics import RouterMetrics
from rtc_server.router.registry import ReplicaRegistry
from rtc_server.router.session_map import SessionMap

__all__ = ["BRIDGES", "CONFIG", "HTTP", "METRICS", "REPLICAS", "SERVICE_NAME", "SESSIONS"]

SERVICE_NAME = "rtc-video-stream-router"

CONFIG = web.AppKey("config", RouterConfig)
REPLICAS = web.AppKey("replicas", ReplicaRegistry)
METRICS = web.AppKey("metrics", RouterMetrics)
HTTP = web.AppKey("http", aiohttp.ClientSession)  # to the replicas: relayed requests and bridged sockets
SESSIONS = web.AppKey("sessions", SessionMap)  # type: ignore[type-abstract]
BRIDGES: web.AppKey[set[WebSocketBridge]] = web.AppKey("bridges")  # open now, closed first at shutdown
