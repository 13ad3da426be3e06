"""Sound with the picture over WebRTC, end to end on loopback: a real aiortc peer, the real server.

The synthetic backend clicks at the first sample of every segment (with 12-frame segments every
click is a segment start) and marks each frame with its segment. How A/V sync is measured: at the
client, by arrival on the wire, as a receiver that plays what arrives at once would present it. A
video frame's time is when its first RTP packet arrived; a click's is when its audio packet arrived
plus the click's place in the packet. Each stream's arrivals are smoothed along its own RTP clock
(its position plus the running median of arrival minus position), so that one packet delayed by a
busy loop on either side does not count as an offset while a real shift still does. Decode time
would not do: aiortc holds audio back four packets (80 ms) and video one frame before decoding,
which is the receiver's doing, not the server's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from gpu.subprocess_pool import SubprocessGpuPool
from rtc_server.app import POOL, WEBRTC
from rtc_server.clients.webrtc_client import WebRTCClient
from rtc_server.media.audio_track import AUDIO_FRAME_S, MAX_CATCH_UP_S
from tests.conftest import RunningServer, make_config
from tests.waiting import wait_until

FPS = 24
FRAME_S = 1 / FPS  # 42 ms: the sync bound
NUM_FRAMES = 12  # half-second segments: every click (segment starts, stream frames 0, 24, 48...) starts a segment
CLICK_THRESHOLD = 0.5  # the click peaks at 0.9, the tone at 0.15
SILENCE = 0.02  # Opus's decoded silence stays far below the tone
BURST_WINDOW_S = 0.5
# 20 ms packets: 25 in half a second, plus what a late audio tick sends at once (up to MAX_CATCH_UP_S)
# and a little jitter. A stall's sound replayed afterwards would be many more.
BURST_MAX_PACKETS = 25 + round(MAX_CATCH_UP_S / AUDIO_FRAME_S) + 2
INIT = {"curated_prompts": ["a red fox running through fresh snow"], "loop_generation_enabled": True}


def sampling(**overrides: Any) -> dict[str, Any]:
    return {"width": 128, "height": 128, "fps": FPS, "num_frames": NUM_FRAMES, "num_inference_steps": 1, **overrides}


def config(steps: int = 1, **sections: dict[str, Any]) -> Any:
    return make_config(default_request={"sampling": sampling(num_inference_steps=steps)}, **sections)


async def open_client(server: RunningServer, *, receive_audio: bool = True) -> WebRTCClient:
    client = WebRTCClient(server.url, session_init=INIT, receive_audio=receive_audio)
    try:
        await client.connect()
    except BaseException:
        await client.close()
        raise
    return client


def shown_segments(client: WebRTCClient) -> set[int]:
    return {f.marker.segment_idx for f in client.frames if f.marker is not None}


def smoothed(arrivals: list[float], positions_s: list[float], half_window: int) -> np.ndarray:
    """Arrival times along the stream's own clock: position + running median of (arrival - position)."""
    position = np.asarray(positions_s)
    lateness = np.asarray(arrivals) - position
    medians = [np.median(lateness[max(0, i - half_window) : i + half_window + 1]) for i in range(len(lateness))]
    return position + np.asarray(medians)


def audio_timeline(client: WebRTCClient) -> tuple[np.ndarray, np.ndarray]:
    """Every received sample and when it was due at the client (arrival of its packet + its place)."""
    frames = [a for a in client.audio if a.arrived_at is not None]
    assert frames, "no audio arrived"
    rate = frames[0].sample_rate
    starts = smoothed([a.arrived_at for a in frames], [a.pts / rate for a in frames], half_window=12)  # type: ignore[misc]
    times = np.concatenate([start + np.arange(len(a.samples)) / rate for start, a in zip(starts, frames, strict=True)])
    return times, np.concatenate([a.samples for a in frames])


