"""Benchmark: sound in the WebSocket fMP4 stream: A/V offset, and what the AAC track costs in CPU.

The synthetic backend (audio on) makes ``--segments`` segments, handed over one frame at a time with
the audio each frame owns, as the WebSocket sink gets them. (a) They are encoded with sound by
``rtc_server.media.fmp4.Fmp4Encoder`` (H.264 + AAC) and, in the same run, (b) the same frames
without sound (H.264 only). Reported:

- A/V offset: the segments' init+fragments appended as an MSE player appends them, decoded by
  ffmpeg; each segment's first frame (found by the frame marker) has a presentation time, the click
  the synthetic sound starts every segment with has an onset in the decoded AAC; offset = onset -
  frame time (positive: sound late), median and max of |offset| over the segments.
- Encode CPU seconds (process CPU time, all threads) per second of stream, with and without sound.

    python bench/av_fmp4.py --segments 10 --size 512
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

# Runnable as a plain script from the repository root without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu.audio import AudioFormat
from gpu.frame_marker import cell_size_for_width, read_marker
from gpu.generator import ContinuationState, SegmentRequest
from gpu.synthetic import SyntheticGenerator
from rtc_server.media.fmp4 import Fmp4Encoder

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "av_fmp4.json"
FPS = 24
MS_PER_S = 1000.0
FFMPEG_TIMEOUT_S = 120.0
ONSET_LEVEL = 0.5  # the synthetic tone stays at 0.15, its clicks start at 0.9
QUIET_S = 0.01  # an onset follows at least this long below the level
PROMPT = "a red fox running through fresh snow"

Chunk = tuple[np.ndarray, np.ndarray | None]


def generate(segments: int, frames: int, size: int) -> tuple[list[list[Chunk]], AudioFormat]:
    """Per segment, the (frame, audio) chunks the synthetic backend hands over."""
    generator = SyntheticGenerator()
    audio_format = generator.audio_format
    assert audio_format is not None
    state: ContinuationState | None = None
    made: list[list[Chunk]] = []
    for idx in range(segments):
        chunks: list[Chunk] = []
        request = SegmentRequest(
            prompt=PROMPT, width=size, height=size, num_frames=frames, fps=FPS,
            segment_idx=idx, continuation=state, num_inference_steps=1,
        )

        def keep(frames: np.ndarray, audio: np.ndarray | None, chunks: list[Chunk] = chunks) -> None:
            chunks.append((frames.copy(), audio))

        result = generator.generate(request, None, keep)
        state = result.continuation
        made.append(chunks)
    return made, audio_format


def encode(encoder: Fmp4Encoder, segments: list[list[Chunk]], *, sound: bool) -> tuple[bytes, float]:
    """All segments as one MSE append stream, and the process CPU seconds the encoding took."""
    data = bytearray()
    cpu_start = time.process_time()
    for chunks in segments:
        source: Iterator[object] = iter(chunks if sound else [frames for frames, _ in chunks])
        num_frames = sum(len(frames) for frames, _ in chunks)
        with encoder.encode_stream(source, num_frames=num_frames) as stream:
            for chunk in stream:
                data += chunk
    return bytes(data), time.process_time() - cpu_start


def segment_start_times(path: Path, size: int) -> list[float]:
    """Presentation time (s) of each segment's first frame, found by the frame marker."""
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_frames", "-show_entries",
         "frame=best_effort_timestamp_time", "-of", "json", str(path)],
        capture_output=True, text=True, check=True, timeout=FFMPEG_TIMEOUT_S,
    )
    times = [float(f["best_effort_timestamp_time"]) for f in json.loads(probe.stdout)["frames"]]
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True, timeout=FFMPEG_TIMEOUT_S,
    ).stdout
    pixels = np.frombuffer(raw, np.uint8).reshape(-1, size, size, 3)
    cell = cell_size_for_width(size)
    starts: list[float] = []
    previous: int | None = None
    for at, frame in zip(times, pixels, strict=True):
        marker = read_marker(frame, cell_px=cell)
        if marker is None:
            raise RuntimeError(f"no frame marker readable at {at:.3f} s")
        if marker.segment_idx != previous:
            starts.append(at)
            previous = marker.segment_idx
    return starts


