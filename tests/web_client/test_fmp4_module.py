"""web_client/fmp4.js, run in the browser on what the server's own fMP4 encoder makes.

The WebSocket player places a resumed session's stream after what it has buffered from the init
segment's timescale and the first fragment's decode time; both are read here from real segments.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from rtc_server.media.fmp4 import Fmp4Encoder
from tests.conftest import RunningServer, make_config
from tests.web_client.pagekit import new_page

pytestmark = pytest.mark.slow

FPS = 24
FRAMES = 24

PARSE_JS = """async (segments) => {
    const f = await import("/client/fmp4.js");
    const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)).buffer;
    return segments.map(({init, fragments}) => ({
        timescale: f.initTimescale(bytes(init)),
        initDecodeTime: f.fragmentDecodeTime(bytes(init)),
        decodeTimes: fragments.map((b) => f.fragmentDecodeTime(bytes(b))),
        fragmentTimescales: fragments.map((b) => f.initTimescale(bytes(b))),
        junk: [f.initTimescale(new Uint8Array([0, 0, 0, 9, 109, 111, 111, 118, 0]).buffer), f.fragmentDecodeTime(new ArrayBuffer(3))],
    }));
}"""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def test_timescale_and_fragment_decode_times_of_real_segments(
    start_server: Callable[..., Any], launch: Callable[..., Any]
) -> None:
    encoder = Fmp4Encoder(width=64, height=64, fps=FPS, frames_per_fragment=8)
    frames = np.zeros((FRAMES, 64, 64, 3), dtype=np.uint8)
    segments = [encoder.encode_segment(frames) for _ in range(2)]
    server: RunningServer = await start_server(make_config())
    page, _ = await new_page(await launch())
    await page.goto(f"{server.url}/")
    parsed = await page.evaluate(
        PARSE_JS, [{"init": b64(s.init), "fragments": [b64(f) for f in s.fragments]} for s in segments]
    )
    for segment, result in zip(segments, parsed, strict=True):
        timescale = result["timescale"]
        assert isinstance(timescale, int) and timescale > 0, result
        assert result["initDecodeTime"] is None and result["fragmentTimescales"] == [None] * len(segment.fragments)
        # Decode times count on from the segment's place on the encoder's one timeline.
        seconds = [t / timescale for t in result["decodeTimes"]]
        assert seconds[0] == pytest.approx(segment.pts_base_ms / 1000, abs=1 / FPS), (seconds, segment.pts_base_ms)
        assert seconds == sorted(seconds) and len(seconds) == FRAMES // 8, seconds
        assert result["junk"] == [None, None], result
    assert parsed[1]["decodeTimes"][0] / parsed[1]["timescale"] == pytest.approx(FRAMES / FPS, abs=1 / FPS)
    await page.close()
