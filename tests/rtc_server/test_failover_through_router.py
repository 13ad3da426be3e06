"""Failover end to end: redis-server, two replica processes and a router process on loopback.

Clients are the resuming headless clients (rtc_server/clients/resuming.py) talking to the router's
URL only, as the page does. A replica is SIGKILLed (a dead machine) or SIGTERMed (a rolling restart).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

import pytest

from rtc_server.clients.resuming import ResumingSession
from tests.cluster import Cluster, Process

pytestmark = pytest.mark.slow

INIT = {"curated_prompts": ["a red fox running through fresh snow", "a lighthouse in a storm"]}
FAILOVER_BUDGET_S = 2.0  # the bound: kill -> frames of the continued stream



def sessions_on(replica: Process) -> int:
    with urllib.request.urlopen(f"{replica.url}/health", timeout=2) as response:
        return int(json.loads(response.read())["sessions"])


def router_sees_healthy(router: Process, count: int) -> bool:
    with urllib.request.urlopen(f"{router.url}/status", timeout=2) as response:
        replicas = json.loads(response.read())["replicas"]
    return sum(r["state"] == "healthy" for r in replicas) >= count


async def wait_until(predicate: Any, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.05)


def start_cluster(cluster: Cluster) -> tuple[Process, Process, Process]:
    a, b = cluster.replica("replica-a"), cluster.replica("replica-b")
    a.wait_ready()
    b.wait_ready()
    router = cluster.router("router", [a, b])
    router.wait_ready()
    return a, b, router


def shown_indices(session: ResumingSession, after: float = 0.0) -> list[int]:
    """Segment indices of what the client received (frames over WebRTC, media over WebSocket) after ``after``."""
    if session.transport == "webrtc":
        return [f.marker.segment_idx for f in session.frames if f.marker is not None and f.received_at > after]
    return [s.segment_idx for s in session.segments if s.first_chunk_at is not None and s.first_chunk_at > after]


def first_media_after(session: ResumingSession, after: float) -> float | None:
    if session.transport == "webrtc":
        times = [f.received_at for f in session.frames if f.received_at > after]
    else:
        times = [s.first_chunk_at for s in session.segments if s.first_chunk_at is not None and s.first_chunk_at > after]
    return min(times) if times else None


def resumed_from(session: ResumingSession) -> float:
    """When the resumed connection was asked for: media after this came from the new replica."""
    return session.reconnects[-1].noticed_at if session.reconnects else float("inf")


def resumed_media_at(session: ResumingSession) -> float | None:
    return first_media_after(session, resumed_from(session)) if session.reconnects else None


async def playing(session: ResumingSession, past_segment: int) -> None:
    await wait_until(
        lambda: session.session_id is not None and any(i >= past_segment for i in shown_indices(session)),
        20,
        f"{session.transport} session not playing past segment {past_segment}",
    )


async def test_killing_a_replica_moves_its_sessions_to_the_other_within_2s(cluster: Cluster) -> None:
    a, b, router = start_cluster(cluster)
    await wait_until(lambda: router_sees_healthy(router, 2), 10, "router did not see both replicas")
    rtc = ResumingSession(router.url, transport="webrtc", session_init=INIT)
    ws = ResumingSession(router.url, transport="websocket", session_init=INIT)
    bystander = ResumingSession(b.url, transport="websocket", session_init=INIT)  # lives on B all along
    async with rtc, ws, bystander:
        for session in (rtc, ws, bystander):
            await session.start()
        for session in (rtc, ws, bystander):
            await playing(session, 1)
        assert sessions_on(a) == 2 and sessions_on(b) == 1, "the router places new sessions on the primary"
        before = {s.transport: max(shown_indices(s)) for s in (rtc, ws)}
        killed_at = time.monotonic()
        a.kill()
        for session in (rtc, ws):
            await wait_until(lambda s=session: resumed_media_at(s) is not None, 10, "no media after the kill")
        for session in (rtc, ws):
            assert len(session.reconnects) == 1 and session.refusal is None
            took = resumed_media_at(session)
            assert took is not None and took - killed_at <= FAILOVER_BUDGET_S, (session.transport, took - killed_at)
            resumed = shown_indices(session, resumed_from(session))
            assert min(resumed) >= before[session.transport], "the stream continued, it did not restart from 0"
        assert sessions_on(b) == 3
        await wait_until(lambda: shown_indices(bystander, killed_at), 10, "the bystander on B stopped")
        assert bystander.reconnects == []


async def test_a_rolling_restart_moves_four_sessions_without_losing_one(cluster: Cluster) -> None:
    a, b, router = start_cluster(cluster)
    await wait_until(lambda: router_sees_healthy(router, 2), 10, "router did not see both replicas")
    sessions = [
        ResumingSession(router.url, transport=transport, session_init=INIT)
        for transport in ("webrtc", "webrtc", "websocket", "websocket")
    ]
    try:
        for session in sessions:
            await session.start()
        for session in sessions:
            await playing(session, 1)
        assert sessions_on(a) == 4
        before = [max(shown_indices(s)) for s in sessions]
        assert await asyncio.to_thread(a.terminate) == 0, a.log_tail()
        for session, last in zip(sessions, before, strict=True):
            await wait_until(lambda s=session: resumed_media_at(s) is not None, 15, "no media after the restart")
            assert len(session.reconnects) == 1 and session.refusal is None
            assert min(shown_indices(session, resumed_from(session))) >= last
            assert "gpu_unavailable" in session.reconnects[0].reason
        assert sessions_on(b) == 4
    finally:
        for session in sessions:
            await session.close()
