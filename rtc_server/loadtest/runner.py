"""Load-test sessions: N headless clients, each a real session that sends prompts on a schedule,
and optionally M WHEP viewers per session watching it (``viewers``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import aiohttp

from rtc_server.clients.prompt_probe import PromptProbe
from rtc_server.clients.webrtc_client import OfferRejected, ReceivedFrame, WebRTCClient
from rtc_server.clients.whep_client import WhepClient
from rtc_server.clients.ws_client import WebSocketClient

__all__ = ["LoadSettings", "SessionRecord", "ViewerRecord", "run_load"]

logger = logging.getLogger(__name__)

PROMPTS = (
    "a red fox running through fresh snow",
    "neon city skyline at night, rain on the glass",
    "a lighthouse in a storm, waves crashing",
    "desert dunes at dawn, long shadows",
    "a paper boat drifting down a gutter stream",
)
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
# Prompts go out at a random phase against segment boundaries, so prompt-to-pixels figures
# sample every moment of a segment rather than one.
PROMPT_JITTER = 0.25  # each interval is the configured one +- this fraction


@dataclass(frozen=True, kw_only=True)
class LoadSettings:
    """What to run."""

    url: str
    sessions: int
    duration_s: float
    transport: str = "webrtc"
    ramp_s: float = 0.0
    prompt_interval_s: float = 5.0
    host_addresses: list[str] | None = None
    token: str | None = None  # sent as the bearer token when the server's auth asks for one
    viewers: int = 0  # WHEP viewers of each session, joining once its session_info arrives


@dataclass
class SessionRecord:
    """What one client saw: times are monotonic seconds, ``unix_ms`` wall-clock milliseconds."""

    index: int
    session_id: str | None = None
    started_at: float = 0.0
    first_frame_at: float | None = None
    ended_at: float | None = None
    fps: float | None = None
    frame_times: list[float] = field(default_factory=list)
    frame_numbers: list[int | None] = field(default_factory=list)
    frame_unix_ms: list[float] = field(default_factory=list)
    release_unix_ms: dict[int, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    prompts_sent: int = 0
    prompts: PromptProbe = field(default_factory=PromptProbe)  # WebRTC: prompt to first decoded frame of it
    viewers: list[ViewerRecord] = field(default_factory=list)

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


@dataclass
class ViewerRecord:
    """What one WHEP viewer of a session saw (monotonic seconds)."""

    joined_at: float = 0.0
    first_frame_at: float | None = None
    left_at: float | None = None
    frame_times: list[float] = field(default_factory=list)
    error: str | None = None


def _default_hosts(url: str) -> list[str] | None:
    # aioice never offers loopback candidates by itself; a server on this machine needs them pinned.
    host = urlparse(url).hostname or ""
    return ["127.0.0.1"] if host in LOOPBACK_HOSTS else None


async def _prompt_schedule(client: Any, record: SessionRecord, interval_s: float, stop_at: float) -> None:
    jitter = random.Random(record.index)
    while True:
        pause_s = interval_s * jitter.uniform(1 - PROMPT_JITTER, 1 + PROMPT_JITTER)
        if time.monotonic() + pause_s >= stop_at:
            return
        await asyncio.sleep(pause_s)
        # Numbered, so that every prompt is new and its frames tell it apart from the last one's.
        text = f"{PROMPTS[record.prompts_sent % len(PROMPTS)]}, take {record.prompts_sent + 1}"
        record.prompts.sent(text, time.monotonic())
        await client.send({"type": "segment_prompt_source", "prompt": text})
        record.prompts_sent += 1


def _on_event(record: SessionRecord) -> Any:
    def on_event(event: dict[str, Any]) -> None:
        if event.get("type") == "prompt_received":
            record.prompts.acknowledged(str(event.get("prompt")), str(event.get("prompt_used")))

    return on_event


def _count_errors(record: SessionRecord, events: list[dict[str, Any]]) -> None:
    for event in events:
        if event.get("type") == "error":
            record.error(str(event.get("code")))
        elif event.get("type") == "prompt_rejected":
            record.error("prompt_rejected")


async def _run_webrtc(settings: LoadSettings, record: SessionRecord, http: aiohttp.ClientSession) -> None:
    def on_frame(frame: ReceivedFrame) -> None:
        if record.first_frame_at is None:
            record.first_frame_at = frame.received_at
        record.frame_times.append(frame.received_at)
        record.frame_unix_ms.append(time.time() * 1000.0)
        record.frame_numbers.append(frame.marker.frame_number if frame.marker else None)
        record.prompts.frame(frame.marker, frame.received_at)

    hosts = settings.host_addresses if settings.host_addresses is not None else _default_hosts(settings.url)
    client = WebRTCClient(
        settings.url,
        session_init={"type": "session_init_v2"},
        host_addresses=hosts,
        on_frame=on_frame,
        keep_frames=False,
        auth_token=settings.token,
    )
    client.on_event = _on_event(record)
    try:
        record.session_id = await client.connect(http=http)
        stop_at = record.started_at + settings.duration_s
        prompts = asyncio.create_task(_prompt_schedule(client, record, settings.prompt_interval_s, stop_at))
        watching = asyncio.create_task(_watch_all(settings, record, client, stop_at, http))
        with contextlib.suppress(TimeoutError):
            start = await client.wait_for_event("ltx2_stream_start", timeout=settings.duration_s)
            record.fps = float(start["fps"])
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
        prompts.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await prompts
        await watching
        await _fetch_release_times(settings.url, record, http)
    except OfferRejected as exc:
        code = exc.body.get("error", {}).get("code", f"http_{exc.status}") if isinstance(exc.body, dict) else "rejected"
        record.error(str(code))
    finally:
        _count_errors(record, client.events)
        await client.close()


async def _watch_all(
    settings: LoadSettings, record: SessionRecord, owner: Any, stop_at: float, http: aiohttp.ClientSession | None
) -> None:
    """The session's WHEP viewers, from its session_info (their watch token) until ``stop_at``."""
    if settings.viewers <= 0:
        return
    try:
        info = await owner.wait_for_event("session_info", timeout=max(0.1, stop_at - time.monotonic()))
    except TimeoutError:
        return
    record.viewers = [ViewerRecord() for _ in range(settings.viewers)]
    await asyncio.gather(*(_watch(settings, info, viewer, stop_at, http) for viewer in record.viewers))


