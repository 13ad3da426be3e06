"""The page resumes its session when the server carrying it goes away, over both transports.

Real processes on loopback: a redis-server, two replicas sharing it and a router in front of them
(tests/cluster.py); Debian's Chromium loads the page from the router. The replica serving the page
is killed (SIGKILL) or stopped gracefully (SIGTERM: error{gpu_unavailable, retryable}, then close);
the page shows "reconnecting", resumes the session through the router on the other replica with its
latest resume token, and plays on at the next segment index, on the same transport, the same
<video> and the same controls. A refused resume ends with a notice and "Start over", without
retrying forever.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.cluster import Cluster, Process
from tests.web_client.pagekit import (
    ARTIFACTS,
    WEBRTC_ARGS,
    PageLog,
    open_page,
    page_state,
    wait_for_playback,
    wait_until,
)

pytestmark = pytest.mark.slow

TRANSPORT_LABEL = {"ws": "WebSocket · MSE", "webrtc": "WebRTC"}
START_TIMEOUT_MS = 20_000  # page load -> a few segments played
RESUME_TIMEOUT_MS = 20_000  # signal -> playing again (it takes under a second; see the printed figures)
SEGMENTS_BEFORE_DROP = 2  # segments the page has seen complete before its replica goes
DRAFT = "a draft prompt, typed and not sent"

# Records what the status line, the badge and the segment index showed, every change from now on,
# in order: events [kind, value] with kind "status", "badge" or "segment"; marks the <video>.
TRACE_JS = """() => {
    const $ = (id) => document.getElementById(id);
    const trace = { events: [], srcObject: $("video").srcObject };
    const watch = (kind, el, read) => {
        let last;
        const note = () => { const v = read(); if (v !== last) { last = v; trace.events.push([kind, v]); } };
        note();
        new MutationObserver(note).observe(el, { childList: true, characterData: true, subtree: true, attributes: true });
    };
    watch("status", $("status"), () => $("status").textContent);
    watch("badge", $("badge-text"), () => $("badge-text").textContent);
    watch("segment", $("segment"), () => $("segment").dataset.segmentIdx);
    $("video").dataset.marked = "before the drop";
    window.resumeTrace = trace;
}"""
# The segment indices the page showed after it started reconnecting.
SEGMENTS_AFTER_DROP_JS = """() => {
    const events = window.resumeTrace.events;
    const drop = events.findIndex(([kind, value]) => kind === "badge" && value === "reconnecting");
    if (drop < 0) return [];
    return events.slice(drop).filter(([kind, value]) => kind === "segment" && value !== "").map(([, value]) => Number(value));
}"""
# What the page's debug handle says about the session (tolerant of a page without the resume hooks).
SESSION_JS = """() => {
    const client = window.liveClient;
    const { app, model } = client;
    const s = app.session;
    const video = document.getElementById("video");
    const ranges = [];
    for (let i = 0; i < video.buffered.length; i++) ranges.push([video.buffered.start(i), video.buffered.end(i)]);
    return {
        n: s ? s.n : null,
        ended: s ? s.ended : null,
        kind: s ? s.kind : null,
        sessionId: s && s.resume ? s.resume.sessionId : null,
        hasToken: Boolean(s && s.resume && s.resume.token),
        reconnecting: client.reconnecting ? client.reconnecting() : null,
        resumes: client.resumes ? client.resumes() : [],
        segmentIdx: model.segmentIdx,
        lastCompleteIdx: model.lastCompleteIdx,
        currentTime: video.currentTime,
        buffered: ranges,
        sessions: app.sessions,
        sameVideo: video.dataset.marked === "before the drop",
        draft: document.getElementById("prompt").value,
        loop: document.getElementById("loop").checked,
    };
}"""
RESUMED_JS = "() => (window.liveClient.resumes ? window.liveClient.resumes() : []).length === 1"
RESTART_BUTTON = '#notices .notice button[data-action="restart"]'


@dataclass
class Replicas:
    """Two replicas sharing one Redis, and the router the page is loaded from."""

    a: Process
    b: Process
    router: Process
    redis_url: str

    def serving(self) -> tuple[Process, Process]:
        """(the replica holding the page's session, the other one), from each replica's /health."""
        counts = {replica.name: health(replica)["sessions"] for replica in (self.a, self.b)}
        assert sorted(counts.values()) == [0, 1], counts
        return (self.a, self.b) if counts["a"] == 1 else (self.b, self.a)


def health(process: Process) -> dict[str, Any]:
    with urllib.request.urlopen(f"{process.url}/health", timeout=2) as response:
        return dict(json.loads(response.read()))


@pytest.fixture
def replicas(fresh_redis_url: str, tmp_path: Path) -> Iterator[Replicas]:
    cluster = Cluster(tmp_path, fresh_redis_url)
    try:
        a = cluster.replica("a")
        b = cluster.replica("b")
        a.wait_ready()
        b.wait_ready()
        router = cluster.router("router", [a, b])
        router.wait_ready()
        yield Replicas(a, b, router, fresh_redis_url)
    finally:
        cluster.close()


async def session_state(page: Any) -> dict[str, Any]:
    return dict(await page.evaluate(SESSION_JS))


async def open_playing(launch: Any, replicas: Replicas, mode: str) -> tuple[Any, PageLog, dict[str, Any]]:
    """The page from the router (``mode``: ?transport= value, or "auto" for none), playing a few
    segments in and holding a resume token; a draft in the prompt box and looping switched on."""
    browser = await launch() if mode == "ws" else await launch(*WEBRTC_ARGS)
    query = "" if mode == "auto" else f"?transport={mode}"
    page, log = await open_page(browser, f"{replicas.router.url}/{query}")
    await wait_for_playback(page, log, 1.0, timeout_ms=START_TIMEOUT_MS)
    await wait_until(
        page,
        log,
        "(n) => { const c = window.liveClient; return c.app.session && c.app.session.resume && c.model.lastCompleteIdx >= n; }",
        SEGMENTS_BEFORE_DROP,
        timeout_ms=START_TIMEOUT_MS,
    )
    await page.fill("#prompt", DRAFT)
    await page.check("#loop")
    before = await session_state(page)
    assert before["hasToken"] and before["kind"] == ("webrtc" if mode == "auto" else mode), before
    await page.evaluate(TRACE_JS)
    return page, log, before


async def wait_resumed(page: Any, log: PageLog, kind: str, dropped_at: float, before: dict[str, Any]) -> dict[str, Any]:
    """Waits for the page to play the resumed stream; returns the session state then, with timings."""
    # Resumed: session_info from the new replica arrived.
    await wait_until(page, log, RESUMED_JS, timeout_ms=RESUME_TIMEOUT_MS)
    resumed_s = time.monotonic() - dropped_at
    # A segment of the resumed stream started on the page, which says it is live again.
    await wait_until(
        page,
        log,
        f"() => ({SEGMENTS_AFTER_DROP_JS})().length > 0 && document.getElementById('badge-text').textContent.startsWith('live')",
        timeout_ms=RESUME_TIMEOUT_MS,
    )
    if kind == "ws":
        # The playhead moves into media the new replica sent, on the same timeline: past what was
        # buffered when the replica went.
        edge = max(end for _, end in before["buffered"])
        await wait_until(
            page,
            log,
            "(t) => document.getElementById('video').currentTime > t + 0.1",
            edge,
            timeout_ms=RESUME_TIMEOUT_MS,
        )
    else:
        # The new peer connection's stream plays on the same <video>.
        await wait_until(
            page,
            log,
            "() => { const v = document.getElementById('video'); return v.srcObject !== window.resumeTrace.srcObject"
            " && v.srcObject !== null && v.readyState >= 2 && v.currentTime > 0; }",
            timeout_ms=RESUME_TIMEOUT_MS,
        )
    playing_s = time.monotonic() - dropped_at
    state = await session_state(page)
    state["resumed_s"], state["playing_s"] = resumed_s, playing_s
    return state


async def check_resumed(
    page: Any, log: PageLog, kind: str, how: str, before: dict[str, Any], after: dict[str, Any], survivor: Process
) -> None:
    trace = await page.evaluate("() => window.resumeTrace.events")
    # It said so while it reconnected.
    assert ["badge", "reconnecting"] in trace, trace
    assert any(k == "status" and v.startswith("reconnecting") for k, v in trace), trace
    # The same session on the same transport, the same <video> and controls.
    assert after["n"] == before["n"] == 1 and after["sessions"] == 1, after
    assert after["kind"] == kind and after["sessionId"] == before["sessionId"], (before, after)
    assert after["resumes"][0]["kind"] == kind, after
    assert after["sameVideo"] and after["draft"] == DRAFT and after["loop"], after
    # Segment indices go on, not from 0. After a kill the new replica goes on past the last segment
    # whose state was stored (at least the last the page saw complete); after a graceful stop at the
    # first one the page had no frame of. At most one past the one the page saw start.
    new = await page.evaluate(SEGMENTS_AFTER_DROP_JS)
    lowest = before["lastCompleteIdx"] + (1 if how == "kill" else 0)
    assert lowest <= new[0] <= before["segmentIdx"] + 1, (before, trace)
    assert new == sorted(new), trace
    # The session lives on the other replica now.
    assert health(survivor)["sessions"] == 1
    # The status panel and the overlay say where it stands.
    state = await page_state(page)
    label = TRANSPORT_LABEL[kind]
    assert state["transport"] == kind and state["transportText"] == f"{label} (resumed)", state
    assert state["statusState"] == "ok" and state["status"] == f"streaming over {label}", state
    assert state["badge"] == f"live · {label}", state
    assert state["notices"] == [], state
    assert int(state["segmentIdx"]) >= new[0], state
    await wait_until(
        page, log, "() => /fps\\s*[1-9]\\d*/.test(document.getElementById('stats').textContent)", timeout_ms=5000
    )
    # The path row: "tcp" for the WebSocket; the new peer connection's candidate type for WebRTC.
    expected_path = "tcp" if kind == "ws" else "host|prflx|srflx"
    await wait_until(
        page, log, "(p) => new RegExp(`^(${p})$`).test(document.getElementById('stat-path').textContent)", expected_path
    )
    # The video keeps playing.
    await wait_until(
        page,
        log,
        "(t) => document.getElementById('video').currentTime > t + 0.5",
        state["currentTime"],
        timeout_ms=10_000,
    )
    if kind == "ws":
        # One timeline: the resumed media continues what was buffered, with no gap to stall on.
        final = await session_state(page)
        assert final["currentTime"] > before["currentTime"], (before, final)
        assert len(final["buffered"]) == 1 and final["buffered"][0][0] <= before["buffered"][-1][1], (before, final)
    assert log.page_errors == [], str(log)


async def drop_and_resume(launch: Any, replicas: Replicas, mode: str, how: str) -> None:
    kind = "webrtc" if mode == "auto" else mode
    page, log, before = await open_playing(launch, replicas, mode)
    serving, survivor = replicas.serving()
    before = await session_state(page)
    dropped_at = time.monotonic()
    if how == "kill":
        serving.kill()
    else:
        code = await asyncio.to_thread(serving.terminate)
        assert code == 0, serving.log_tail()
    after = await wait_resumed(page, log, kind, dropped_at, before)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"page_resumed_{mode}_{how}.png"))
    await check_resumed(page, log, kind, how, before, after, survivor)
    resume = after["resumes"][0]
    print(
        f"\n[{mode}, {how}] segment {before['segmentIdx']} -> {after['segmentIdx']}; "
        f"the page noticed the drop and had the session back {resume['ms']} ms later "
        f"({resume['attempts']} attempt(s); {resume['reason']}); signal -> resumed "
        f"{after['resumed_s'] * 1000:.0f} ms, -> playing the resumed stream {after['playing_s'] * 1000:.0f} ms"
    )
    await page.close()


@pytest.mark.parametrize("mode", ["ws", "webrtc", "auto"])
async def test_the_page_resumes_on_another_replica_when_its_replica_is_killed(
    replicas: Replicas, launch: Any, mode: str
) -> None:
    # "auto": WebRTC chosen by itself; a drop mid-stream resumes over WebRTC, no fallback to the WebSocket.
    await drop_and_resume(launch, replicas, mode, "kill")


@pytest.mark.parametrize("mode", ["ws", "webrtc"])
async def test_the_page_resumes_when_its_replica_shuts_down_gracefully(
    replicas: Replicas, launch: Any, mode: str
) -> None:
    await drop_and_resume(launch, replicas, mode, "terminate")


async def wait_refused(page: Any, log: PageLog) -> None:
    """The page says the session could not be resumed, offers Start over, and stops trying."""
    await wait_until(
        page, log, f"() => document.querySelector('{RESTART_BUTTON}') !== null", timeout_ms=RESUME_TIMEOUT_MS
    )
    state = await page_state(page)
    trace = await page.evaluate("() => window.resumeTrace.events")
    assert ["badge", "reconnecting"] in trace, trace
    assert state["statusState"] == "error" and state["badge"] == "disconnected", state
    assert len(state["notices"]) == 1 and "The session could not be resumed" in state["notices"][0], state
    assert "resume_session" in state["notices"][0], state
    # No retry loop: a second later nothing has changed.
    await asyncio.sleep(2.0)
    later = await session_state(page)
    assert later["ended"] and not later["reconnecting"] and later["resumes"] == [], later
    assert (await page_state(page))["notices"] == state["notices"]


async def start_over(page: Any, log: PageLog) -> None:
    await page.click(RESTART_BUTTON)
    await wait_until(
        page,
        log,
        "() => window.liveClient.app.sessions === 2 && window.liveClient.model.segmentIdx !== null",
        timeout_ms=START_TIMEOUT_MS,
    )
    state = await page_state(page)
    assert state["statusState"] == "ok" and state["notices"] == [], state


async def test_a_refused_resume_token_ends_with_start_over_not_a_retry_loop(replicas: Replicas, launch: Any) -> None:
    # WebSocket: the replica answers error{invalid_message} naming resume_session, then close 1003.
    page, log, _ = await open_playing(launch, replicas, "ws")
    serving, _ = replicas.serving()
    # A token of the right shape that is not this session's.
    await page.evaluate("() => { window.liveClient.app.session.resume.token = 'A'.repeat(43); }")
    serving.kill()
    await wait_refused(page, log)
    await start_over(page, log)
    await page.close()


async def test_a_session_gone_from_the_store_is_refused_over_webrtc(replicas: Replicas, launch: Any) -> None:
    # WebRTC: an offer that resumes a session with no record left is answered 400 invalid_message.
    page, log, _ = await open_playing(launch, replicas, "webrtc")
    serving, _ = replicas.serving()
    serving.kill()
    store = redis.Redis.from_url(replicas.redis_url)
    try:
        for key in store.scan_iter(match="*resume:*"):
            store.delete(key)
    finally:
        store.close()
    await wait_refused(page, log)
    await start_over(page, log)
    await page.close()


async def test_a_paused_session_is_not_taken_for_dropped_and_stays_paused_when_resumed(
    replicas: Replicas, launch: Any
) -> None:
    # While paused no video flows over WebRTC: the page asks the session's server (through the
    # router) whether it still has the session, and only resumes when it does not.
    page, log, _ = await open_playing(launch, replicas, "webrtc")
    await page.check("#pause")
    await wait_until(page, log, "() => document.getElementById('status').textContent.startsWith('paused')")
    await asyncio.sleep(4.5)  # past two of its checks
    state = await session_state(page)
    trace = await page.evaluate("() => window.resumeTrace.events")
    assert ["badge", "reconnecting"] not in trace and state["resumes"] == [] and not state["reconnecting"], trace
    serving, survivor = replicas.serving()
    before = await session_state(page)
    serving.kill()
    await wait_until(page, log, RESUMED_JS, timeout_ms=RESUME_TIMEOUT_MS)
    assert health(survivor)["sessions"] == 1
    # Still paused: no new segment, and the page says so.
    await asyncio.sleep(2.0)
    state = await page_state(page)
    assert await page.is_checked("#pause"), state
    assert state["status"].startswith("paused") and state["badge"] == "paused · WebRTC", state
    assert state["transportText"] == "WebRTC (resumed)", state
    assert await page.evaluate(SEGMENTS_AFTER_DROP_JS) == [], state
    # Unpaused, it goes on from where it was.
    await page.uncheck("#pause")
    await wait_until(page, log, f"() => ({SEGMENTS_AFTER_DROP_JS})().length > 0", timeout_ms=RESUME_TIMEOUT_MS)
    new = await page.evaluate(SEGMENTS_AFTER_DROP_JS)
    assert before["lastCompleteIdx"] + 1 <= new[0] <= before["segmentIdx"] + 1, (before, new)
    await wait_until(
        page,
        log,
        "() => { const v = document.getElementById('video'); return v.srcObject !== window.resumeTrace.srcObject && v.currentTime > 0.5; }",
        timeout_ms=RESUME_TIMEOUT_MS,
    )
    await page.close()
