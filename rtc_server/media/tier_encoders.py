"""Encoders of the shared WebRTC tiers: a frame in, packets out, ready for any number of senders. Pure PyAV.

Each frame is encoded once and cut into RTP payloads once (aiortc's own packetisers: H.264 from Annex B,
parameter sets in band as libx264 writes them without a global header; VP8 with its picture id),
so every sender sends the same payloads. The settings follow aiortc's own encoders, so a viewer sees
what an owner saw before tiers.
"""

from __future__ import annotations

import fractions
import os
import random
from dataclasses import dataclass

import av
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder, number_of_threads
from aiortc.rtcrtpsender import RTCEncodedFrame
from av.codec.context import CodecContext
from av.video.codeccontext import VideoCodecContext

__all__ = ["VIDEO_CODECS", "VideoTierEncoder", "bitrate_change_needed"]

VIDEO_CODECS = ("video/VP8", "video/H264")  # mime types (as aiortc names them) a tier can encode
_RTP_TIME_BASE = fractions.Fraction(1, 90_000)
_RETUNE_RATIO = 0.1  # a bitrate nearer than this to the current one is not worth a new encoder (and a keyframe)


def _threads(width: int, height: int) -> int:
    # As aiortc's own encoders: one thread up to 640x480, more for larger pictures on more cores.
    return number_of_threads(width * height, os.cpu_count() or 1)


def bitrate_change_needed(current: int, wanted: int) -> bool:
    """Whether ``wanted`` differs enough from ``current`` to restart the encoder at it."""
    return abs(wanted - current) > _RETUNE_RATIO * current


@dataclass
class _Opened:
    context: VideoCodecContext
    width: int
    height: int
    bitrate: int


class VideoTierEncoder:
    """One codec's encoder for a session: yuv420p frames in, one packet per frame out (pts on the 90 kHz clock).

    Not thread-safe: one caller at a time (the tier's encoding runs one frame after another).
    """

    def __init__(self, mime: str, *, fps: int, bitrate: int) -> None:
        if mime not in VIDEO_CODECS:
            raise ValueError(f"no tier encoder for {mime!r} (have {', '.join(VIDEO_CODECS)})")
        self.mime = mime
        self._fps = fps
        self.bitrate = bitrate
        self._opened: _Opened | None = None
        self._picture_id = random.randint(0, (1 << 15) - 1)  # VP8's, continued across encoders
        self.frames = 0
        self.keyframes = 0

    def encode_rtp(self, frame: av.VideoFrame, *, keyframe: bool = False) -> list[tuple[RTCEncodedFrame, bool]]:
        """Encode ``frame`` and cut it into RTP payloads: (what a sender sends, whether it is a keyframe)."""
        return [(self.packetize(packet), bool(packet.is_keyframe)) for packet in self.encode(frame, keyframe=keyframe)]

    def packetize(self, packet: av.Packet) -> RTCEncodedFrame:
        """One encoded frame's RTP payloads and its timestamp (90 kHz)."""
        data = bytes(packet)
        if self.mime == "video/H264":
            payloads = H264Encoder._packetize(H264Encoder._split_bitstream(data))
        else:
            payloads = Vp8Encoder._packetize(data, self._picture_id)
            self._picture_id = (self._picture_id + 1) % (1 << 15)
        return RTCEncodedFrame(payloads, int(packet.pts), None)  # type: ignore[arg-type]

    def encode(self, frame: av.VideoFrame, *, keyframe: bool = False) -> list[av.Packet]:
        """Encode ``frame`` (its ``pts`` on the 90 kHz clock); ``keyframe`` forces a complete picture."""
        opened = self._opened
        if opened is None or (opened.width, opened.height) != (frame.width, frame.height) or opened.bitrate != self.bitrate:
            opened = self._opened = self._open(frame.width, frame.height)
            keyframe = True  # a new encoder starts with one anyway: count it
        pts = frame.pts
        frame.pict_type = av.video.frame.PictureType.I if keyframe else av.video.frame.PictureType.NONE
        frame.pts = self.frames
        frame.time_base = opened.context.time_base
        packets = list(opened.context.encode(frame))
        frame.pts = pts
        self.frames += 1
        for packet in packets:
            packet.pts = pts
            packet.dts = pts
            packet.time_base = _RTP_TIME_BASE
            if packet.is_keyframe:
                self.keyframes += 1
        return packets

    def _open(self, width: int, height: int) -> _Opened:
        context = CodecContext.create("libx264" if self.mime == "video/H264" else "libvpx", "w")
        assert isinstance(context, VideoCodecContext)
        context.width, context.height = width, height
        context.pix_fmt = "yuv420p"
        context.bit_rate = self.bitrate
        context.framerate = fractions.Fraction(self._fps, 1)
        context.time_base = fractions.Fraction(1, self._fps)
        if self.mime == "video/H264":
            context.profile = "Baseline"
            context.options = {"level": "31", "tune": "zerolatency", "preset": "veryfast"}
            context.thread_count = _threads(width, height)  # zerolatency: sliced threads, still one packet a frame
        else:
            context.gop_size = 3000  # keyframes when asked (a join, a PLI), not on a schedule
            context.qmin, context.qmax = 2, 56
            bitrate = str(self.bitrate)
            context.options = {
                "bufsize": bitrate,
                "cpu-used": "-6",
                "deadline": "realtime",
                "lag-in-frames": "0",
                "minrate": bitrate,
                "maxrate": bitrate,
                "noise-sensitivity": "4",
                "overshoot-pct": "15",
                "partitions": "0",
                "static-thresh": "1",
                "undershoot-pct": "100",
            }
            context.thread_count = _threads(width, height)
        context.open()
        return _Opened(context, width, height, self.bitrate)

    def close(self) -> None:
        """Drop the codec context (a later frame opens a new one)."""
        self._opened = None