def click_onsets(path: Path, rate: int) -> list[float]:
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:a:0", "-f", "f32le", "-ac", "1", "-"],
        capture_output=True, check=True, timeout=FFMPEG_TIMEOUT_S,
    ).stdout
    loud = np.flatnonzero(np.abs(np.frombuffer(raw, np.float32)) > ONSET_LEVEL)
    quiet = int(rate * QUIET_S)
    return [int(at) / rate for i, at in enumerate(loud) if i == 0 or at - loud[i - 1] > quiet]


def av_offsets_ms(data: bytes, size: int, rate: int) -> list[float]:
    """Per segment whose start has been heard: click onset minus first-frame time (ms)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "av.mp4"
        path.write_bytes(data)
        starts = segment_start_times(path, size)
        onsets = click_onsets(path, rate)
    offsets = []
    for start in starts:
        nearest = min(onsets, key=lambda onset: abs(onset - start))
        if abs(nearest - start) < 0.5:  # the last segment's tail may still be in the encoder
            offsets.append((nearest - start) * MS_PER_S)
    return offsets


def ffmpeg_version() -> str:
    result = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=True)
    return result.stdout.splitlines()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=10, help="segments in the stream (default 10)")
    parser.add_argument("--frames", type=int, default=24, help="frames per segment (default 24)")
    parser.add_argument("--size", type=int, default=512, help="frame width = height in px (default 512)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        parser.error("ffmpeg is not installed (apt-get install -y ffmpeg)")

    logger.info("generating %d segments of %d frames at %dx%d ...", args.segments, args.frames, args.size, args.size)
    segments, audio_format = generate(args.segments, args.frames, args.size)
    stream_s = args.segments * args.frames / FPS

    # Warm-up (first-use costs in libx264 and the AAC encoder), then both encodes, alternating twice.
    warm = Fmp4Encoder(width=args.size, height=args.size, fps=FPS, audio_format=audio_format)
    encode(warm, segments[:1], sound=True)
    cpu: dict[str, list[float]] = {"av": [], "video": []}
    av_data = b""
    for _ in range(2):
        with_sound = Fmp4Encoder(width=args.size, height=args.size, fps=FPS, audio_format=audio_format)
        av_data, seconds = encode(with_sound, segments, sound=True)
        cpu["av"].append(seconds)
        video_only = Fmp4Encoder(width=args.size, height=args.size, fps=FPS)
        cpu["video"].append(encode(video_only, segments, sound=False)[1])
    cpu_per_s = {name: min(values) / stream_s for name, values in cpu.items()}

    offsets = av_offsets_ms(av_data, args.size, audio_format.sample_rate)
    if len(offsets) < args.segments - 1:
        raise RuntimeError(f"heard only {len(offsets)} of {args.segments} segment starts")
    magnitudes = [abs(o) for o in offsets]
    summary = {
        "segments_measured": len(offsets),
        "median_abs_ms": statistics.median(magnitudes),
        "max_abs_ms": max(magnitudes),
        "mean_signed_ms": statistics.fmean(offsets),
        "frame_ms": MS_PER_S / FPS,
    }

    print(f"\n{args.segments} segments x {args.frames} frames {args.size}x{args.size} @ {FPS} fps,"
          f" AAC {audio_format.sample_rate} Hz x{audio_format.channels}")
    print(f"A/V offset (click onset - first frame), {len(offsets)} segment starts:"
          f" median |offset| {summary['median_abs_ms']:.2f} ms, max {summary['max_abs_ms']:.2f} ms"
          f" (one frame is {summary['frame_ms']:.1f} ms)")
    print("encode CPU s per s of stream (min of 2 runs):"
          f" H.264+AAC {cpu_per_s['av']:.3f}, H.264 only {cpu_per_s['video']:.3f},"
          f" AAC adds {cpu_per_s['av'] - cpu_per_s['video']:+.3f}")

    result = {
        "benchmark": "av_fmp4",
        "config": {"segments": args.segments, "frames": args.frames, "width": args.size, "height": args.size,
                   "fps": FPS, "sample_rate": audio_format.sample_rate, "channels": audio_format.channels,
                   "preset": "ultrafast", "frames_per_fragment": 1},
        "av_offset_ms": {**summary, "offsets": offsets},
        "encode_cpu_s_per_stream_s": {**cpu_per_s, "runs": cpu},
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "pyav": av.__version__,
            "ffmpeg": ffmpeg_version(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
