"""SharedMedia and its tiers without a network: one encoding per frame for every subscriber, keyframes
on join and request (coalesced), slow subscribers dropped, the owner's bitrate followed."""

from __future__ import annotations

import asyncio
import fractions
import itertools
from typing import Any

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpsender import RTCEncodedFrame

from rtc_server.media.packet_track import PacketTrack
from rtc_server.media.shared_media import MIN_KEYFRAME_INTERVAL_S, SharedMedia
from rtc_server.media.tier_encoders import VideoTierEncoder
from rtc_server.media.track import PlayoutStats

FPS = 24
SIZE = 64


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FrameSource(MediaStreamTrack):
    """Moving test frames as fast as they are read, each a frame interval later on the fake clock."""

    kind = "video"

    def __init__(self, clock: FakeClock, frames: int) -> None:
        super().__init__()
        self._clock = clock
        self._left = frames
        self._index = 0
        self.stats = PlayoutStats()
        self.more = asyncio.Event()
        self.more.set()

    async def recv(self) -> av.VideoFrame:
        await self.more.wait()
        if self._left == 0 or self.readyState != "live":
            raise MediaStreamError
        self._left -= 1
        pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
        pixels[:, (self._index * 3) % SIZE] = 255
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format="yuv420p")
        frame.pts = self._index * 3750
        frame.time_base = fractions.Fraction(1, 90_000)
        self._index += 1
        self._clock.now += 1 / FPS
        self.stats.frames_released += 1
        await asyncio.sleep(0)
        return frame


def shared(clock: FakeClock, frames: int, **options: Any) -> tuple[SharedMedia, FrameSource]:
    source = FrameSource(clock, frames)
    media = SharedMedia(
        source,  # type: ignore[arg-type]
        fps=FPS,
        bitrate=options.pop("bitrate", 500_000),
        min_bitrate=100_000,
        max_bitrate=2_000_000,
        clock=clock,
        **options,
    )
    return media, source


async def drain(track: PacketTrack, into: list[RTCEncodedFrame]) -> None:
    with pytest.raises(MediaStreamError):
        while True:
            into.append(await track.recv())


async def test_every_subscriber_gets_the_same_payloads_from_one_encoding() -> None:
    clock = FakeClock()
    media, _ = shared(clock, 48)
    tracks = [media.video_track("video/VP8", starts_media=i == 0) for i in range(3)]
    got: list[list[RTCEncodedFrame]] = [[], [], []]
    readers = [asyncio.create_task(drain(t, g)) for t, g in zip(tracks, got, strict=True)]
    await asyncio.gather(*readers)
    [stats] = media.tier_stats()
    assert stats.frames == 48 and stats.subscribers == 3
    # The owner's track (which started the media) has every frame (but the one still queued when the
    # source ended: the tracks end with it); the others from their first keyframe on.
    assert len(got[0]) >= 47
    for other in got[1:]:
        assert other and all(a is b for a, b in zip(got[0][-len(other) :], other, strict=True))
    await media.close()


async def test_a_subscriber_that_stops_reading_is_dropped_and_the_others_get_everything() -> None:
    clock = FakeClock()
    media, _ = shared(clock, 120)
    dropped: list[str] = []
    owner = media.video_track("video/VP8", starts_media=True)
    stuck = media.video_track("video/VP8", on_overflow=lambda: dropped.append("stuck"), max_queued=10)
    # It reads once (its connection is up), then never again.
    first_stuck = asyncio.create_task(stuck.recv())
    got: list[RTCEncodedFrame] = []
    await drain(owner, got)
    await first_stuck
    assert dropped == ["stuck"] and stuck.overflowed
    assert len(got) >= 119  # the last one may be still queued when the source ends
    assert media.tier_stats()[0].dropped == 1
    await media.close()


