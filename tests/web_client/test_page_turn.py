"""The page beyond a local network: ICE servers with TURN, relay-only, the ICE path, a slow answer,
and ManagedMediaSource (iOS Safari), in Debian's Chromium against a real server and a real coturn.

The page fetches ``/v1/webrtc/ice-servers`` afresh for every peer connection; ``?relay=1`` makes it
relay-only (its candidates are then all TURN allocations, so video that plays came through coturn);
the stats overlay names the selected candidate pair's local type; the fallback budget starts when
the answer arrives, so a server slow to gather does not push the page onto the WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import LOOPBACK, RunningServer, make_config
from tests.turn_fixture import TurnServer
from tests.web_client.pagekit import (
    HOST_CANDIDATE_PERMISSIONS,
    SAMPLING,
    SEGMENT_S,
    WEBRTC_ARGS,
    new_page,
    page_state,
    wait_for_playback,
    wait_until,
)

pytestmark = pytest.mark.slow

SECRET_ENV = "RTCVS_TEST_PAGE_TURN_SECRET"
ICE_SERVERS_PATH = "/v1/webrtc/ice-servers"
SLOW_GATHER_S = 7.0  # more than the page's 6 s connect budget, well under its offer bound


@pytest.fixture
def turn(turn_server: TurnServer, monkeypatch: pytest.MonkeyPatch) -> TurnServer:
    monkeypatch.setenv(SECRET_ENV, turn_server.secret)
    return turn_server


def turn_section(url: str, **options: Any) -> dict[str, Any]:
    return {"urls": [url], "secret_env": SECRET_ENV, "ttl_seconds": 600, **options}


def record_ice_servers(page: Any) -> list[Any]:
    """The responses of every ``GET /v1/webrtc/ice-servers`` the page makes, in order."""
    responses: list[Any] = []
    page.on("response", lambda r: responses.append(r) if r.url.endswith(ICE_SERVERS_PATH) else None)
    return responses


async def turn_usernames(responses: list[Any]) -> list[str]:
    usernames = []
    for response in responses:
        assert response.status == 200, response.status
        body = await response.json()
        assert body["ttl_seconds"] == 600, body
        turn = [s for s in body["ice_servers"] if any(u.startswith("turn:") for u in s["urls"])]
        usernames.append(turn[0]["username"])
    return usernames


async def selected_pair(page: Any) -> dict[str, Any]:
    """The candidate pair Chromium selected, straight from getStats (not from the overlay)."""
    return dict(
        await page.evaluate(
            """async () => {
                const report = await window.peerConnection.getStats();
                let pair = null;
                report.forEach((e) => { if (e.type === "transport" && e.selectedCandidatePairId) pair = report.get(e.selectedCandidatePairId); });
                if (!pair) return {};
                const local = report.get(pair.localCandidateId), remote = report.get(pair.remoteCandidateId);
                return {local: local.candidateType, remote: remote.candidateType, localAddress: local.address,
                        relayProtocol: local.relayProtocol || null, bytesReceived: pair.bytesReceived};
            }"""
        )
    )


async def overlay_path(page: Any) -> dict[str, str]:
    return dict(
        await page.evaluate(
            """() => { const el = document.getElementById("stat-path");
                       return {text: el.textContent, local: el.dataset.local, remote: el.dataset.remote, title: el.title}; }"""
        )
    )


async def frames_advance(page: Any, log: Any) -> None:
    counted = await page.evaluate("() => window.liveClient.frames()")
    await wait_until(page, log, "(n) => window.liveClient.frames() >= n", counted + SAMPLING.fps // 2)


# -- pure logic, in the browser --------------------------------------------------------------------

PURE_JS = """async () => {
    const s = await import("/client/stats.js");
    const w = await import("/client/webrtc_player.js");
    const m = await import("/client/ws_player.js");
    const stats = (entries) => new Map(entries.map((e) => [e.id, e]));
    const local = (id, candidateType, extra = {}) => ({id, type: "local-candidate", candidateType, protocol: "udp", ...extra});
    const remote = (id, candidateType) => ({id, type: "remote-candidate", candidateType});
    const pair = (id, l, r, extra = {}) => ({id, type: "candidate-pair", localCandidateId: l, remoteCandidateId: r, ...extra});
    class Fake {}
    return {
        // Chromium/Safari: the transport names the pair; an older nominated pair is not it.
        viaTransport: s.selectedCandidatePair(stats([
            {id: "T", type: "transport", selectedCandidatePairId: "P2"},
            pair("P1", "L1", "R1", {nominated: true, state: "succeeded"}),
            pair("P2", "L2", "R1", {currentRoundTripTime: 0.012}),
            local("L1", "host"), local("L2", "relay", {relayProtocol: "udp"}), remote("R1", "host"),
        ])),
        // Firefox: no selectedCandidatePairId, the pair says `selected`.
        viaSelected: s.selectedCandidatePair(stats([
            {id: "T", type: "transport"}, pair("P1", "L1", "R1", {selected: true}), local("L1", "srflx"), remote("R1", "prflx"),
        ])),
        viaNominated: s.selectedCandidatePair(stats([
            pair("P0", "L1", "R1", {nominated: true, state: "in-progress"}),
            pair("P1", "L1", "R1", {nominated: true, state: "succeeded"}), local("L1", "host"), remote("R1", "host"),
        ])),
        none: s.selectedCandidatePair(stats([{id: "T", type: "transport"}, pair("P1", "L1", "R1", {state: "waiting"})])),
        describe: s.describePath({local: "relay", remote: "host", protocol: "udp", relayProtocol: "tcp"}),
        turn: [
            w.hasTurnServer([{urls: ["stun:s.example"]}, {urls: "turn:t.example:3478?transport=udp"}]),
            w.hasTurnServer([{urls: ["turns:t.example:443"]}]),
            w.hasTurnServer([{urls: ["stun:s.example"]}]),
            w.hasTurnServer([]),
        ],
        impl: [
            m.mediaSourceImpl({MediaSource: Fake, ManagedMediaSource: Fake}).managed,
            m.mediaSourceImpl({ManagedMediaSource: Fake}).managed,
            m.mediaSourceImpl({}),
        ],
        timeouts: {connect: w.CONNECT_TIMEOUT_MS, offer: w.OFFER_TIMEOUT_MS},
    };
}"""


async def test_path_and_ice_server_helpers(start_server: Callable[..., Any], launch: Callable[..., Any]) -> None:
    server: RunningServer = await start_server(make_config())
    browser = await launch()
    page, log = await new_page(browser)
    await page.goto(f"{server.url}/healthz")  # any page of the origin; no session is opened
    result = await page.evaluate(PURE_JS)
    assert result["viaTransport"] == {
        "local": "relay",
        "remote": "host",
        "protocol": "udp",
        "relayProtocol": "udp",
        "rttS": 0.012,
    }
    assert result["viaSelected"]["local"] == "srflx" and result["viaSelected"]["remote"] == "prflx", result
    assert result["viaNominated"]["local"] == "host", result
    assert result["none"] is None
    assert "through a TURN server (tcp to it)" in result["describe"], result["describe"]
    assert result["turn"] == [True, True, False, False]
    assert result["impl"] == [False, True, None]  # MediaSource first; ManagedMediaSource only without it
    # The offer's own bound is above the server's longest gathering (webrtc.gather_timeout_seconds <= 30).
    assert result["timeouts"] == {"connect": 6000, "offer": 40000}
    assert log.page_errors == []
    await page.close()


# -- TURN, relay-only ------------------------------------------------------------------------------


async def test_relay_only_page_plays_through_coturn_with_fresh_credentials_per_connection(
    turn: TurnServer, start_server: Callable[..., Any], launch: Callable[..., Any]
) -> None:
    server: RunningServer = await start_server(make_config(webrtc={"turn": turn_section(turn.url)}))
    browser = await launch(*WEBRTC_ARGS)
    page, log = await new_page(browser)
    responses = record_ice_servers(page)
    await page.goto(f"{server.url}/?relay=1")

    state = await wait_for_playback(page, log, SEGMENT_S)
    assert state["transport"] == "webrtc" and state["statusState"] == "ok", f"{state}\n{log}"
    assert state["decodedFrames"] >= SAMPLING.fps // 2, state
    await frames_advance(page, log)
    config = await page.evaluate("() => window.peerConnection.getConfiguration().iceTransportPolicy")
    assert config == "relay"
    sdp = await page.evaluate("() => window.peerConnection.localDescription.sdp")
    candidates = [line for line in sdp.splitlines() if line.startswith("a=candidate")]
    assert candidates and all(" typ relay " in line for line in candidates), candidates

    # The overlay says relay, as getStats does.
    await wait_until(page, log, "() => document.getElementById('stat-path').dataset.local === 'relay'")
    shown = await overlay_path(page)
    assert shown["text"] == "relay" and shown["remote"] == "host", shown
    assert "through a TURN server" in shown["title"], shown
    pair = await selected_pair(page)
    assert pair["local"] == "relay" and pair["localAddress"] == LOOPBACK and pair["bytesReceived"] > 0, pair

    # coturn allocated for the username the endpoint handed to this page.
    (first,) = await turn_usernames(responses)
    assert f"user <{first}>: incoming packet ALLOCATE processed, success" in turn.log_text()

    # A new peer connection (Restart) fetches new credentials; the old ones are not reused.
    await page.click("#restart")
    await wait_until(page, log, "() => window.liveClient.app.sessions === 2 && window.liveClient.app.session.connected")
    await frames_advance(page, log)
    await wait_until(page, log, "() => document.getElementById('stat-path').dataset.local === 'relay'")
    first_again, second = await turn_usernames(responses)
    assert first_again == first and second != first
    assert f"user <{second}>: incoming packet ALLOCATE processed, success" in turn.log_text()
    assert log.page_errors == [], str(log)
    await page.close()


async def test_without_relay_the_overlay_shows_a_host_path(
    turn: TurnServer, start_server: Callable[..., Any], launch: Callable[..., Any]
) -> None:
    # A TURN server is offered, but on a local network the direct (host) pair wins. (The permission
    # lets Chromium gather on loopback at all: see HOST_CANDIDATE_PERMISSIONS.)
    server: RunningServer = await start_server(make_config(webrtc={"turn": turn_section(turn.url)}))
    browser = await launch(*WEBRTC_ARGS)
    page, log = await new_page(browser, permissions=HOST_CANDIDATE_PERMISSIONS)
    await page.goto(f"{server.url}/")
    state = await wait_for_playback(page, log, SEGMENT_S)
    assert state["transport"] == "webrtc", f"{state}\n{log}"
    await wait_until(page, log, "() => document.getElementById('stat-path').dataset.local === 'host'")
    shown = await overlay_path(page)
    assert shown["text"] == "host" and shown["remote"] == "host", shown
    assert (await selected_pair(page))["local"] == "host"
    assert await page.evaluate("() => window.peerConnection.getConfiguration().iceTransportPolicy") == "all"
    assert log.page_errors == [], str(log)
    await page.close()


async def test_ice_servers_refused_with_5xx_plays_direct_and_relay_only_says_why_it_cannot(
    start_server: Callable[..., Any], launch: Callable[..., Any]
) -> None:
    server: RunningServer = await start_server(make_config())
    browser = await launch(*WEBRTC_ARGS)

    async def broken(route: Any) -> None:
        error = {"code": "internal_error", "message": "broken by the test", "retryable": True}
        await route.fulfill(status=500, content_type="application/json", body=json.dumps({"error": error}))

    # Without relay: no STUN/TURN, but host candidates still connect on this network.
    page, log = await new_page(browser)
    await page.route(f"**{ICE_SERVERS_PATH}", broken)
    await page.goto(f"{server.url}/")
    state = await wait_for_playback(page, log, SEGMENT_S)
    assert state["transport"] == "webrtc" and state["statusState"] == "ok", f"{state}\n{log}"
    assert any("ICE servers refused (HTTP 500" in line for line in log.console), str(log)
    await page.close()

    # Relay-only cannot work without a TURN server: the page says so and falls back at once.
    page, log = await new_page(browser)
    await page.route(f"**{ICE_SERVERS_PATH}", broken)
    started = time.monotonic()
    await page.goto(f"{server.url}/?relay=1")
    state = await wait_for_playback(page, log, SEGMENT_S)
    assert state["transport"] == "ws", f"{state}\n{log}"
    assert "relay-only (?relay=1) needs a TURN server" in state["transportText"], state
    assert time.monotonic() - started < 5.0, "the fallback should not wait for a connect timeout"
    await page.close()


# -- a slow answer ---------------------------------------------------------------------------------


@pytest.fixture
def silent_udp() -> Iterator[int]:
    """A UDP port on loopback that takes datagrams and never answers (a TURN server gone silent)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


