"""Router fixtures: real replicas (the app on loopback, sharing a real Redis) and real routers in front of them."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from rtc_server.router.app import METRICS, REPLICAS, build_router_app
from rtc_server.router.config import RouterConfig
from rtc_server.router.registry import ReplicaRegistry
from tests.conftest import LOOPBACK, RunningServer, make_config
from tests.processes import free_port, stop_process

REPO = Path(__file__).resolve().parents[3]
READY_TIMEOUT_S = 30.0

INIT = {"type": "session_init_v2", "curated_prompts": ["a red fox running through fresh snow"]}
PROBE_INTERVAL_S = 0.2


@dataclass
class RunningRouter:
    server: TestServer
    app: web.Application
    url: str

    @property
    def replicas(self) -> ReplicaRegistry:
        return self.app[REPLICAS]

    def metric(self, name: str, **labels: str) -> float:
        value = self.app[METRICS].registry.get_sample_value(name, labels)
        return value or 0.0


StartRouter = Callable[..., Awaitable[RunningRouter]]


async def wait_until(predicate: Callable[[], Any], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        await asyncio.sleep(0.02)


def replica_config(redis_url: str | None = None, **sections: dict[str, Any]) -> Any:
    """A test replica; with ``redis_url`` its session store is there, shared with the other replicas.

    Routing needs no shared store (the router's map is in its own Redis keys): only resuming a
    session on another replica does.
    """
    store = {"backend": "redis", "redis_url": redis_url} if redis_url is not None else {"backend": "memory"}
    return make_config(store=store, **sections)


@pytest.fixture
async def replicas(start_server: Callable[..., Any]) -> tuple[RunningServer, RunningServer]:
    """Two replicas."""
    first = await start_server(replica_config())
    second = await start_server(replica_config())
    return first, second


@pytest.fixture
async def start_router(start_server: Callable[..., Any]) -> AsyncIterator[StartRouter]:
    """Start routers (closed before the replicas: this fixture depends on theirs)."""
    servers: list[TestServer] = []

    async def start(
        replica_urls: list[str], *, redis_url: str | None = None, wait_healthy: bool = True, **overrides: Any
    ) -> RunningRouter:
        spec = [{"url": url, "role": "primary" if i == 0 else "secondary"} for i, url in enumerate(replica_urls)]
        config = RouterConfig.model_validate(
            {
                "host": LOOPBACK,
                "port": 0,
                "replicas": spec,
                "redis_url": redis_url,
                "health_check_interval_seconds": PROBE_INTERVAL_S,
                "health_check_timeout_seconds": 1.0,
                "failure_threshold": 2,
                **overrides,
            }
        )
        server = TestServer(build_router_app(config), host=LOOPBACK, port=0)
        await server.start_server()
        servers.append(server)
        router = RunningRouter(server=server, app=server.app, url=str(server.make_url("/")).rstrip("/"))  # type: ignore[arg-type]
        if wait_healthy:
            await wait_until(
                lambda: all(r.is_healthy for r in router.replicas), 10, "the router never saw every replica healthy"
            )
        return router

    yield start
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def redis_client(fresh_redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(fresh_redis_url)
    yield client
    await client.aclose()


def map_key(session_id: str) -> str:
    return f"rtcvs:router:session:{session_id}"


@dataclass
class ProcessHandle:
    """A server started as its own process (so it can be killed): its URL and the process."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def spawn(module: str, config_path: Path, port: int, log_path: Path) -> ProcessHandle:
    """``python -m <module> --config <config_path> --port <port>``, its output going to ``log_path``."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--config", str(config_path), "--port", str(port)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return ProcessHandle(url=f"http://{LOOPBACK}:{port}", process=process, log_path=log_path)


async def wait_http_ok(handle: ProcessHandle, path: str, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if handle.process.poll() is not None:
                raise RuntimeError(f"{handle.url} exited with {handle.process.returncode}:\n{handle.log()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(handle.url + path, timeout=aiohttp.ClientTimeout(total=1)) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{handle.url}{path} not ready:\n{handle.log()}")


@pytest.fixture
async def start_process(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[ProcessHandle]]]:
    """Start ``python -m <module> --config <yaml of config> --port <free>``; stopped (SIGKILL if need be) at the end."""
    handles: list[ProcessHandle] = []

    async def start(module: str, config: dict[str, Any], *, ready_path: str = "/readyz") -> ProcessHandle:
        port = free_port(LOOPBACK)
        name = f"{module.replace('.', '-')}-{len(handles)}"
        config_path = tmp_path / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        handle = spawn(module, config_path, port, tmp_path / f"{name}.log")
        handles.append(handle)
        await wait_http_ok(handle, ready_path)
        return handle

    yield start
    for handle in reversed(handles):
        await asyncio.to_thread(stop_process, handle.process)


def replica_process_config() -> dict[str, Any]:
    """A small replica config for ``python -m rtc_server`` (what make_config gives in-process)."""
    return {
        "server": {"host": LOOPBACK},
        "default_request": {
            "sampling": {"width": 128, "height": 128, "fps": 24, "num_frames": 24, "num_inference_steps": 1}
        },
        "webrtc": {"ice_host_addresses": [LOOPBACK]},
    }