async def test_a_joining_subscriber_starts_at_a_keyframe_soon_and_requests_are_coalesced() -> None:
    clock = FakeClock()
    media, _ = shared(clock, 96)
    owner = media.video_track("video/VP8", starts_media=True)
    owner_frames: list[RTCEncodedFrame] = []
    reader = asyncio.create_task(drain(owner, owner_frames))
    while len(owner_frames) < 30:
        await asyncio.sleep(0)
    joined_at = clock.now
    viewer = media.video_track("video/VP8")
    first = await viewer.recv()
    assert clock.now - joined_at <= MIN_KEYFRAME_INTERVAL_S + 2 / FPS
    assert first.payloads
    # A receiver asking for a keyframe on every frame gets at most one per interval.
    forced_before = media.tier_stats()[0].forced_keyframes
    start = clock.now
    for _ in range(40):
        media.request_keyframe(viewer)
        await viewer.recv()
    forced = media.tier_stats()[0].forced_keyframes - forced_before
    assert 1 <= forced <= (clock.now - start) / MIN_KEYFRAME_INTERVAL_S + 1
    await reader
    await media.close()


async def test_the_owners_estimate_sets_the_bitrate_within_bounds_and_restarts_the_encoder_once() -> None:
    clock = FakeClock()
    media, _ = shared(clock, 72, bitrate=500_000)
    owner = media.video_track("video/VP8", starts_media=True)
    got: list[RTCEncodedFrame] = []
    reader = asyncio.create_task(drain(owner, got))
    while len(got) < 24:
        await asyncio.sleep(0)
    keyframes = media.tier_stats()[0].keyframes
    media.set_bitrate(50_000_000)  # clamped to the max
    while len(got) < 48:
        await asyncio.sleep(0)
    stats = media.tier_stats()[0]
    assert stats.bitrate == 2_000_000
    assert stats.keyframes == keyframes + 1  # the new encoder's first frame
    media.set_bitrate(1_900_000)  # within 10% of the running encoder's: not worth a new one (and a keyframe)
    await reader
    assert media.tier_stats()[0].keyframes == keyframes + 1
    await media.close()


async def test_closing_ends_every_track_and_retires_the_tiers() -> None:
    clock = FakeClock()
    media, _ = shared(clock, 10_000)
    owner = media.video_track("video/VP8", starts_media=True)
    h264 = media.video_track("video/H264")
    await owner.recv()
    await media.close()
    for track in (owner, h264):
        with pytest.raises(MediaStreamError):
            await track.recv()
    assert media.tier_stats() == [] and {t.mime for t in media.retired} == {"video/VP8", "video/H264"}
    late = media.video_track("video/VP8")
    assert late.readyState == "ended"


def test_h264_tier_payloads_are_annex_b_nal_units_with_parameter_sets_at_keyframes() -> None:
    encoder = VideoTierEncoder("video/H264", fps=FPS, bitrate=500_000)
    frame = av.VideoFrame.from_ndarray(np.full((SIZE, SIZE, 3), 90, np.uint8), format="rgb24").reformat(format="yuv420p")
    frame.pts = 0
    [(rtp, keyframe)] = encoder.encode_rtp(frame, keyframe=True)
    assert keyframe and rtp.timestamp == 0
    nal_types = {payload[0] & 0x1F for payload in rtp.payloads}
    # SPS (7) and PPS (8) ride with the IDR (5), aggregated (STAP-A, 24) or alone.
    assert nal_types & {7, 24}
    assert all(len(p) <= 1300 for p in rtp.payloads)


def test_vp8_picture_ids_follow_one_another_across_a_new_encoder() -> None:
    encoder = VideoTierEncoder("video/VP8", fps=FPS, bitrate=500_000)
    ids = []
    for i in range(4):
        if i == 2:
            encoder.bitrate = 800_000  # a new encoder opens at the next frame
        frame = av.VideoFrame.from_ndarray(np.full((SIZE, SIZE, 3), i * 20, np.uint8), format="rgb24").reformat(format="yuv420p")
        frame.pts = i * 3750
        [(rtp, _)] = encoder.encode_rtp(frame)
        descriptor = rtp.payloads[0]
        ids.append(((descriptor[2] & 0x7F) << 8) | descriptor[3])  # X, I bits set; 15-bit picture id
    assert [(b - a) % (1 << 15) for a, b in itertools.pairwise(ids)] == [1, 1, 1]
    assert encoder.keyframes == 2