async def test_a_slow_answer_does_not_trip_the_fallback(
    silent_udp: int,
    start_server: Callable[..., Any],
    launch: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server gathers relay candidates from a TURN server that never answers: its answer comes
    # only after webrtc.gather_timeout_seconds, more than the page's 6 s connect budget.
    monkeypatch.setenv(SECRET_ENV, "unused-secret")
    dead_turn = f"turn:{LOOPBACK}:{silent_udp}?transport=udp"
    # The server's own connect timeout runs from the offer's arrival, gathering included: give it
    # room, so that only the page's budget is under test.
    config = make_config(
        webrtc={
            "turn": turn_section(dead_turn, server_side=True),
            "gather_timeout_seconds": SLOW_GATHER_S,
            "connect_timeout_seconds": SLOW_GATHER_S + 10,
        }
    )
    server: RunningServer = await start_server(config)
    browser = await launch(*WEBRTC_ARGS)
    page, log = await new_page(browser)
    answers: list[float] = []
    page.on("response", lambda r: answers.append(time.monotonic()) if r.url.endswith("/v1/webrtc/offer") else None)
    sent: list[float] = []
    page.on("request", lambda r: sent.append(time.monotonic()) if r.url.endswith("/v1/webrtc/offer") else None)
    await page.goto(f"{server.url}/")

    state = await wait_for_playback(page, log, SEGMENT_S, timeout_ms=int((SLOW_GATHER_S + 10) * 1000))
    assert sent and answers, f"{state}\n{log}"
    assert answers[0] - sent[0] >= SLOW_GATHER_S - 0.5, "the answer was not slow; the test proves nothing"
    assert state["transport"] == "webrtc", f"{state}\n{log}"
    assert state["statusState"] == "ok" and state["transportText"] == "WebRTC", state
    await frames_advance(page, log)
    # Still on WebRTC a while later, never having fallen back.
    await asyncio.sleep(1.0)
    state = await page_state(page)
    assert state["transport"] == "webrtc" and await page.evaluate("() => window.liveClient.app.sessions") == 1, state
    assert not any("falling back" in line for line in log.console), str(log)
    await page.close()


HUNG_OFFER_JS = """async () => {
    const w = await import("/client/webrtc_player.js");
    const events = [];
    const started = performance.now();
    const transport = new w.WebRtcTransport({
        video: document.createElement("video"), init: {}, onMessage: () => {},
        onEvent: (type, detail) => events.push({type, ...detail, atMs: performance.now() - started}),
        connectTimeoutMs: 300, offerTimeoutMs: 1500,
    });
    await transport.start();
    await new Promise((resolve) => setTimeout(resolve, 500));  // past the connect budget, had it started
    return events.filter((e) => e.type === "failed");
}"""


async def test_a_hung_offer_falls_back_after_its_own_bound_not_the_connect_budget(
    start_server: Callable[..., Any], launch: Callable[..., Any]
) -> None:
    server: RunningServer = await start_server(make_config())
    browser = await launch(*WEBRTC_ARGS)
    page, log = await new_page(browser)
    hung: list[Any] = []
    await page.route("**/v1/webrtc/offer", lambda route: hung.append(route))  # never answered
    await page.goto(f"{server.url}/healthz")
    failures = await page.evaluate(HUNG_OFFER_JS)
    assert hung, "the offer was never sent"
    assert len(failures) == 1, failures
    (failure,) = failures
    assert failure["text"] == "the server did not answer the offer within 2 s", failure
    assert failure["fallback"] is True and failure["atMs"] >= 1500, failure
    assert log.page_errors == [], str(log)
    await page.close()


# -- ManagedMediaSource ----------------------------------------------------------------------------

# iOS Safari has ManagedMediaSource and no MediaSource. Chromium has no ManagedMediaSource (156
# neither ships nor flags one), so this stands in: MediaSource under the other name, without the
# original, with `streaming` and the startstreaming/endstreaming events, and a record of what the
# page asked of it.
MANAGED_MEDIA_SOURCE_JS = """(() => {
    const Original = window.MediaSource;
    window.mmsLog = {created: 0, remotePlaybackDisabledAtCreation: null};
    class ManagedMediaSource extends Original {
        constructor() {
            super();
            window.mmsLog.created += 1;
            const video = document.getElementById("video");
            window.mmsLog.remotePlaybackDisabledAtCreation = video ? video.disableRemotePlayback : null;
            this.streaming = false;
            this.addEventListener("sourceopen", () => setTimeout(() => this.setStreaming(true), 0));
        }
        setStreaming(on) {
            this.streaming = on;
            this.dispatchEvent(new Event(on ? "startstreaming" : "endstreaming"));
        }
    }
    delete window.MediaSource;
    window.ManagedMediaSource = ManagedMediaSource;
})();"""


async def test_ws_plays_through_managed_media_source_where_media_source_is_missing(
    start_server: Callable[..., Any], launch: Callable[..., Any]
) -> None:
    server: RunningServer = await start_server(make_config())
    browser = await launch()
    page, log = await new_page(browser)
    await page.add_init_script(MANAGED_MEDIA_SOURCE_JS)
    await page.goto(f"{server.url}/?transport=ws")

    state = await wait_for_playback(page, log, 2 * SEGMENT_S)
    assert state["transport"] == "ws" and state["error"] is None, f"{state}\n{log}"
    assert state["decodedFrames"] >= SAMPLING.num_frames, state
    used = await page.evaluate(
        """() => ({noMediaSource: typeof window.MediaSource === "undefined", log: window.mmsLog,
                   managed: wsPlayer.managed, remote: document.getElementById("video").disableRemotePlayback,
                   streaming: wsPlayer.streaming, held: wsPlayer.heldAppends})"""
    )
    assert used["noMediaSource"] and used["managed"] and used["remote"], used
    assert used["log"] == {"created": 1, "remotePlaybackDisabledAtCreation": True}, used
    assert used["streaming"] is True and used["held"] == 0, used

    # endstreaming while playing: the stream goes on (appends wait only while over a second is
    # buffered ahead, which this server's pacing rarely reaches), so a hint never starves the playhead.
    await page.evaluate("() => wsPlayer.mediaSource.setStreaming(false)")
    start = await page.evaluate("() => document.getElementById('video').currentTime")
    await wait_for_playback(page, log, start + 3 * SEGMENT_S, timeout_ms=int(6 * SEGMENT_S * 1000))
    assert not await page.evaluate("() => wsPlayer.failed")

    # With the video paused, segments keep coming: they wait in the queue instead of the buffer.
    await page.evaluate("() => document.getElementById('video').pause()")
    await asyncio.sleep(3 * SEGMENT_S)
    held = await page.evaluate(
        "() => ({held: wsPlayer.heldAppends, queued: wsPlayer.queue.length, ahead: wsPlayer.bufferAhead()})"
    )
    assert held["held"] > 0 and held["queued"] >= 2, held
    assert held["ahead"] < 3 * SEGMENT_S, held  # not three more segments buffered
    # startstreaming: the queue drains; playing again, the page keeps near the live edge.
    appended = await page.evaluate("() => wsPlayer.appended")
    await page.evaluate("() => wsPlayer.mediaSource.setStreaming(true)")
    await wait_until(page, log, "(n) => wsPlayer.appended > n && wsPlayer.queue.length === 0", appended)
    await page.evaluate("() => document.getElementById('video').play()")
    await frames_advance(page, log)
    assert log.page_errors == [], str(log)
    await page.close()
