"""The page over WebRTC (the default), in Debian's Chromium against a real server.

Frames advance (requestVideoFrameCallback), a typed prompt becomes the next segment's prompt in the
status and in the frames' caption band, pause stops segments, errors over the data channel are
shown, the page fits a desktop and a phone screen, and WebRTC failures fall back to MSE by themselves.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from rtc_server.app import REGISTRY
from tests.conftest import RunningServer, make_config
from tests.web_client.pagekit import (
    ARTIFACTS,
    CAPTION_CHANGED_JS,
    CAPTION_PROBE_PX,
    DESKTOP,
    PHONE,
    SAMPLING,
    SEGMENT_S,
    WEBRTC_ARGS,
    caption_mask,
    layout_problems,
    new_page,
    open_page,
    page_state,
    tab_order,
    unlabelled_controls,
    wait_for_playback,
    wait_until,
)

pytestmark = pytest.mark.slow

NEW_PROMPT = "a blue whale gliding through deep water"


async def frames(page: Any) -> int:
    return int(await page.evaluate("() => window.liveClient.frames()"))


async def segments_started(page: Any) -> int:
    return int(
        await page.evaluate(
            "() => Number(document.getElementById('segment').dataset.started)"
        )
    )


async def test_webrtc_page_streams_steers_pauses_and_fits(
    start_server: Callable[..., Any], launch: Callable[..., Any]
) -> None:
    server: RunningServer = await start_server(make_config())
    browser = await launch(*WEBRTC_ARGS)
    page, log = await open_page(browser, f"{server.url}/", viewport=DESKTOP)

    # WebRTC by default; frames keep arriving (requestVideoFrameCallback count grows).
    state = await wait_for_playback(page, log, SEGMENT_S)
    assert state["transport"] == "webrtc", f"{state}\n{log}"
    assert state["transportText"] == "WebRTC", state
    assert (state["width"], state["height"]) == (SAMPLING.width, SAMPLING.height)
    assert (
        state["statusState"] == "ok" and state["status"] == "streaming over WebRTC"
    ), state
    assert state["badge"] == "live · WebRTC", state
    counted = await frames(page)
    await asyncio.sleep(1.0)
    assert await frames(page) >= counted + SAMPLING.fps // 2, await page_state(page)
    await wait_until(
        page,
        log,
        "() => /fps\\s*\\d+/.test(document.getElementById('stats').textContent) && /gen\\s*\\d+ ms/.test(document.getElementById('stats').textContent)",
    )

    # A typed prompt (Enter) becomes the next segment's prompt: status, then the caption band.
    before = await caption_mask(page)
    await page.focus("#prompt")
    await page.keyboard.type(NEW_PROMPT)
    await page.keyboard.press("Enter")
    assert await page.input_value("#prompt") == ""
    await wait_until(
        page,
        log,
        "(p) => document.getElementById('segment-prompt').textContent === p",
        NEW_PROMPT,
    )
    await wait_until(page, log, CAPTION_CHANGED_JS, [CAPTION_PROBE_PX, before])
    await asyncio.sleep(0.5)  # let the stats overlay fill in
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "page_1280x800.png"))
    assert await layout_problems(page) == []

    # Pause, with the keyboard: segments stop being generated; resume: they start again.
    await page.focus("#pause")
    await page.keyboard.press("Space")
    assert await page.is_checked("#pause")
    await wait_until(
        page,
        log,
        "() => document.getElementById('status').textContent.startsWith('paused')",
    )
    await asyncio.sleep(1.0)  # a segment already generating may finish
    paused_at = await segments_started(page)
    await asyncio.sleep(2.5 * SEGMENT_S)
    assert await segments_started(page) == paused_at, await page_state(page)
    await page.keyboard.press("Space")
    await wait_until(
        page,
        log,
        "(n) => Number(document.getElementById('segment').dataset.started) > n",
        paused_at,
    )

    # An error over the data channel: rewriting is not enabled on this server yet.
    await page.click("#seed-0-rewrite")
    notice = page.locator('#notices .notice[data-code="invalid_message"]')
    await notice.wait_for(timeout=5000)
    text = await notice.inner_text()
    assert (
        "Prompt suggestions are unavailable" in text
        and "prompt rewriting is not enabled" in text
    ), text
    assert (
        await notice.locator('button[data-action="retry"]').count() == 0
    )  # not retryable
    assert await page.text_content("#seed-0-rewrite") == "Variations"
    assert (await page_state(page))["statusState"] == "ok"  # the stream goes on

    # Once the server can rewrite, alternatives are offered as choices that replace the seed.
    seed = await page.input_value("#seed-1")
    alternatives = [
        "a rain-soaked neon alley, reflections everywhere",
        "a quiet neon street at 3 am",
    ]
    await page.evaluate(
        "(m) => window.liveClient.inject(m)",
        {
            "type": "rewrite_seed_prompts_complete",
            "seed_prompt": seed,
            "alternatives": alternatives,
        },
    )
    choice = page.locator("#seed-1-alt-1")
    assert (
        await choice.get_attribute("aria-label") == f"Use variation: {alternatives[1]}"
    )
    await choice.focus()
    await page.keyboard.press("Enter")
    assert await page.input_value("#seed-1") == alternatives[1]
    assert await page.locator("#seed-1-alt-0").count() == 0
    assert await page.evaluate("() => document.activeElement.id") == "seed-1"

    # Keyboard and screen reader: every control is named; Tab reaches them in a sensible order.
    assert await unlabelled_controls(page) == []
    order = await tab_order(page, 40)
    for control in (
        "prompt",
        "pause",
        "enhancement",
        "seed-0",
        "stop",
        "restart",
        "snapshot",
        "initial-image",
        "resume-file",
    ):
        assert control in order, order
    assert (
        order.index("prompt")
        < order.index("pause")
        < order.index("seed-0")
        < order.index("stop")
    ), order

    # The phone layout.
    await page.set_viewport_size(PHONE)
    await asyncio.sleep(0.3)
    await page.evaluate("() => window.scrollTo(0, 0)")
    await page.screenshot(path=str(ARTIFACTS / "page_390x844.png"))
    assert await layout_problems(page) == []

    # Stop ends the session on the server (DELETE /v1/sessions/{id}).
    await page.click("#stop")
    await wait_until(
        page, log, "() => document.getElementById('status').textContent === 'stopped'"
    )
    assert await page.text_content("#restart") == "Start"
    for _ in range(50):
        if len(server.app[REGISTRY]) == 0:
            break
        await asyncio.sleep(0.05)
    assert len(server.app[REGISTRY]) == 0
    assert log.page_errors == [], str(log)
    await page.close()


def _refuse_offer(hits: list[str]) -> Callable[[Any], Any]:
    async def handler(route: Any) -> None:
        hits.append(route.request.url)
        error = {
            "code": "gpu_unavailable",
            "message": "refused by the test",
            "retryable": True,
        }
        await route.fulfill(
            status=503,
            headers={"Retry-After": "5"},
            content_type="application/json",
            body=json.dumps({"error": error}),
        )

    return handler


async def test_falls_back_to_mse_when_the_offer_is_refused(
    start_server: Callable[..., Any], launch: Callable[..., Any]
) -> None:
    server: RunningServer = await start_server(make_config())
    browser = await launch(*WEBRTC_ARGS)
    page, log = await new_page(browser)
    hits: list[str] = []
    await page.route("**/v1/webrtc/offer", _refuse_offer(hits))
    await page.goto(f"{server.url}/")

    state = await wait_for_playback(page, log, 2 * SEGMENT_S)
    assert hits, "the page never tried WebRTC"
    assert state["transport"] == "ws", f"{state}\n{log}"
    assert "fallback" in state["transportText"] and "503" in state["transportText"], (
        state
    )
    assert state["statusState"] == "ok", state
    assert state["decodedFrames"] >= SAMPLING.num_frames, state
    assert await page.evaluate("() => wsPlayer.appended") >= 4
    counted = await frames(page)
    await asyncio.sleep(0.5)
    assert await frames(page) > counted, await page_state(page)
    assert log.page_errors == [], str(log)
    await page.close()

    # Forced WebRTC does not fall back: the refusal is shown, with Retry (the error is retryable).
    forced, log = await new_page(browser)
    await forced.route("**/v1/webrtc/offer", _refuse_offer(hits))
    await forced.goto(f"{server.url}/?transport=webrtc")
    await wait_until(
        forced, log, "() => document.getElementById('status').dataset.state === 'error'"
    )
    notice = forced.locator('#notices .notice[data-code="gpu_unavailable"]')
    text = await notice.inner_text()
    assert (
        "No GPU is available" in text
        and "HTTP 503" in text
        and "retrying in 5 s" in text
    ), text
    assert await notice.locator('button[data-action="retry"]').count() == 1
    assert (await page_state(forced))["transport"] == "webrtc"
    await forced.close()


async def test_falls_back_to_mse_when_ice_never_connects(
    start_server: Callable[..., Any], launch: Callable[..., Any]
) -> None:
    # The answer's ICE password is garbled: the offer succeeds but connectivity checks never do.
    server: RunningServer = await start_server(
        make_config(streaming={"max_sessions": 1})
    )
    browser = await launch(*WEBRTC_ARGS)
    page, log = await new_page(browser)

    async def garble(route: Any) -> None:
        response = await route.fetch()
        body = await response.json()
        body["sdp"] = re.sub(r"a=ice-pwd:\S+", "a=ice-pwd:" + "x" * 24, body["sdp"])
        await route.fulfill(response=response, body=json.dumps(body))

    await page.route("**/v1/webrtc/offer", garble)
    await page.goto(f"{server.url}/")
    # Falls back after the connect timeout and, with one session allowed, the abandoned WebRTC
    # session must have been ended for the WebSocket one to be admitted.
    state = await wait_for_playback(page, log, SEGMENT_S, timeout_ms=15_000)
    assert state["transport"] == "ws", f"{state}\n{log}"
    assert "did not connect" in state["transportText"], state
    assert state["statusState"] == "ok", state
    await page.close()
