"""Health probes of the replicas (httpx) and the loop that runs them on a fixed interval.

One probe asks a replica two things at once: ``health_check_path`` (a 2xx answer is a success) and
``/status`` (its ``free_slots`` and ``session_capacity``, when it reports them: a probe whose /status
cannot be read still succeeds, with the slots unknown). The whole probe is bounded by
``health_check_timeout_seconds``; every replica is probed concurrently, so one slow replica does not
delay the others' verdicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import httpx

from rtc_server.router.config import RouterConfig
from rtc_server.router.registry import ProbeResult, Replica, ReplicaRegistry, ReplicaState

__all__ = ["HttpProbe", "Probe", "http_probe", "probe_once", "run_health_check_loop"]

logger = logging.getLogger(__name__)

STATUS_PATH = "/status"  # where a replica reports its free session slots
MAX_ERROR_CHARS = 200  # of an exception's text kept in last_error


class Probe(Protocol):
    """Probes one replica; must not raise for the replica's faults (it returns ``ok=False``)."""

    async def __call__(self, url: str, *, timeout: float) -> ProbeResult: ...


ProbeObserver = Callable[[Replica, ProbeResult], None]


class HttpProbe:
    """The real probe, over one shared ``httpx.AsyncClient`` (connections are reused between rounds)."""

    def __init__(self, client: httpx.AsyncClient, *, health_path: str) -> None:
        self._client = client
        self._health_path = health_path

    async def __call__(self, url: str, *, timeout: float) -> ProbeResult:
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                health, status = await self._ask(url)
        except TimeoutError:
            return ProbeResult(ok=False, error=f"no answer within {timeout:g} s")
        except httpx.HTTPError as exc:
            return ProbeResult(ok=False, error=_describe(exc))
        latency_ms = (time.monotonic() - started) * 1000.0
        if not health.is_success:
            return ProbeResult(ok=False, latency_ms=latency_ms, error=f"{self._health_path} answered {health.status_code}")
        free_slots, session_capacity = _slots(status)
        return ProbeResult(ok=True, latency_ms=latency_ms, free_slots=free_slots, session_capacity=session_capacity)

    async def _ask(self, url: str) -> tuple[httpx.Response, httpx.Response | None]:
        """The health answer (its errors raise) and, asked at the same time, the /status answer or None."""
        if self._health_path == STATUS_PATH:
            health = await self._client.get(url + STATUS_PATH)
            return health, health
        status_task = asyncio.create_task(self._get_or_none(url + STATUS_PATH))
        try:
            health = await self._client.get(url + self._health_path)
            return health, await status_task
        finally:
            if not status_task.done():
                status_task.cancel()
                await asyncio.wait([status_task])  # reaps it without raising its CancelledError here

    async def _get_or_none(self, url: str) -> httpx.Response | None:
        # /status is extra information: its failure must not fail the health check.
        try:
            return await self._client.get(url)
        except httpx.HTTPError:
            return None


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:MAX_ERROR_CHARS]


def _slots(response: httpx.Response | None) -> tuple[int | None, int | None]:
    """``free_slots`` and ``session_capacity`` from a replica's /status body; None where missing or malformed."""
    if response is None or not response.is_success:
        return None, None
    try:
        body = response.json()
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    return _count(body.get("free_slots")), _count(body.get("session_capacity"))


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@contextlib.asynccontextmanager
async def http_probe(config: RouterConfig) -> AsyncIterator[HttpProbe]:
    """The default probe with its client, closed on exit."""
    # Per-connection pool limits stay at httpx's defaults; a round opens at most two requests per replica.
    async with httpx.AsyncClient(timeout=config.health_check_timeout_seconds, follow_redirects=False) as client:
        yield HttpProbe(client, health_path=config.health_check_path)


async def probe_once(
    registry: ReplicaRegistry, probe: Probe, *, timeout: float, observe: ProbeObserver | None = None
) -> None:
    """Probe every replica concurrently and record the results."""

    async def one(replica: Replica) -> None:
        try:
            result = await probe(replica.url, timeout=timeout)
        except Exception as exc:  # a probe is not supposed to raise: log it, count it as a failure
            logger.exception("router: probe of %s raised", replica.url)
            result = ProbeResult(ok=False, error=_describe(exc))
        before = replica.state
        after = replica.record(result)
        if after is not before:
            log = logger.warning if after is ReplicaState.UNHEALTHY else logger.info
            log("router: replica %s is %s (%s)", replica.url, after.value, result.error or "probe ok")
        if observe is not None:
            observe(replica, result)

    async with asyncio.TaskGroup() as group:
        for replica in registry:
            group.create_task(one(replica), name=f"probe {replica.url}")


async def run_health_check_loop(
    registry: ReplicaRegistry,
    config: RouterConfig,
    *,
    stop_event: asyncio.Event,
    http_get: Probe | None = None,
    observe: ProbeObserver | None = None,
) -> None:
    """Probe all replicas now, then every ``health_check_interval_seconds`` until ``stop_event`` is set.

    ``http_get`` replaces the httpx probe (tests inject a deterministic one); ``observe`` sees every
    result (the metrics count them).
    """
    if http_get is not None:
        await _run_loop(registry, config, stop_event, http_get, observe)
        return
    async with http_probe(config) as probe:
        await _run_loop(registry, config, stop_event, probe, observe)


async def _run_loop(
    registry: ReplicaRegistry,
    config: RouterConfig,
    stop_event: asyncio.Event,
    probe: Probe,
    observe: ProbeObserver | None,
) -> None:
    while not stop_event.is_set():
        await probe_once(registry, probe, timeout=config.health_check_timeout_seconds, observe=observe)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop_event.wait(), config.health_check_interval_seconds)
