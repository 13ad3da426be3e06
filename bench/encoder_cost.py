"""Benchmark (a): the physical limit, the bare encoder's CPU cost per frame.

Encodes synthetic-generator frames with the encoders the stream itself uses, at
the same settings: aiortc's VP8 encoder at the configured start bitrate (what a
WebRTC session runs per frame) and the in-process fMP4/H.264 encoder (the
WebSocket path), at 256x256, 512x512 and 1280x720. CPU seconds come from
getrusage (all threads of this process), so codec threads count.

Usage: python bench/encoder_cost.py [--frames 96] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from av import VideoFrame  # noqa: E402

from gpu.generator import SegmentRequest  # noqa: E402
from gpu.synthetic import SyntheticGenerator  # noqa: E402
from rtc_server.config import WebRTCConfig, WebSocketConfig  # noqa: E402
from rtc_server.media.fmp4 import Fmp4Encoder  # noqa: E402
from rtc_server.media.pacing import RTP_VIDEO_CLOCK_HZ  # noqa: E402
from rtc_server.transports.ice import apply_bitrate_bounds  # noqa: E402

SIZES = ((256, 256), (512, 512), (1280, 720))
PASSES = 3  # encode the frames this many times and keep the fastest pass
FPS = 24


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def frames_for(width: int, height: int, count: int) -> np.ndarray:
    generator = SyntheticGenerator()
    request = SegmentRequest(prompt="a red fox running through fresh snow", width=width, height=height, num_frames=count, fps=FPS)
    return generator.generate(request).frames


def vp8_cost(frames: np.ndarray) -> dict[str, float]:
    """Per-frame CPU and wall time of aiortc's VP8 encoder, as RTCRtpSender drives it."""
    from fractions import Fraction

    from aiortc.codecs import get_encoder
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    encoder = get_encoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=RTP_VIDEO_CLOCK_HZ, payloadType=96))
    video_frames = []
    for index, pixels in enumerate(frames):
        frame = VideoFrame.from_ndarray(pixels, format="rgb24")
        frame.pts = index * RTP_VIDEO_CLOCK_HZ // FPS
        frame.time_base = Fraction(1, RTP_VIDEO_CLOCK_HZ)
        video_frames.append(frame)
    encoder.encode(video_frames[0], False)  # codec open outside the measurement
    count = len(video_frames) - 1
    passes = []
    for _ in range(PASSES):
        cpu, wall = cpu_seconds(), time.perf_counter()
        for frame in video_frames[1:]:
            encoder.encode(frame, False)
        passes.append(((cpu_seconds() - cpu) * 1000 / count, (time.perf_counter() - wall) * 1000 / count))
    # The least disturbed pass: other processes on a small machine only ever add time.
    cpu_ms, wall_ms = min(passes)
    return {"cpu_ms_per_frame": cpu_ms, "wall_ms_per_frame": wall_ms}


def fmp4_cost(frames: np.ndarray, settings: WebSocketConfig) -> dict[str, float]:
    height, width = frames.shape[1:3]
    encoder = Fmp4Encoder(width=width, height=height, fps=FPS, crf=settings.crf, preset=settings.preset, profile=settings.profile)
    encoder.encode_segment(frames[:FPS])  # warm
    cpu, wall = cpu_seconds(), time.perf_counter()
    encoder.encode_segment(frames)
    return {
        "cpu_ms_per_frame": (cpu_seconds() - cpu) * 1000 / len(frames),
        "wall_ms_per_frame": (time.perf_counter() - wall) * 1000 / len(frames),
    }


def measure(frames_per_size: int) -> dict[str, Any]:
    webrtc = WebRTCConfig()
    apply_bitrate_bounds(min_bps=webrtc.min_bitrate, max_bps=webrtc.max_bitrate, start_bps=webrtc.start_bitrate)
    results: dict[str, Any] = {"fps": FPS, "vp8_start_bitrate_bps": webrtc.start_bitrate, "sizes": {}}
    for width, height in SIZES:
        frames = frames_for(width, height, frames_per_size)
        results["sizes"][f"{width}x{height}"] = {
            "vp8_webrtc": vp8_cost(frames),
            "h264_fmp4": fmp4_cost(frames, WebSocketConfig()),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "encoder_cost.json")
    args = parser.parse_args()
    results = measure(args.frames)
    print(f"{'size':>10}  {'VP8 cpu ms/frame':>17}  {'H.264 fMP4 cpu ms/frame':>24}")
    for size, row in results["sizes"].items():
        print(f"{size:>10}  {row['vp8_webrtc']['cpu_ms_per_frame']:17.2f}  {row['h264_fmp4']['cpu_ms_per_frame']:24.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