async def _watch(
    settings: LoadSettings, info: dict[str, Any], viewer: ViewerRecord, stop_at: float, http: aiohttp.ClientSession | None
) -> None:
    def on_frame(frame: ReceivedFrame) -> None:
        if viewer.first_frame_at is None:
            viewer.first_frame_at = frame.received_at
        viewer.frame_times.append(frame.received_at)

    hosts = settings.host_addresses if settings.host_addresses is not None else _default_hosts(settings.url)
    client = WhepClient(
        settings.url, str(info["session_id"]), info.get("watch_token"), host_addresses=hosts, on_frame=on_frame, keep_frames=False
    )
    viewer.joined_at = time.monotonic()
    try:
        await client.connect(http=http)
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
        with contextlib.suppress(aiohttp.ClientError, OSError):
            await client.leave(http=http)
    except OfferRejected as exc:
        viewer.error = f"whep_{exc.status}"
    except (aiohttp.ClientError, OSError) as exc:
        viewer.error = type(exc).__name__
    finally:
        viewer.left_at = time.monotonic()
        await client.close()


async def _fetch_release_times(url: str, record: SessionRecord, http: aiohttp.ClientSession) -> None:
    """Ask the server when it released each frame (same clock on one machine: per-frame latency)."""
    if record.session_id is None:
        return
    try:
        async with http.get(f"{url.rstrip('/')}/v1/sessions/{record.session_id}/frames") as response:
            if response.status != 200:
                return
            body = await response.json()
    except aiohttp.ClientError:
        return
    record.release_unix_ms = {int(number): float(at) for number, at in body.get("frames", [])}


async def _run_ws(settings: LoadSettings, record: SessionRecord) -> None:
    client = WebSocketClient(settings.url, session_init={}, auth_token=settings.token)
    try:
        await client.connect()
        stop_at = record.started_at + settings.duration_s
        prompts = asyncio.create_task(_prompt_schedule(client, record, settings.prompt_interval_s, stop_at))
        watching = asyncio.create_task(_watch_all(settings, record, client, stop_at, None))
        seen = 0
        while time.monotonic() < stop_at and not client.closed.is_set():
            for event in client.events[seen:]:
                kind = event.get("type")
                if kind == "ltx2_stream_start":
                    record.fps = float(event["fps"])
                elif kind == "media_segment_complete":
                    now = time.monotonic()
                    if record.first_frame_at is None:
                        record.first_frame_at = now
                    # A segment's frames arrive together and an MSE player shows them over the
                    # segment's duration: spread them so rates and stalls mean what they do for WebRTC.
                    duration_s = float(event.get("duration_ms") or 0) / 1000.0
                    frames = max(1, round(duration_s * (record.fps or 0)))
                    record.frame_times.extend(now - duration_s + (i + 1) * duration_s / frames for i in range(frames))
                    record.frame_numbers.extend([None] * frames)
            seen = len(client.events)
            await asyncio.sleep(0.05)
        prompts.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await prompts
        await watching
    finally:
        _count_errors(record, client.events)
        if client.close_code not in (None, 1000):
            record.error(f"close_{client.close_code}")
        await client.close()


async def _run_one(settings: LoadSettings, record: SessionRecord, delay_s: float, http: aiohttp.ClientSession) -> None:
    await asyncio.sleep(delay_s)
    record.started_at = time.monotonic()
    try:
        if settings.transport == "webrtc":
            await _run_webrtc(settings, record, http)
        else:
            await _run_ws(settings, record)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        logger.warning("load session %d failed: %s", record.index, exc)
        record.error(type(exc).__name__)
    finally:
        record.ended_at = time.monotonic()


async def run_load(settings: LoadSettings, progress: Any = None) -> list[SessionRecord]:
    """Run every session to the end; ``progress(records, elapsed_s)`` is called about once a second."""
    if settings.transport not in ("webrtc", "ws"):
        raise ValueError(f"transport must be webrtc or ws, got {settings.transport!r}")
    records = [SessionRecord(index=i) for i in range(settings.sessions)]
    step = settings.ramp_s / max(1, settings.sessions - 1) if settings.sessions > 1 else 0.0
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        tasks = [asyncio.create_task(_run_one(settings, r, i * step, http)) for i, r in enumerate(records)]
        while not all(task.done() for task in tasks):
            await asyncio.wait(tasks, timeout=1.0)
            if progress is not None:
                progress(records, time.monotonic() - started)
        for task in tasks:
            task.result()
    return records
