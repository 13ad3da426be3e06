"""The page in a real browser: Debian's Chromium, headless, driven by Playwright against a real server.

``/?transport=ws`` plays the WebSocket/fMP4 stream through Media Source Extensions; ``/`` (the
default) plays WebRTC. Both must actually play: the video's ``currentTime`` has to advance past
two segments. Never run ``playwright install``: the system Chromium is used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningServer, make_config

playwright_api = pytest.importorskip("playwright.async_api")

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--allow-loopback-in-peer-connection",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
# WebRTC only: Chromium hides host candidates behind mDNS names by default, and registering them
# never completes where multicast is unavailable (scripts/test.sh runs the suite in a network
# namespace with only loopback up), so ICE gathering hangs and the peer never connects.
WEBRTC_ARGS = ["--disable-features=WebRtcHideLocalIpsWithMdns"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
_SAMPLING = make_config().default_request.sampling
SEGMENT_S = _SAMPLING.num_frames / _SAMPLING.fps  # 24 frames at 24 fps: 1 s
PLAY_PAST_S = 2 * SEGMENT_S
PLAY_TIMEOUT_MS = 10_000


class PageLog:
    """Console messages and uncaught page errors, for assertions and failure messages."""

    def __init__(self) -> None:
        self.console: list[str] = []
        self.page_errors: list[str] = []

    def attach(self, page: Any) -> None:
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))

    def __str__(self) -> str:
        return "\n".join(["console:", *self.console, "page errors:", *self.page_errors])


@pytest.fixture
async def launch() -> AsyncIterator[Callable[..., Any]]:
    """Launch the system Chromium headless (extra arguments appended); closed at the end of the test."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    async with playwright_api.async_playwright() as playwright:
        browsers: list[Any] = []

        async def start(*extra_args: str) -> Any:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=[*CHROMIUM_ARGS, *extra_args]
            )
            browsers.append(browser)
            return browser

        try:
            yield start
        finally:
            for browser in browsers:
                await browser.close()


async def open_page(browser: Any, url: str) -> tuple[Any, PageLog]:
    page = await browser.new_page(viewport={"width": 760, "height": 980})
    log = PageLog()
    log.attach(page)
    await page.goto(url)
    return page, log


async def video_state(page: Any) -> dict[str, Any]:
    return await page.evaluate(
        """() => {
            const video = document.getElementById("video");
            const ranges = [];
            for (let i = 0; i < video.buffered.length; i++) ranges.push([video.buffered.start(i), video.buffered.end(i)]);
            return {
                currentTime: video.currentTime,
                paused: video.paused,
                readyState: video.readyState,
                error: video.error && {code: video.error.code, message: video.error.message},
                buffered: ranges,
                decodedFrames: video.getVideoPlaybackQuality().totalVideoFrames,
                width: video.videoWidth,
                height: video.videoHeight,
                status: document.getElementById("status").textContent,
                statusState: document.getElementById("status").dataset.state || null,
                segment: document.getElementById("segment").textContent,
                transport: document.getElementById("transport").dataset.transport || null,
                transportText: document.getElementById("transport").textContent,
            };
        }"""
    )


async def wait_for_playback(page: Any, log: PageLog, past_s: float) -> dict[str, Any]:
    try:
        await page.wait_for_function(
            "(t) => document.getElementById('video').currentTime > t", arg=past_s, timeout=PLAY_TIMEOUT_MS
        )
    except playwright_api.TimeoutError:
        pytest.fail(f"video did not play past {past_s} s: {await video_state(page)}\n{log}")
    return await video_state(page)


async def test_ws_transport_plays_through_mse(start_server: Callable[..., Any], launch: Callable[..., Any]) -> None:
    server: RunningServer = await start_server(make_config())
    browser = await launch()
    page, log = await open_page(browser, f"{server.url}/?transport=ws")

    state = await wait_for_playback(page, log, PLAY_PAST_S)

    assert state["error"] is None, f"{state}\n{log}"
    assert state["transport"] == "ws"
    assert "transport: ws" in state["transportText"]
    assert state["statusState"] != "error", f"{state}\n{log}"
    assert (state["width"], state["height"]) == (_SAMPLING.width, _SAMPLING.height)
    # Really decoded, not only seeked forward: at least one segment's frames went through.
    assert state["decodedFrames"] >= _SAMPLING.num_frames, state
    assert state["segment"].startswith("segment "), state
    assert log.page_errors == [], str(log)
    assert not [line for line in log.console if line.startswith(("error", "warning"))], str(log)
    player = await page.evaluate(
        "() => ({mime: wsPlayer.mime, appended: wsPlayer.appended, failed: wsPlayer.failed, jumps: wsPlayer.liveJumps})"
    )
    assert player["mime"].startswith('video/mp4; codecs="avc1.'), player
    assert not player["failed"], player
    # At least init + one fragment for each of the segments that played.
    assert player["appended"] >= 4, player
    # The prompt form sends segment_prompt_source over the socket; a later segment uses it.
    await page.fill("#prompt", "a blue whale in deep water")
    await page.press("#prompt", "Enter")
    await page.wait_for_function(
        "() => document.getElementById('segment').textContent.includes('a blue whale in deep water')",
        timeout=PLAY_TIMEOUT_MS,
    )
    assert await page.input_value("#prompt") == ""
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "page_ws.png"), full_page=True)
    await page.close()


async def test_default_transport_is_webrtc_and_plays(
    start_server: Callable[..., Any], launch: Callable[..., Any]
) -> None:
    server: RunningServer = await start_server(make_config())
    browser = await launch(*WEBRTC_ARGS)
    page, log = await open_page(browser, f"{server.url}/")

    await page.wait_for_function("() => document.getElementById('transport').dataset.transport")
    state = await video_state(page)
    assert state["transport"] == "webrtc"
    assert "transport: webrtc" in state["transportText"]

    state = await wait_for_playback(page, log, PLAY_PAST_S)
    assert state["error"] is None, f"{state}\n{log}"
    assert state["statusState"] != "error", f"{state}\n{log}"
    assert (state["width"], state["height"]) == (_SAMPLING.width, _SAMPLING.height)
    assert state["decodedFrames"] >= _SAMPLING.num_frames, state
    assert log.page_errors == [], str(log)
    await page.close()


async def test_ws_connection_refused_shows_error(start_server: Callable[..., Any], launch: Callable[..., Any]) -> None:
    # One session at most: the page's second session is refused (error + close 1013).
    server: RunningServer = await start_server(make_config(streaming={"max_sessions": 1}))
    browser = await launch()
    first, _ = await open_page(browser, f"{server.url}/?transport=ws")
    await first.wait_for_function("() => document.getElementById('video').currentTime > 0")
    page, log = await open_page(browser, f"{server.url}/?transport=ws")
    await page.wait_for_function("() => document.getElementById('status').dataset.state === 'error'")
    status = await page.text_content("#status")
    assert status is not None
    assert "session_rejected" in status and "1013" in status, f"{status}\n{log}"
    await page.close()
    await first.close()