def click_onsets(client: WebRTCClient) -> list[float]:
    times, samples = audio_timeline(client)
    loud = np.flatnonzero(np.abs(samples) > CLICK_THRESHOLD)
    onsets: list[float] = []
    for index in loud:
        if not onsets or times[index] - onsets[-1] > 0.1:  # a click lasts 6 ms; clicks are >= 0.5 s apart
            onsets.append(float(times[index]))
    return onsets


def segment_starts(client: WebRTCClient) -> dict[int, float]:
    frames = [f for f in client.frames if f.arrived_at is not None and f.pts is not None]
    times = smoothed([f.arrived_at for f in frames], [f.pts / 90_000 for f in frames], half_window=6)  # type: ignore[misc, operator]
    starts: dict[int, float] = {}
    for frame, at in zip(frames, times, strict=True):
        if frame.marker is not None:
            starts.setdefault(frame.marker.segment_idx, float(at))
    return starts


def assert_in_sync(client: WebRTCClient, *, at_least: int) -> list[float]:
    """Every segment start has its click within a frame interval, and every click its segment start."""
    starts = segment_starts(client)
    onsets = click_onsets(client)
    last_heard = onsets[-1] if onsets else 0.0
    checked = {idx: t for idx, t in starts.items() if t < last_heard - 0.1}  # its audio has surely arrived
    assert len(checked) >= at_least, f"only {len(checked)} segment starts with audio after them"
    offsets = []
    for idx, start in sorted(checked.items()):
        nearest = min(onsets, key=lambda onset: abs(onset - start))
        offsets.append(nearest - start)
        assert abs(nearest - start) < FRAME_S, (
            f"segment {idx}: click {1000 * (nearest - start):+.0f} ms from its first frame"
        )
    first, last = min(checked.values()), max(checked.values())
    clicks_between = [o for o in onsets if first - FRAME_S < o < last + FRAME_S]
    assert len(clicks_between) == len(checked), "a click without its segment start: audio replayed or bunched"
    return offsets


def held_spans(client: WebRTCClient, min_s: float) -> list[tuple[float, float]]:
    """Arrival spans over which the video repeated one frame for at least ``min_s``."""
    spans = []
    frames = [f for f in client.frames if f.marker is not None and f.arrived_at is not None]
    run_start = 0
    for i in range(1, len(frames) + 1):
        if i == len(frames) or frames[i].marker.frame_number != frames[run_start].marker.frame_number:  # type: ignore[union-attr]
            first, last = frames[run_start].arrived_at, frames[i - 1].arrived_at
            assert first is not None and last is not None
            if last - first >= min_s:
                spans.append((first, last))
            run_start = i
    return spans


def assert_silent_while_held(client: WebRTCClient, spans: list[tuple[float, float]]) -> None:
    times, samples = audio_timeline(client)
    for first, last in spans:
        # From one frame after the held frame's own slot until shortly before the next new frame.
        window = (times > first + 2 * FRAME_S) & (times < last - FRAME_S)
        assert window.any(), "no audio while the video held"
        assert np.abs(samples[window]).max() < SILENCE, "sound while the video held its last frame"


def assert_no_burst(client: WebRTCClient) -> None:
    """Sound arrives at the wall clock's pace: in any half second, at most half a second of it plus
    a late tick's catch-up and some jitter (a burst would replay a stall)."""
    arrivals = np.array([a.arrived_at for a in client.audio if a.arrived_at is not None])
    for at in arrivals:
        assert np.count_nonzero((arrivals >= at) & (arrivals < at + BURST_WINDOW_S)) <= BURST_MAX_PACKETS


