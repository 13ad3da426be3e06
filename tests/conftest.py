"""Shared fixtures: a real server on loopback built from a test config."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from rtc_server.app import POOL, build_app
from rtc_server.config import ServiceConfig

pytest_plugins = ["tests.redis_fixture", "tests.turn_fixture", "tests.cluster"]

LOOPBACK = "127.0.0.1"


def make_config(**sections: dict[str, Any]) -> ServiceConfig:
    """A small, fast config for tests; ``sections`` override per section (e.g. streaming={...})."""
    base: dict[str, dict[str, Any]] = {
        "server": {"host": LOOPBACK, "port": 0},
        "pool": {"max_parallel": 2},
        "default_request": {
            "prompt": "a red fox running through fresh snow",
            "sampling": {"width": 256, "height": 256, "fps": 24, "num_frames": 24, "num_inference_steps": 2},
        },
        "streaming": {"session_timeout_seconds": 60, "max_sessions": 4, "max_queue": 0, "reaper_interval_seconds": 0.2},
        "webrtc": {"ice_host_addresses": [LOOPBACK], "peer_timeout_seconds": 3.0},
    }
    for name, values in sections.items():
        merged = dict(base.get(name, {}))
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        base[name] = merged
    return ServiceConfig.model_validate(base)


class RunningServer:
    """A started app: its base URL and the app for inspecting shared objects."""

    def __init__(self, server: TestServer) -> None:
        self._server = server
        self.app: web.Application = server.app  # type: ignore[assignment]
        self.url = str(server.make_url("/")).rstrip("/")

    async def wait_ready(self, timeout: float = 90.0) -> None:
        pool = self.app[POOL]
        deadline = asyncio.get_running_loop().time() + timeout
        while not pool.ready:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("pool did not become ready")
            await asyncio.sleep(0.02)


ServerFactory = Callable[..., "asyncio.Future[RunningServer]"]


@pytest.fixture
async def start_server() -> AsyncIterator[Callable[[ServiceConfig], Any]]:
    """Start servers from configs; all are closed at the end of the test."""
    servers: list[TestServer] = []

    async def start(config: ServiceConfig) -> RunningServer:
        server = TestServer(build_app(config), host=LOOPBACK, port=0)
        await server.start_server()
        servers.append(server)
        running = RunningServer(server)
        await running.wait_ready()
        return running

    yield start
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def server(start_server: Callable[[ServiceConfig], Any]) -> RunningServer:
    return await start_server(make_config())
