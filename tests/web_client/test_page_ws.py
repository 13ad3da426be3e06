"""The page over the WebSocket/MSE path (``/?transport=ws``), in Debian's Chromium against a real server.

Plays fMP4 through Media Source Extensions across segments, sends prompts, exports a snapshot and
resumes from it, and shows a refused session as an error with a working Retry.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image

from tests.conftest import RunningServer, make_config
from tests.web_client.pagekit import (
    ARTIFACTS,
    PLAY_TIMEOUT_MS,
    SAMPLING,
    SEGMENT_S,
    WEBRTC_ARGS,
    open_page,
    page_state,
    wait_for_playback,
    wait_until,
)

pytestmark = pytest.mark.slow


async def test_ws_transport_plays_through_mse_and_resumes_a_snapshot(
    start_server: Callable[..., Any], launch: Callable[..., Any], tmp_path: Any
) -> None:
    server: RunningServer = await start_server(make_config())
    browser = await launch()
    page, log = await open_page(
        browser, f"{server.url}/?transport=ws", viewport={"width": 760, "height": 980}
    )

    # At least two segments play through MSE.
    state = await wait_for_playback(page, log, 2 * SEGMENT_S)
    assert state["error"] is None, f"{state}\n{log}"
    assert state["transport"] == "ws"
    assert state["transportText"].startswith("WebSocket · MSE"), state
    assert state["statusState"] != "error", f"{state}\n{log}"
    assert (state["width"], state["height"]) == (SAMPLING.width, SAMPLING.height)
    assert state["decodedFrames"] >= SAMPLING.num_frames, (
        state
    )  # decoded, not only seeked forward
    assert state["segment"].startswith("segment "), state
    assert state["queue"].startswith("admitted") and state["gpu"].startswith("GPU "), (
        state
    )
    player = await page.evaluate(
        "() => ({mime: wsPlayer.mime, appended: wsPlayer.appended, failed: wsPlayer.failed, jumps: wsPlayer.liveJumps})"
    )
    assert player["mime"].startswith('video/mp4; codecs="avc1.'), player
    assert not player["failed"], player
    assert player["appended"] >= 4, (
        player
    )  # init + a fragment for each segment that played
    # The overlay reads the MSE buffer.
    await wait_until(
        page,
        log,
        "() => /buffer\\s*\\d+\\.\\d+ s/.test(document.getElementById('stats').textContent)",
    )

    # Enter sends segment_prompt_source over the socket; a later segment uses it.
    await page.fill("#prompt", "a blue whale in deep water")
    await page.press("#prompt", "Enter")
    assert await page.input_value("#prompt") == ""
    await wait_until(
        page,
        log,
        "() => document.getElementById('segment-prompt').textContent === 'a blue whale in deep water'",
    )
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "page_ws.png"), full_page=True)

    # Snapshot export: a JSON download holding the continuation state.
    async with page.expect_download() as download_info:
        await page.click("#snapshot")
    download = await download_info.value
    saved = tmp_path / download.suggested_filename
    await download.save_as(saved)
    snapshot = json.loads(saved.read_text())
    assert snapshot["state"]["kind"] == "synthetic.v1", snapshot
    saved_idx = snapshot["segment_idx"]
    assert isinstance(saved_idx, int) and saved_idx >= 1, snapshot

    # Resume: choosing the file starts a new session that continues from there, not from segment 0.
    await page.set_input_files("#resume-file", str(saved))
    await wait_until(
        page,
        log,
        "() => window.liveClient.app.sessions === 2 && window.liveClient.model.segmentIdx !== null",
    )
    state = await page_state(page)
    assert int(state["segmentIdx"]) > saved_idx, state
    assert state["statusState"] != "error", f"{state}\n{log}"
    await wait_for_playback(page, log, 0.5)

    # Session settings: an initial image and single-clip mode apply on restart.
    image = tmp_path / "start.png"
    Image.new("RGB", (64, 64), (250, 40, 40)).save(image)
    await page.set_input_files("#initial-image", str(image))
    await page.locator("#image-preview").wait_for(state="visible")
    assert await page.get_attribute("#image-thumb", "alt") == "Initial image start.png"
    await page.check("#single-clip")
    assert "attention" in (await page.get_attribute("#restart", "class") or "")
    await page.click("#restart")
    await wait_until(
        page,
        log,
        "() => window.liveClient.app.sessions === 3 && document.getElementById('status').textContent.startsWith('single clip done')",
    )
    # One segment per prompt: nothing more until the next prompt.
    await asyncio.sleep(1.5 * SEGMENT_S)
    state = await page_state(page)
    assert state["segmentsStarted"] == 1, state
    await page.fill("#prompt", "a paper boat on a pond")
    await page.press("#prompt", "Enter")
    await wait_until(
        page,
        log,
        "() => document.getElementById('segment-prompt').textContent === 'a paper boat on a pond'",
    )
    await asyncio.sleep(1.0 * SEGMENT_S)
    state = await page_state(page)
    assert state["segmentsStarted"] == 2, state
    assert state["notices"] == [] or all(
        "Snapshot saved" in n for n in state["notices"]
    ), state
    assert log.problems() == [], str(log)
    await page.close()


async def test_queued_session_shows_its_position_then_streams(
    start_server: Callable[..., Any], launch: Callable[..., Any]
) -> None:
    # One slot and one place in the queue: the second viewer waits, then streams over WebRTC.
    server: RunningServer = await start_server(
        make_config(streaming={"max_sessions": 1, "max_queue": 1})
    )
    browser = await launch(*WEBRTC_ARGS)
    first, _ = await open_page(browser, f"{server.url}/?transport=ws")
    await first.wait_for_function(
        "() => document.getElementById('video').currentTime > 0",
        timeout=PLAY_TIMEOUT_MS,
    )

    page, log = await open_page(browser, f"{server.url}/")
    await wait_until(
        page, log, "() => document.getElementById('queue').dataset.position === '1'"
    )
    state = await page_state(page)
    assert state["queue"] == "waiting: position 1 of 1", state
    assert (
        state["status"] == "waiting in the queue: position 1"
        and state["badge"] == "queued #1"
    ), state
    assert state["transport"] == "webrtc", state

    await first.close()
    state = await wait_for_playback(page, log, 0.5)
    assert (
        state["queue"].startswith("admitted")
        and state["status"] == "streaming over WebRTC"
    ), state
    await page.close()


async def test_refused_session_shows_the_error_and_retry_recovers(
    start_server: Callable[..., Any], launch: Callable[..., Any]
) -> None:
    # One session at most: the second page is refused (error frame session_rejected, close 1013).
    server: RunningServer = await start_server(
        make_config(streaming={"max_sessions": 1})
    )
    browser = await launch(*WEBRTC_ARGS)
    first, _ = await open_page(browser, f"{server.url}/?transport=ws")
    await first.wait_for_function(
        "() => document.getElementById('video').currentTime > 0",
        timeout=PLAY_TIMEOUT_MS,
    )

    page, log = await open_page(browser, f"{server.url}/?transport=ws")
    await wait_until(
        page, log, "() => document.getElementById('status').dataset.state === 'error'"
    )
    status = await page.text_content("#status")
    assert status is not None and "session_rejected" in status and "1013" in status, (
        f"{status}\n{log}"
    )
    notice = page.locator('#notices .notice[data-code="session_rejected"]')
    assert await notice.count() == 1, await page_state(page)
    text = await notice.inner_text()
    assert "The server is full" in text and "1013" in text, text
    assert await notice.get_attribute("role") == "alert"
    retry = notice.locator('button[data-action="retry"]')
    assert await retry.count() == 1
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "page_error.png"))

    # Once the other viewer leaves, Retry starts a session that plays.
    await first.close()
    await retry.click()
    await wait_for_playback(page, log, 0.5)
    state = await page_state(page)
    assert state["statusState"] != "error", f"{state}\n{log}"
    assert await page.locator("#notices .notice").count() == 0, state
    await page.close()
