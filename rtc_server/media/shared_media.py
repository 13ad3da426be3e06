"""A session's WebRTC media, encoded once per codec tier and sent by every subscriber's sender.

One task paces the session's frames (the ``PacedVideoTrack`` as a source, not as anyone's track),
encodes each once per tier in use (VP8, H.264: whatever the owner's and viewers' offers chose) and
offers the packet to every subscriber's ``PacketTrack``; another does the same for the sound
(20 ms frames, one encoder per audio codec). Nobody is waited for: a subscriber whose queue fills
is dropped from its tier (its ``on_overflow``).

Keyframes: a subscriber joins waiting for one, and its join asks for one; so does its PLI. Requests
are coalesced, at most one forced keyframe per ``MIN_KEYFRAME_INTERVAL_S`` per tier, so a viewer
that asks on every packet cannot make every frame a keyframe for everyone; a keyframe costs the
others some bitrate, never a picture. The tier's bitrate follows the owner's receiver estimate
(REMB), within the configured bounds; a viewer's estimate is ignored: a slow viewer is dropped, it
does not lower the picture for the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import av
from aiortc import RTCRtpCodecParameters
from aiortc.codecs import get_encoder
from aiortc.codecs.base import Encoder
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpsender import RTCEncodedFrame

from rtc_server.media.audio_track import PacedAudioTrack
from rtc_server.media.packet_track import PacketTrack
from rtc_server.media.tier_encoders import VIDEO_CODECS, VideoTierEncoder, bitrate_change_needed
from rtc_server.media.track import PacedVideoTrack

__all__ = [
    "MAX_QUEUED_AUDIO_PACKETS",
    "MAX_QUEUED_VIDEO_PACKETS",
    "MIN_KEYFRAME_INTERVAL_S",
    "SharedMedia",
    "TierStats",
]

logger = logging.getLogger(__name__)

MIN_KEYFRAME_INTERVAL_S = 0.25  # forced keyframes per tier at most this often (joins and PLIs coalesce)
BITRATE_SETTLE_S = 1.0  # a new bitrate (a new encoder, a keyframe) at most this often
MAX_QUEUED_VIDEO_PACKETS = 48  # ~2 s at 24 fps waiting for one sender: it has stopped, drop it
MAX_QUEUED_AUDIO_PACKETS = 100  # 2 s of 20 ms packets


@dataclass
class TierStats:
    """What one tier has done: frames encoded, keyframes (forced ones among them), its subscribers."""

    mime: str
    frames: int = 0
    keyframes: int = 0
    forced_keyframes: int = 0
    bitrate: int = 0
    subscribers: int = 0
    dropped: int = 0


@dataclass
class _VideoTier:
    encoder: VideoTierEncoder
    tracks: list[PacketTrack] = field(default_factory=list)
    keyframe_wanted: bool = False
    last_keyframe: float = -1e9
    bitrate_set: float = -1e9
    stats: TierStats = field(default_factory=lambda: TierStats(mime=""))


@dataclass
class _AudioTier:
    encoder: Encoder
    tracks: list[PacketTrack] = field(default_factory=list)


class SharedMedia:
    """The session's encoded media and its subscribers (see the module docstring)."""

    def __init__(
        self,
        video: PacedVideoTrack,
        audio: PacedAudioTrack | None = None,
        *,
        fps: int,
        bitrate: int,
        min_bitrate: int,
        max_bitrate: int,
        label: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = video
        self.audio_source = audio
        self._fps = fps
        self._bitrate = bitrate
        self._bounds = (min_bitrate, max_bitrate)
        self.label = label
        self._clock = clock
        self._video: dict[str, _VideoTier] = {}
        self._audio: dict[tuple[str, int, int | None], _AudioTier] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._audio_wanted = asyncio.Event()  # an audio tier exists: the sound is paced and encoded
        self._closed = False
        self.retired: list[TierStats] = []  # tiers whose last subscriber left

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def started(self) -> bool:
        return bool(self._tasks)

    @property
    def has_audio(self) -> bool:
        return self.audio_source is not None

    # -- subscribers ------------------------------------------------------------------------------

    def video_track(
        self,
        mime: str,
        *,
        on_overflow: Callable[[], None] | None = None,
        starts_media: bool = False,
        max_queued: int = MAX_QUEUED_VIDEO_PACKETS,
    ) -> PacketTrack:
        """A new subscriber's video track on the ``mime`` tier (made on first use); its sender's first read asks for a keyframe.

        ``starts_media``: the owner's track, whose sender's first read starts the pacing (frames wait
        for the owner's connection, as before tiers)."""
        if mime not in VIDEO_CODECS:
            raise ValueError(f"no tier for {mime!r}")
        tier = self._video.get(mime)
        if tier is None:
            encoder = VideoTierEncoder(mime, fps=self._fps, bitrate=self._bitrate)
            tier = self._video[mime] = _VideoTier(encoder=encoder, stats=TierStats(mime=mime, bitrate=self._bitrate))
        wanting = tier

        def first_read() -> None:
            wanting.keyframe_wanted = True  # the track starts at a keyframe: one is coming
            if starts_media:
                self.start()

        track = PacketTrack(
            "video", max_queued=max_queued, on_overflow=self._dropper(tier, on_overflow), on_first_recv=first_read
        )
        tier.tracks.append(track)
        if self._closed:
            track.stop()
        return track

    def audio_track(
        self,
        codec: RTCRtpCodecParameters,
        *,
        on_overflow: Callable[[], None] | None = None,
        max_queued: int = MAX_QUEUED_AUDIO_PACKETS,
    ) -> PacketTrack:
        """A new subscriber's audio track on ``codec``'s tier (an aiortc encoder, made on first use)."""
        key = (codec.mimeType.lower(), codec.clockRate, codec.channels)
        tier = self._audio.get(key)
        if tier is None:
            tier = self._audio[key] = _AudioTier(encoder=get_encoder(codec))
            self._audio_wanted.set()
        track = PacketTrack("audio", max_queued=max_queued, on_overflow=self._audio_dropper(tier, on_overflow))
        tier.tracks.append(track)
        if self._closed:
            track.stop()
        return track

    def remove(self, track: PacketTrack) -> None:
        """A subscriber left: stop its track; a tier without subscribers is closed."""
        track.stop()
        for mime, tier in list(self._video.items()):
            if track in tier.tracks:
                tier.tracks.remove(track)
                if not tier.tracks:
                    self._retire(mime)
        for key, audio in list(self._audio.items()):
            if track in audio.tracks:
                audio.tracks.remove(track)
                if not audio.tracks:
                    del self._audio[key]

    def request_keyframe(self, track: PacketTrack) -> None:
        """``track``'s receiver lost the picture (PLI/FIR): its tier sends a keyframe soon."""
        for tier in self._video.values():
            if track in tier.tracks:
                tier.keyframe_wanted = True

    def set_bitrate(self, bps: int) -> None:
        """The owner's receiver estimate: every tier aims at it (within the bounds) from the next change on."""
        low, high = self._bounds
        self._bitrate = max(low, min(int(bps), high))

    def tier_stats(self) -> list[TierStats]:
        """Each live tier's counters."""
        stats = []
        for tier in self._video.values():
            tier.stats.subscribers = len(tier.tracks)
            stats.append(tier.stats)
        return stats

    def _dropper(self, tier: _VideoTier, then: Callable[[], None] | None) -> Callable[[], None]:
        def overflowed() -> None:
            tier.stats.dropped += 1
            logger.info("%s: a %s subscriber's queue is full; dropped from its tier", self.label, tier.encoder.mime)
            if then is not None:
                then()

        return overflowed

    def _audio_dropper(self, tier: _AudioTier, then: Callable[[], None] | None) -> Callable[[], None]:
        def overflowed() -> None:
            logger.info("%s: an audio subscriber fell behind; dropped", self.label)
            if then is not None:
                then()

        return overflowed

    def _retire(self, mime: str) -> None:
        tier = self._video.pop(mime)
        tier.encoder.close()
        self.retired.append(tier.stats)

    # -- the media tasks ----------------------------------------------------------------------------

    def start(self) -> None:
        """Begin pacing and encoding (once; the owner's sender's first read calls it)."""
        if self._tasks or self._closed:
            return
        self._tasks.append(asyncio.create_task(self._run_video(), name=f"media-video-{self.label}"))
        if self.audio_source is not None:
            self._tasks.append(asyncio.create_task(self._run_audio(), name=f"media-audio-{self.label}"))

    async def _run_video(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                frame = await self.source.recv()
                jobs = self._video_jobs()
                if not jobs:
                    continue
                encoded = await loop.run_in_executor(None, _encode_all, frame, jobs)
                self._fan_out_video(encoded)
        except MediaStreamError:
            pass
        finally:
            self._end_tracks()

    def _video_jobs(self) -> list[tuple[_VideoTier, bool]]:
        now = self._clock()
        jobs = []
        for tier in self._video.values():
            force = tier.keyframe_wanted and now - tier.last_keyframe >= MIN_KEYFRAME_INTERVAL_S
            if force:
                tier.keyframe_wanted = False
                tier.stats.forced_keyframes += 1
            if bitrate_change_needed(tier.encoder.bitrate, self._bitrate) and now - tier.bitrate_set >= BITRATE_SETTLE_S:
                tier.encoder.bitrate = tier.stats.bitrate = self._bitrate  # the next frame opens a new encoder
                tier.bitrate_set = now
            jobs.append((tier, force))
        return jobs

    def _fan_out_video(self, encoded: list[tuple[_VideoTier, list[tuple[RTCEncodedFrame, bool]]]]) -> None:
        now = self._clock()
        for tier, frames in encoded:
            tier.stats.frames += 1
            for rtp, keyframe in frames:
                if keyframe:
                    tier.last_keyframe = now
                    tier.stats.keyframes += 1
                for track in list(tier.tracks):
                    track.offer(rtp, keyframe=keyframe)

    async def _run_audio(self) -> None:
        assert self.audio_source is not None
        try:
            while True:
                if not self._audio:
                    # Nobody takes the sound (an owner without an audio section, no viewer yet): no
                    # frames are made for nobody. The audio clock skips the ticks it missed meanwhile.
                    self._audio_wanted.clear()
                    await self._audio_wanted.wait()
                frame = await self.audio_source.recv()
                for tier in list(self._audio.values()):
                    payloads, timestamp = tier.encoder.encode(frame)
                    if not payloads:
                        continue  # the encoder is still buffering
                    rtp = RTCEncodedFrame(payloads, timestamp, None)  # type: ignore[arg-type]
                    for track in list(tier.tracks):
                        track.offer(rtp)
        except MediaStreamError:
            pass

    def _end_tracks(self) -> None:
        for tier in self._video.values():
            for track in tier.tracks:
                track.stop()
        for audio in self._audio.values():
            for track in audio.tracks:
                track.stop()

    async def close(self) -> None:
        """Stop the sources, the tasks and every subscriber's track (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.source.stop()
        if self.audio_source is not None:
            self.audio_source.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._end_tracks()
        for mime in list(self._video):
            self._retire(mime)
        self._audio.clear()


def _encode_all(
    frame: av.VideoFrame, jobs: list[tuple[_VideoTier, bool]]
) -> list[tuple[_VideoTier, list[tuple[RTCEncodedFrame, bool]]]]:
    # In an executor thread: each tier's encoder is used by this one call at a time.
    return [(tier, tier.encoder.encode_rtp(frame, keyframe=force)) for tier, force in jobs]
