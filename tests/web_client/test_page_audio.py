"""Sound with the picture, in Debian's Chromium against a real server.

The page asks for audio on both transports (a recvonly audio m-line; the fMP4's two-codec mime),
starts muted with a mute/volume control that is hidden for a stream without sound, and measures the
A/V offset from the synthetic generator's sync clicks and the frame markers (web_client/av_sync.js,
marker.js, click_worklet.js). The modules' pure parts are checked on their own first.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image

from gpu.frame_marker import FrameMarker, draw_marker
from tests.conftest import RunningServer, make_config
from tests.web_client.pagekit import (
    HOST_CANDIDATE_PERMISSIONS,
    SEGMENT_S,
    WEBRTC_ARGS,
    new_page,
    page_state,
    playwright_api,
    unlabelled_controls,
    wait_for_playback,
    wait_until,
)

pytestmark = pytest.mark.slow

# The page's offsets must sit within this once a few segments played (sound after picture > 0).
MAX_OFFSET_MS = 100
OFFSET_TIMEOUT_MS = 20_000  # until the first offsets (a click needs sound and a marker read)
SETTLE_TIMEOUT_MS = 30_000  # until they are within MAX_OFFSET_MS
SOUND_JS = "() => window.liveClient.sound()"

READ_MARKER_JS = """async ({url, width}) => {
    const {readMarker, markerSize} = await import("/client/marker.js");
    const image = new Image();
    image.src = url;
    await image.decode();
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 32;
    const context = canvas.getContext("2d", {willReadFrequently: true});
    const size = markerSize(width);
    context.drawImage(image, 0, 0, size, size, 0, 0, 32, 32);
    return readMarker(context.getImageData(0, 0, 32, 32).data, 4);
}"""

LOGIC_JS = """async () => {
    const {OffsetMeter, ClickFrames} = await import("/client/av_sync.js");
    const {mimeHasAudio} = await import("/client/ws_player.js");
    const meter = new OffsetMeter({windowMs: 450, settleMs: 700, medianOf: 5, staleMs: 10000});
    // Click frames shown each second; onsets 30 ms later, one 200 ms stray, one frame without a click.
    for (let k = 0; k < 6; k++) {
        meter.addFrame(1000 * k);
        if (k !== 2) meter.addOnset(1000 * k + 30 + k);
    }
    meter.addOnset(3600);
    meter.update(5200); // the last frame (5000) has not settled yet
    const settled = meter.offsets.map((o) => o.ms);
    const medianNow = meter.medianMs(5200);
    meter.update(6000);
    const stale = meter.medianMs(30000);
    const clicks = new ClickFrames();
    const seen = [];
    const frames = [[0, 0], [0, 1], [0, 23], [1, 24], [1, 25], [1, 47], [2, 49], [2, 50], [3, 51], [3, 72]];
    for (const [segmentIdx, frameNumber] of frames) {
        if (clicks.isClick({segmentIdx, frameNumber}, 24)) seen.push(frameNumber);
    }
    const noFps = new ClickFrames();
    const seenNoFps = [];
    for (const [segmentIdx, frameNumber] of frames) {
        if (noFps.isClick({segmentIdx, frameNumber}, null)) seenNoFps.push(frameNumber);
    }
    return {
        settled, medianNow, stale, seen, seenNoFps,
        mimes: [
            mimeHasAudio('video/mp4; codecs="avc1.42C01E, mp4a.40.2"'),
            mimeHasAudio('video/mp4; codecs="avc1.42C01E"'),
            mimeHasAudio('video/mp4; codecs="avc1.640028,opus"'),
            mimeHasAudio("video/mp4"),
        ],
    };
}"""


def _frame_with_marker(width: int, marker: FrameMarker, seed: int) -> str:
    """A busy frame with `marker` drawn in, JPEG-compressed (a codec's blur), as a data URL."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, size=(width, width, 3), dtype=np.uint8)
    draw_marker(frame, marker)
    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="JPEG", quality=55)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


