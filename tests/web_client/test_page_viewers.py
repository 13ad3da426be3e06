"""Viewers in Debian's Chromium against a real server: the owner page's Share link and the viewer page.

The owner page shows the watch link (``/watch?session=<id>&token=<watch_token>``) once session_info
brings a watch token, and a new one after a new session_info. The viewer page (watch.html) plays a
session over WHEP and, when WHEP fails, over the fMP4 watch socket (MSE), with frames decoded; it
says what a bad link (401), an unknown session (404) and a full session (503) mean, and when the
stream ends. The owner is a Python client where the page is not under test (cheaper).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from rtc_server.app import REGISTRY
from rtc_server.clients.watch_client import WatchClient
from rtc_server.clients.webrtc_client import WebRTCClient
from rtc_server.clients.ws_client import WebSocketClient
from rtc_server.viewers.whep import WHEP
from tests.conftest import RunningServer, make_config
from tests.web_client.pagekit import (
    ARTIFACTS,
    SAMPLING,
    WEBRTC_ARGS,
    PageLog,
    new_page,
    open_page,
    playwright_api,
    unlabelled_controls,
    wait_until,
)

pytestmark = pytest.mark.slow

INIT = {"curated_prompts": ["a red fox running through fresh snow"]}
PLAY_TIMEOUT_MS = 20_000  # page load -> WHEP tried, a segment boundary, frames shown


async def viewer_state(page: Any) -> dict[str, Any]:
    return dict(
        await page.evaluate(
            """() => {
                const $ = (id) => document.getElementById(id);
                const video = $("video");
                const c = window.watchClient;
                return {
                    state: c ? c.state() : null,
                    path: c ? c.path() : null,
                    frames: c ? c.frames() : null,
                    currentTime: video.currentTime,
                    decodedFrames: video.getVideoPlaybackQuality().totalVideoFrames,
                    width: video.videoWidth,
                    height: video.videoHeight,
                    muted: video.muted,
                    status: $("status").textContent,
                    statusState: $("status").dataset.state,
                    badge: $("badge-text").textContent,
                    transport: $("transport").dataset.transport,
                    transportText: $("transport").textContent,
                    segment: $("segment").textContent,
                    stats: $("stats").textContent,
                    statPath: $("stat-path").textContent,
                    soundShown: !$("sound").hidden,
                    soundText: $("sound-text").textContent,
                    notices: [...document.querySelectorAll("#notices .notice")].map((n) => ({reason: n.dataset.reason, text: n.textContent})),
                };
            }"""
        )
    )


async def wait_viewer(
    page: Any, log: PageLog, expression: str, arg: Any = None, timeout_ms: int = PLAY_TIMEOUT_MS
) -> None:
    try:
        await page.wait_for_function(expression, arg=arg, timeout=timeout_ms)
    except playwright_api.TimeoutError:
        pytest.fail(f"timed out waiting for {expression!r}: {await viewer_state(page)}\n{log}")


async def assert_plays(page: Any, log: PageLog, path: str) -> dict[str, Any]:
    """The viewer page plays over `path`: frames presented (requestVideoFrameCallback) and time advancing."""
    await wait_viewer(
        page,
        log,
        "(p) => window.watchClient && window.watchClient.path() === p && window.watchClient.state() === 'playing'",
        path,
    )
    await wait_viewer(
        page,
        log,
        "(n) => window.watchClient.frames() >= n && document.getElementById('video').currentTime > 0.5",
        SAMPLING.fps,
    )
    before = await viewer_state(page)
    await asyncio.sleep(1.0)
    after = await viewer_state(page)
    assert after["frames"] >= before["frames"] + SAMPLING.fps // 3, (before, after, str(log))
    assert after["currentTime"] > before["currentTime"], (before, after)
    assert after["decodedFrames"] >= SAMPLING.fps, after
    assert (after["width"], after["height"]) == (SAMPLING.width, SAMPLING.height), after
    assert after["transport"] == path and after["state"] == "playing", after
    assert after["statusState"] == "ok" and after["status"].startswith("watching over"), after
    # The overlay: presented fps and a bitrate.
    await wait_viewer(
        page,
        log,
        "() => /fps\\s*\\d+/.test(document.getElementById('stats').textContent) && /rate\\s*\\d/.test(document.getElementById('stats').textContent)",
    )
    return after


@asynccontextmanager
async def owner(server: RunningServer) -> AsyncIterator[tuple[WebSocketClient, str, str]]:
    """A session owned by a Python WebSocket client: (client, session id, watch token)."""
    async with WebSocketClient(server.url, session_init=INIT) as client:
        await client.connect()
        info = await client.wait_for_event("session_info", timeout=20)
        yield client, info["session_id"], info["watch_token"]


def link(server: RunningServer, session_id: str, token: str, **extra: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"session": session_id, "token": token, **extra}.items())
    return f"{server.url}/watch?{query}"


async def test_owner_page_shares_a_watch_link_and_the_viewer_falls_back_to_fmp4(
    start_server: Callable[..., Any], launch: Callable[..., Any]
) -> None:
    server: RunningServer = await start_server(make_config())
    browser = await launch(*WEBRTC_ARGS)
    owner_page, owner_log = await new_page(browser, permissions=["clipboard-read", "clipboard-write"])
    await owner_page.goto(f"{server.url}/?transport=ws")

    # The Share control appears once session_info brought a watch token; it shows the link.
    await wait_until(
        owner_page, owner_log, "() => !document.getElementById('share').hidden", timeout_ms=PLAY_TIMEOUT_MS
    )
    assert await owner_page.get_attribute("#share-toggle", "aria-expanded") == "false"
    assert await owner_page.is_hidden("#share-panel")
    await owner_page.click("#share-toggle")
    assert await owner_page.get_attribute("#share-toggle", "aria-expanded") == "true"
    assert await owner_page.evaluate("() => document.activeElement.id") == "share-link"
    url = await owner_page.input_value("#share-link")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == server.url and parts.path == "/watch", url
    query = parse_qs(parts.query)
    session_id, token = query["session"][0], query["token"][0]
    assert session_id == await owner_page.evaluate("() => window.liveClient.app.session.resume.sessionId")
    controller = server.app[REGISTRY].get(session_id)
    assert controller is not None and controller.viewers is not None
    assert controller.viewers.token.matches(token), "the link carries the session's watch token"
    assert await owner_page.get_attribute("#share-link", "readonly") is not None
    await owner_page.click("#share-copy")
    await wait_until(owner_page, owner_log, "() => document.getElementById('share-copy').textContent === 'Copied'")
    assert await owner_page.evaluate("() => navigator.clipboard.readText()") == url
    ARTIFACTS.mkdir(exist_ok=True)
    await owner_page.screenshot(path=str(ARTIFACTS / "page_share.png"))

    # The viewer page from that link: WHEP refused (500 here), so the fMP4 watch socket plays it.
    viewer, log = await new_page(browser)
    whep_posts: list[str] = []

    async def refuse_whep(route: Any) -> None:
        whep_posts.append(route.request.method)
        body = {"error": {"code": "internal_error", "message": "refused by the test", "retryable": True}}
        await route.fulfill(status=500, content_type="application/json", body=json.dumps(body))

    await viewer.route("**/v1/sessions/*/whep", refuse_whep)
    await viewer.goto(url)
    state = await assert_plays(viewer, log, "fmp4")
    assert whep_posts == ["POST"], whep_posts
    assert state["transportText"] == "fMP4 · MSE (fallback: WHEP HTTP 500)", state
    assert state["statPath"] == "tcp", state
    await wait_viewer(viewer, log, "() => /buffer\\s*\\d+\\.\\d+ s/.test(document.getElementById('stats').textContent)")
    await wait_viewer(viewer, log, "() => document.getElementById('segment').textContent.startsWith('segment ')")
    assert state["muted"], "sound starts muted"
    if state["soundShown"]:
        assert state["soundText"] == "Unmute", state
        await viewer.click("#sound-toggle")
        assert not await viewer.evaluate("() => document.getElementById('video').muted")
    await viewer.screenshot(path=str(ARTIFACTS / "page_watch_fmp4.png"))
    assert await viewer.evaluate("() => document.querySelectorAll('#prompt, form').length") == 0, "no prompt box"
    assert await unlabelled_controls(viewer) == [] and await unlabelled_controls(owner_page) == []

    # A new session_info (a resumed session) brings a new token: the link follows it.
    await owner_page.evaluate(
        "([sid]) => window.liveClient.inject({type: 'session_info', session_id: sid, resume_token: 'r', watch_token: 'renewed-token'})",
        [session_id],
    )
    renewed = await owner_page.input_value("#share-link")
    assert parse_qs(urlsplit(renewed).query) == {"session": [session_id], "token": ["renewed-token"]}, renewed
    assert "new link" in (await owner_page.text_content("#share-hint") or "")
    # Stop: the session is over, and so is its link.
    await owner_page.click("#stop")
    await wait_until(owner_page, owner_log, "() => document.getElementById('share').hidden")
    assert await owner_page.input_value("#share-link") == ""
    assert owner_log.page_errors == [] and log.page_errors == [], f"{owner_log}\n{log}"


async def test_viewer_page_plays_over_whep(start_server: Callable[..., Any], launch: Callable[..., Any]) -> None:
    server: RunningServer = await start_server(make_config())
    browser = await launch(*WEBRTC_ARGS)
    # WHEP viewers get the packets of the owner's WebRTC stream: the owner is on WebRTC.
    client = WebRTCClient(server.url, session_init=INIT)
    try:
        session_id = await client.connect()
        token = (await client.wait_for_event("session_info", timeout=20))["watch_token"]
        page, log = await open_page(browser, link(server, session_id, token))
        state = await assert_plays(page, log, "whep")
        assert state["transportText"] == "WHEP · WebRTC" and state["badge"] == "live · WHEP", state
        await wait_viewer(page, log, "() => document.getElementById('stat-path').dataset.local !== ''")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "page_watch_whep.png"))

        # Leaving the page (pagehide) ends the viewer: DELETE, with keepalive, on the resource the answer named.
        async with page.expect_response(lambda r: r.request.method == "DELETE") as deleted:
            await page.evaluate("() => window.dispatchEvent(new PageTransitionEvent('pagehide'))")
        response = await deleted.value
        assert re.search(rf"/v1/sessions/{session_id}/whep/[^/]+$", response.url) and response.status == 200, response
        assert await page.evaluate("() => window.peerConnection.connectionState") == "closed"

        # Again, then the session ends (DELETE by its owner): the viewer says so.
        await page.goto(link(server, session_id, token))
        await assert_plays(page, log, "whep")
        async with aiohttp.ClientSession() as http, http.delete(f"{server.url}/v1/sessions/{session_id}") as response:
            assert response.status == 200, await response.text()
        await wait_viewer(page, log, "() => window.watchClient.state() === 'ended'")
    finally:
        await client.close()
    state = await viewer_state(page)
    assert state["status"] == "the stream has ended" and state["badge"] == "ended", state
    assert [n["reason"] for n in state["notices"]] == ["ended"], state
    assert log.page_errors == [], str(log)


async def test_viewer_page_explains_refusals_and_the_end_of_the_stream(
    start_server: Callable[..., Any], launch: Callable[..., Any]
) -> None:
    server: RunningServer = await start_server(make_config(streaming={"viewers": {"max_per_session": 1}}))
    browser = await launch(*WEBRTC_ARGS)
    async with owner(server) as (client, session_id, token):
        # 401: a token that is not the session's (over WHEP or, without it, the watch socket).
        page, log = await open_page(browser, link(server, session_id, "not-the-token"))
        await wait_viewer(page, log, "() => window.watchClient.state() === 'refused'")
        state = await viewer_state(page)
        assert [n["reason"] for n in state["notices"]] == ["401"], state
        assert "This watch link does not work" in state["notices"][0]["text"], state
        assert "401" in state["status"] and state["statusState"] == "error" and state["badge"] == "bad link", state

        # 404: a session this server does not have.
        await page.goto(link(server, "no-such-session", token, transport="fmp4"))
        await wait_viewer(page, log, "() => window.watchClient.state() === 'refused'")
        state = await viewer_state(page)
        assert [n["reason"] for n in state["notices"]] == ["404"] and "not live" in state["notices"][0]["text"], state

        # A link without its token.
        await page.goto(f"{server.url}/watch?session={session_id}")
        await wait_viewer(page, log, "() => window.watchClient.state() === 'refused'")
        assert [n["reason"] for n in (await viewer_state(page))["notices"]] == ["incomplete"]

        # WHEP for an owner on the WebSocket: the server paces a feed of its segments for WebRTC viewers.
        await page.goto(link(server, session_id, token, transport="whep"))
        await assert_plays(page, log, "whep")
        await page.goto("about:blank")  # pagehide: DELETE of the viewer resource
        whep = server.app[WHEP]
        for _ in range(100):
            if not whep.viewers_of(session_id):
                break
            await asyncio.sleep(0.05)
        assert not whep.viewers_of(session_id), "the viewer that left freed its place"
        hub = server.app[REGISTRY].get(session_id).viewers  # type: ignore[union-attr]
        assert hub is not None

        # 503: the session has all its viewers (one here); "Try now" once the other one left.
        other = WatchClient(server.url, session_id=session_id, watch_token=token)
        await other.watch()
        try:
            await page.goto(link(server, session_id, token, transport="fmp4"))
            await wait_viewer(page, log, "() => window.watchClient.state() === 'refused'")
            state = await viewer_state(page)
            assert [n["reason"] for n in state["notices"]] == ["503"], state
            assert re.search(r"Trying again in \d+ s", state["notices"][0]["text"]), state
        finally:
            await other.close()
        for _ in range(100):
            if len(hub) == 0:
                break
            await asyncio.sleep(0.05)
        await page.click('#notices [data-action="retry"]')
        await assert_plays(page, log, "fmp4")

        # The owner ends the session: the viewer says the stream has ended.
        await client.close()
        await wait_viewer(page, log, "() => window.watchClient.state() === 'ended'")
    state = await viewer_state(page)
    assert state["status"] == "the stream has ended" and state["badge"] == "ended", state
    assert [n["reason"] for n in state["notices"]] == ["ended"], state
    assert log.page_errors == [], str(log)
