"""Helpers for driving the page in a real browser: launch flags, page state, waits, pixel probes."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_config

try:
    playwright_api: Any = importlib.import_module("playwright.async_api")
except ImportError:  # the fixtures skip then
    playwright_api = None

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
# Chromium enumerates network interfaces for ICE only on a page with a camera or microphone
# permission; otherwise it gathers on the default route's interface alone, and with only loopback
# up there is none: its host candidates are then 0.0.0.0 and :: (never signalled), and the path it
# finds is peer-reflexive (prflx), or srflx with a STUN or TURN server. Granted this permission (no
# device is opened), it gathers on lo too (--allow-loopback-in-peer-connection): a real host path.
HOST_CANDIDATE_PERMISSIONS = ["microphone"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

SAMPLING = make_config().default_request.sampling
SEGMENT_S = SAMPLING.num_frames / SAMPLING.fps  # 24 frames at 24 fps: 1 s
PLAY_TIMEOUT_MS = 10_000
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# The synthetic generator draws the prompt in a band at the bottom of each frame: 15 px at 256 px
# high. The probe reads the inner 12 rows.
CAPTION_PROBE_PX = 12


class PageLog:
    """Console messages and uncaught page errors, for assertions and failure messages."""

    def __init__(self) -> None:
        self.console: list[str] = []
        self.page_errors: list[str] = []

    def attach(self, page: Any) -> None:
        page.on(
            "console",
            lambda message: self.console.append(f"{message.type}: {message.text}"),
        )
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))

    def problems(self) -> list[str]:
        return [
            *self.page_errors,
            *(line for line in self.console if line.startswith(("error", "warning"))),
        ]

    def __str__(self) -> str:
        return "\n".join(["console:", *self.console, "page errors:", *self.page_errors])


async def new_page(
    browser: Any, viewport: dict[str, int] = DESKTOP, permissions: list[str] | None = None
) -> tuple[Any, PageLog]:
    page = await browser.new_page(viewport=viewport, permissions=permissions or [])
    log = PageLog()
    log.attach(page)
    return page, log


async def open_page(
    browser: Any, url: str, viewport: dict[str, int] = DESKTOP
) -> tuple[Any, PageLog]:
    page, log = await new_page(browser, viewport)
    await page.goto(url)
    return page, log


async def page_state(page: Any) -> dict[str, Any]:
    return await page.evaluate(
        """() => {
            const $ = (id) => document.getElementById(id);
            const video = $("video");
            const ranges = [];
            for (let i = 0; i < video.buffered.length; i++) ranges.push([video.buffered.start(i), video.buffered.end(i)]);
            return {
                currentTime: video.currentTime,
                paused: video.paused,
                readyState: video.readyState,
                error: video.error && {code: video.error.code, message: video.error.message},
                buffered: ranges,
                decodedFrames: video.getVideoPlaybackQuality().totalVideoFrames,
                presentedFrames: window.liveClient ? window.liveClient.frames() : null,
                width: video.videoWidth,
                height: video.videoHeight,
                status: $("status").textContent,
                statusState: $("status").dataset.state || null,
                badge: $("badge-text").textContent,
                segment: $("segment").textContent,
                segmentIdx: $("segment").dataset.segmentIdx,
                segmentsStarted: Number($("segment").dataset.started || 0),
                segmentPrompt: $("segment-prompt").textContent,
                queue: $("queue").textContent,
                gpu: $("gpu").textContent,
                transport: $("transport").dataset.transport || null,
                transportText: $("transport").textContent,
                notices: [...document.querySelectorAll("#notices .notice")].map((n) => n.textContent),
                stats: $("stats").textContent,
            };
        }"""
    )


async def wait_for_playback(
    page: Any, log: PageLog, past_s: float, timeout_ms: int = PLAY_TIMEOUT_MS
) -> dict[str, Any]:
    try:
        await page.wait_for_function(
            "(t) => document.getElementById('video').currentTime > t",
            arg=past_s,
            timeout=timeout_ms,
        )
    except playwright_api.TimeoutError:
        pytest.fail(
            f"video did not play past {past_s} s: {await page_state(page)}\n{log}"
        )
    return await page_state(page)


async def wait_until(
    page: Any,
    log: PageLog,
    expression: str,
    arg: Any = None,
    timeout_ms: int = PLAY_TIMEOUT_MS,
) -> None:
    """Wait for a JS predicate; on timeout fail with the page state and log."""
    try:
        await page.wait_for_function(expression, arg=arg, timeout=timeout_ms)
    except playwright_api.TimeoutError:
        pytest.fail(
            f"timed out waiting for {expression!r}: {await page_state(page)}\n{log}"
        )


CAPTION_MASK_JS = """(rows) => {
    const video = document.getElementById("video");
    if (!video.videoWidth) return null;
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    const context = canvas.getContext("2d", {willReadFrequently: true});
    context.drawImage(video, 0, 0);
    const data = context.getImageData(0, canvas.height - rows - 1, canvas.width, rows).data;
    const mask = [];
    for (let i = 0; i < data.length; i += 4) mask.push((data[i] + data[i + 1] + data[i + 2]) / 3 > 128 ? 1 : 0);
    return mask;
}"""

# True when the caption band's bright (text) pixels differ from `before` in more than 2 % of places.
CAPTION_CHANGED_JS = (
    "([rows, before]) => { const now = ("
    + CAPTION_MASK_JS
    + ")(rows); if (!now) return false; let diff = 0;"
    " for (let i = 0; i < now.length; i++) if (now[i] !== before[i]) diff++;"
    " return diff / now.length > 0.02; }"
)


async def caption_mask(page: Any) -> list[int]:
    mask = await page.evaluate(CAPTION_MASK_JS, CAPTION_PROBE_PX)
    assert mask, "no video frame to read"
    return list(mask)


async def layout_problems(page: Any) -> list[str]:
    """What does not fit the viewport: horizontal overflow, video or prompt outside the first screen."""
    return list(
        await page.evaluate(
            """() => {
                const problems = [];
                const width = window.innerWidth, height = window.innerHeight;
                if (document.documentElement.scrollWidth > width) problems.push(`page is ${document.documentElement.scrollWidth}px wide in ${width}px`);
                for (const id of ["video", "prompt"]) {
                    const r = document.getElementById(id).getBoundingClientRect();
                    if (r.left < 0 || r.right > width || r.top < 0 || r.bottom > height) problems.push(`#${id} outside the first screen: ${JSON.stringify(r)}`);
                }
                for (const el of document.querySelectorAll("button, input, label, dd")) {
                    const r = el.getBoundingClientRect();
                    if (r.width && r.right > width + 1) problems.push(`${el.tagName}#${el.id} sticks out: right ${r.right}`);
                }
                return problems;
            }"""
        )
    )


async def unlabelled_controls(page: Any) -> list[str]:
    """Form controls and buttons without an accessible name."""
    return list(
        await page.evaluate(
            """() => [...document.querySelectorAll("input, button, select, textarea, video")].filter((el) => {
                if (el.closest("[hidden]")) return false;
                if (el.getAttribute("aria-label") || el.getAttribute("aria-labelledby")) return false;
                if (el.labels && el.labels.length) return false;
                if (el.tagName === "BUTTON" && el.textContent.trim()) return false;
                return true;
            }).map((el) => `${el.tagName.toLowerCase()}#${el.id}`)"""
        )
    )


async def tab_order(page: Any, presses: int) -> list[str]:
    """Ids (or class names) of the elements Tab visits, starting at the skip link (the first stop)."""
    await page.evaluate("() => document.querySelector('.skip-link').focus()")
    visited: list[str] = ["skip-link"]
    for _ in range(presses):
        await page.keyboard.press("Tab")
        visited.append(
            await page.evaluate(
                "() => { const el = document.activeElement; return el ? (el.id || el.className || el.tagName) : ''; }"
            )
        )
    return visited