async def test_clicks_and_segment_starts_agree_across_a_pause(start_server: Any) -> None:
    server = await start_server(config())
    async with await open_client(server) as client:
        await client.wait_channel_open()
        await wait_until(lambda: 3 in shown_segments(client), 10, "no segment 3")
        await client.send({"type": "generation_paused_updated", "paused": True})
        await asyncio.sleep(2.0)  # what was generated plays out, then the video holds
        await client.send({"type": "generation_paused_updated", "paused": False})
        resumed = max(shown_segments(client))
        await wait_until(lambda: resumed + 3 in shown_segments(client), 10, "no segments after resuming")
        await asyncio.sleep(0.3)
        assert_in_sync(client, at_least=6)
        spans = held_spans(client, min_s=0.5)
        assert spans, "the pause should have held the video"
        assert_silent_while_held(client, spans)
        assert_no_burst(client)


async def test_a_stall_is_silent_and_the_sound_resumes_in_sync_without_a_burst(start_server: Any) -> None:
    """Half-second segments that take 0.8 s to make: the video holds between them, every time."""
    server = await start_server(config(steps=2, generator={"backend": "synthetic", "options": {"step_delay_s": 0.4}}))
    async with await open_client(server) as client:
        await wait_until(lambda: 5 in shown_segments(client), 15, "no segment 5")
        await asyncio.sleep(0.3)
        assert_in_sync(client, at_least=5)
        spans = held_spans(client, min_s=0.2)
        assert len(spans) >= 3, "generation slower than real time should stall the video"
        assert_silent_while_held(client, spans)
        assert_no_burst(client)
        # The sound of a stall is not kept for later: as much tone as frames shown, no more.
        _, samples = audio_timeline(client)
        sounding_s = np.count_nonzero(np.abs(samples) > SILENCE) / 48_000
        shown = {f.marker.frame_number for f in client.frames if f.marker is not None}
        assert sounding_s < 1.05 * len(shown) / FPS


async def test_clicks_stay_in_sync_when_the_worker_is_killed_mid_stream(start_server: Any) -> None:
    server = await start_server(
        config(
            pool={"backend": "subprocess", "num_workers": 2, "sessions_per_worker": 1, "restart_delay_seconds": 0.2},
            generator={"backend": "synthetic", "options": {"step_delay_s": 0.1}},
        )
    )
    pool = server.app[POOL]
    assert isinstance(pool, SubprocessGpuPool)
    async with await open_client(server) as client:
        await wait_until(lambda: 2 in shown_segments(client), 15, "no segment 2")
        worker = pool.binding(client.session_id or "")
        assert worker is not None
        deadline = time.monotonic() + 10
        while not pool.status().gpu_status[worker].busy:
            assert time.monotonic() < deadline, "the worker never started a segment"
            await asyncio.sleep(0.01)
        pool.kill_worker(worker)
        error = await client.wait_for_event("error", timeout=5)
        assert error["code"] == "worker_failed"
        after = max(shown_segments(client))
        await wait_until(lambda: after + 3 in shown_segments(client), 15, "no segments after the failover")
        await asyncio.sleep(0.3)
        assert_in_sync(client, at_least=5)
        assert_no_burst(client)


async def test_an_offer_without_audio_gets_video_only(start_server: Any) -> None:
    server = await start_server(config())
    async with await open_client(server, receive_audio=False) as client:
        await wait_until(lambda: client.frame_count >= 24, 10, "no video")
        assert "m=audio" not in (client.pc.remoteDescription.sdp or "")
        (peer,) = server.app[WEBRTC]._peers.values()
        assert peer.audio_track is None


async def test_a_backend_without_sound_gets_video_only_with_audio_offered(start_server: Any) -> None:
    server = await start_server(config(generator={"backend": "synthetic", "options": {"audio": False}}))
    assert server.app[POOL].audio_format is None
    async with await open_client(server) as client:
        await wait_until(lambda: client.frame_count >= 24, 10, "no video")
        answer = client.pc.remoteDescription.sdp
        audio_section = answer[answer.index("m=audio") :]
        assert "a=inactive" in audio_section, "the audio m-line should be answered without a track"
        assert client.audio_frame_count == 0
        assert {f.marker.segment_idx for f in client.frames if f.marker} >= {0}