async def test_marker_and_offset_logic_in_the_browser(
    start_server: Callable[..., Any], launch: Callable[..., Any]
) -> None:
    server: RunningServer = await start_server(make_config())
    page, log = await new_page(await launch())
    await page.goto(f"{server.url}/?transport=ws")

    # The marker the generator draws reads back the same, through JPEG blur and the 32x32 downscale.
    for width, cell_marker in ((256, FrameMarker(3, 77, 0xBEEF)), (512, FrameMarker(65535, 2**24 - 1, 1)), (96, FrameMarker(0, 0, 0))):
        url = _frame_with_marker(width, cell_marker, seed=width)
        got = await page.evaluate(READ_MARKER_JS, {"url": url, "width": width})
        assert got == {
            "segmentIdx": cell_marker.segment_idx,
            "frameNumber": cell_marker.frame_number,
            "promptTag": cell_marker.prompt_tag,
        }, (width, got)
    # No marker (noise only) and a marker read at the wrong cell size: nothing, not garbage.
    noise = np.random.default_rng(1).integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise).save(out, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")
    assert await page.evaluate(READ_MARKER_JS, {"url": url, "width": 256}) is None
    url = _frame_with_marker(256, FrameMarker(5, 120, 9), seed=3)
    assert await page.evaluate(READ_MARKER_JS, {"url": url, "width": 512}) is None

    logic = await page.evaluate(LOGIC_JS)
    # Frame 2 had no onset within the window (the stray at +600 ms is too far): no offset for it.
    assert logic["settled"] == [30, 31, 33, 34], logic
    assert logic["medianNow"] == 32, logic
    assert logic["stale"] is None, logic
    # Multiples of the fps, and a segment's first frame when the frame before it was shown (49 was
    # not preceded by 48: a dropped first frame is no click frame).
    assert logic["seen"] == [0, 24, 51, 72], logic
    assert logic["seenNoFps"] == [24, 51], logic
    assert logic["mimes"] == [True, False, True, False], logic
    assert log.page_errors == [], str(log)


async def _sound(page: Any) -> dict[str, Any]:
    return dict(await page.evaluate(SOUND_JS))


async def _check_sound_and_offset(page: Any, log: Any) -> dict[str, Any]:
    """The control starts muted, unmutes, the analyser hears the stream, and the overlay shows an offset."""
    await wait_until(page, log, "() => !document.getElementById('sound').hidden")
    toggle = page.locator("#sound-toggle")
    assert await toggle.get_attribute("data-muted") == "true"
    assert (await toggle.text_content() or "").strip() == "Unmute"
    assert await page.evaluate("() => document.getElementById('video').muted") is True
    assert await unlabelled_controls(page) == []
    before = await _sound(page)
    assert before["context"] is None and before["muted"], before  # no AudioContext before the gesture
    assert await page.text_content("#stat-av") == "–"

    await toggle.click()
    assert await toggle.get_attribute("data-muted") == "false"
    assert (await toggle.text_content() or "").strip() == "Mute"
    assert await page.evaluate("() => document.getElementById('video').muted") is False
    # A WebAudio analyser on the stream's sound sees the tone (0.15) and the clicks (0.9).
    await wait_until(page, log, "() => (window.liveClient.sound().level || 0) > 0.05", timeout_ms=10_000)
    # Once a few segments played, the offset settles within bounds. (Over WebRTC Chromium's lip sync
    # starts with the sound 150-200 ms late, its jitter buffer being that much deeper than the
    # video's, and delays the video step by step: the offsets fall to tens of ms within ~10 s.)
    await wait_until(
        page,
        log,
        "() => document.getElementById('stat-av').dataset.offsetMs !== '' && window.liveClient.sound().offsets.length >= 3",
        timeout_ms=OFFSET_TIMEOUT_MS,
    )
    try:
        await page.wait_for_function(
            "(limit) => Math.abs(Number(document.getElementById('stat-av').dataset.offsetMs || 'NaN')) <= limit",
            arg=MAX_OFFSET_MS,
            timeout=SETTLE_TIMEOUT_MS,
        )
    except playwright_api.TimeoutError:
        pytest.fail(f"the A/V offset did not settle within {MAX_OFFSET_MS} ms: {await _sound(page)}\n{log}")
    sound = await _sound(page)
    shown = await page.text_content("#stat-av") or ""
    offset = int(await page.get_attribute("#stat-av", "data-offset-ms") or "nan")
    print(f"A/V offsets (ms, sound after picture > 0): {sound['offsets']}; shown {shown!r}; {sound}")
    assert abs(offset) <= MAX_OFFSET_MS, (offset, sound, await page_state(page))
    assert shown.endswith(" ms"), shown

    # The volume slider and mute act on the <video>; muting again leaves the stream playing.
    await page.locator("#sound-volume").fill("40")
    assert await page.evaluate("() => document.getElementById('video').volume") == pytest.approx(0.4)
    await toggle.click()
    assert await page.evaluate("() => document.getElementById('video').muted") is True
    assert await toggle.get_attribute("data-muted") == "true"
    # The analysis hears a copy of the sound: muted, the offset is still measured.
    await wait_until(page, log, "(n) => window.liveClient.sound().onsets >= n + 2", arg=sound["onsets"])
    assert (await page.get_attribute("#stat-av", "data-offset-ms") or "") != ""
    return sound


async def test_webrtc_page_plays_sound_and_measures_the_av_offset(
    start_server: Callable[..., Any], launch: Callable[..., Any]
) -> None:
    server: RunningServer = await start_server(make_config())
    browser = await launch(*WEBRTC_ARGS)
    page, log = await new_page(browser, permissions=HOST_CANDIDATE_PERMISSIONS)
    await page.goto(f"{server.url}/?transport=webrtc")
    state = await wait_for_playback(page, log, SEGMENT_S)
    assert state["transport"] == "webrtc", f"{state}\n{log}"
    tracks = await page.evaluate(
        """() => {
            const stream = document.getElementById("video").srcObject;
            return stream.getTracks().map((t) => ({kind: t.kind, state: t.readyState}));
        }"""
    )
    assert {"kind": "audio", "state": "live"} in tracks and {"kind": "video", "state": "live"} in tracks, tracks
    sound = await _check_sound_and_offset(page, log)
    assert sound["source"] == "stream", sound
    assert log.page_errors == [], str(log)


async def test_mse_page_plays_sound_and_measures_the_av_offset(
    start_server: Callable[..., Any], launch: Callable[..., Any]
) -> None:
    server: RunningServer = await start_server(make_config())
    page, log = await new_page(await launch())
    await page.goto(f"{server.url}/?transport=ws")
    state = await wait_for_playback(page, log, SEGMENT_S)
    assert state["transport"] == "ws" and state["error"] is None, f"{state}\n{log}"
    mime = await page.evaluate("() => window.wsPlayer.mime")
    assert "mp4a." in mime and "avc1." in mime, mime
    sound = await _check_sound_and_offset(page, log)
    assert sound["source"] == "capture", sound  # a copy: the element plays as it would unmeasured
    assert log.page_errors == [], str(log)


async def test_a_server_without_sound_plays_video_only_with_the_control_hidden(
    start_server: Callable[..., Any], launch: Callable[..., Any]
) -> None:
    server: RunningServer = await start_server(make_config(generator={"backend": "synthetic", "options": {"audio": False}}))
    browser = await launch(*WEBRTC_ARGS)
    for transport in ("webrtc", "ws"):
        page, log = await new_page(browser, permissions=HOST_CANDIDATE_PERMISSIONS)
        await page.goto(f"{server.url}/?transport={transport}")
        state = await wait_for_playback(page, log, SEGMENT_S)
        assert state["transport"] == transport and state["error"] is None, f"{state}\n{log}"
        await wait_until(page, log, "() => document.getElementById('sound').dataset.available === 'false'")
        assert await page.locator("#sound").is_hidden()
        if transport == "webrtc":
            kinds = await page.evaluate(
                "() => document.getElementById('video').srcObject.getTracks().map((t) => t.kind)"
            )
            assert kinds == ["video"], kinds
        else:
            mime = await page.evaluate("() => window.wsPlayer.mime")
            assert "mp4a" not in mime, mime
        sound = await _sound(page)
        assert sound["available"] is False and sound["context"] is None, sound
        assert await page.text_content("#stat-av") == "–"
        assert "no sound" in (await page.get_attribute("#stat-av", "title") or "")
        assert log.page_errors == [], str(log)
        await page.close()
