"""Benchmark: one fMP4 segment encoded in-process with PyAV vs. an ffmpeg subprocess per segment.

(a) ``rtc_server.media.fmp4.Fmp4Encoder`` (the service's path), (b) the original system's approach:
spawn ``ffmpeg`` per segment, feed raw RGB on stdin, read fMP4 from stdout in a thread. The ffmpeg
figures include process start-up, as the original paid it for every segment. Both encode the same
synthetic moving frames. Reports time to first byte, time to the first complete moof+mdat (the first
thing a player can show) and total time, as medians over ``--repeats`` runs.

    python bench/fmp4_encode.py --repeats 10 --frames 24 --size 512
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
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

# Runnable as a plain script from the repository root without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rtc_server.media.fmp4 import Fmp4Encoder  # noqa: E402

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "fmp4_encode.json"
FPS = 24
READ_CHUNK_BYTES = 65_536
FFMPEG_TIMEOUT_S = 60.0
MS_PER_S = 1000.0


@dataclass(frozen=True)
class Run:
    """Timings of one segment encode, in ms from the start of the call (or process spawn)."""

    first_byte_ms: float
    first_fragment_ms: float
    total_ms: float
    output_bytes: int


def synthetic_frames(num_frames: int, size: int) -> np.ndarray:
    """Moving gradients plus a sliding checkerboard: changes every frame, compresses like video."""
    y, x = np.mgrid[0:size, 0:size].astype(np.int32)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for i in range(num_frames):
        frames[i, ..., 0] = (x + 4 * i) % 256
        frames[i, ..., 1] = (y + 2 * i) % 256
        frames[i, ..., 2] = np.where(((x + 3 * i) // 32 + y // 32) % 2 == 0, 200, 60)
    return frames


class _MoofWatcher:
    """Finds when the first moof+mdat pair of an fMP4 byte stream is complete."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._offset = 0
        self._seen_moof = False

    def feed(self, data: bytes) -> bool:
        """Add bytes; True once a complete mdat following a moof has been seen."""
        self._buffer += data
        while len(self._buffer) - self._offset >= 8:
            size = int.from_bytes(self._buffer[self._offset : self._offset + 4], "big")
            box_type = bytes(self._buffer[self._offset + 4 : self._offset + 8])
            if size == 1 and len(self._buffer) - self._offset >= 16:
                size = int.from_bytes(self._buffer[self._offset + 8 : self._offset + 16], "big")
            if size < 8 or len(self._buffer) - self._offset < size:
                return False
            self._offset += size
            if box_type == b"moof":
                self._seen_moof = True
            elif box_type == b"mdat" and self._seen_moof:
                return True
        return False


def run_pyav(encoder: Fmp4Encoder, frames: np.ndarray) -> tuple[Run, bytes]:
    """Encode one segment with the in-process encoder, timing each chunk as it is yielded."""
    start = time.perf_counter()
    chunks: list[bytes] = []
    first_byte = first_fragment = None
    for chunk in encoder.encode_segment_iter(frames):
        now = time.perf_counter()
        if first_byte is None:
            first_byte = now
        elif first_fragment is None:
            first_fragment = now
        chunks.append(chunk)
    end = time.perf_counter()
    assert first_byte is not None and first_fragment is not None
    data = b"".join(chunks)
    return (
        Run(
            first_byte_ms=(first_byte - start) * MS_PER_S,
            first_fragment_ms=(first_fragment - start) * MS_PER_S,
            total_ms=(end - start) * MS_PER_S,
            output_bytes=len(data),
        ),
        data,
    )


def ffmpeg_command(size: int, fps: int) -> list[str]:
    """The original system's per-segment command line."""
    return [
        "ffmpeg", "-hide_banner", "-loglevel", "error",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size}x{size}", "-r", str(fps), "-i", "-",
        "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-pix_fmt", "yuv420p",
        "-movflags", "empty_moov+default_base_moof+frag_keyframe", "-f", "mp4", "-",
    ]  # fmt: skip


def run_ffmpeg(frames: np.ndarray, fps: int) -> tuple[Run, bytes]:
    """Spawn ffmpeg, write frames on stdin from a thread, read stdout in another; time from spawn."""
    size = frames.shape[1]
    start = time.perf_counter()
    process = subprocess.Popen(
        ffmpeg_command(size, fps), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    received: list[bytes] = []
    marks: dict[str, float] = {}
    watcher = _MoofWatcher()
    stdout_fd = process.stdout.fileno()

    def read_stdout() -> None:
        while data := os.read(stdout_fd, READ_CHUNK_BYTES):
            now = time.perf_counter()
            marks.setdefault("first_byte", now)
            received.append(data)
            if "first_fragment" not in marks and watcher.feed(data):
                marks["first_fragment"] = now

    def write_stdin() -> None:
        assert process.stdin is not None
        try:
            for frame in frames:
                process.stdin.write(frame.tobytes())
        finally:
            process.stdin.close()

    reader = threading.Thread(target=read_stdout, name="ffmpeg-stdout")
    writer = threading.Thread(target=write_stdin, name="ffmpeg-stdin")
    reader.start()
    writer.start()
    stderr = process.stderr.read()
    writer.join(FFMPEG_TIMEOUT_S)
    reader.join(FFMPEG_TIMEOUT_S)
    code = process.wait(FFMPEG_TIMEOUT_S)
    end = time.perf_counter()
    process.stdout.close()
    process.stderr.close()
    if code != 0:
        raise RuntimeError(f"ffmpeg exited with {code}: {stderr.decode(errors='replace')}")
    data = b"".join(received)
    return (
        Run(
            first_byte_ms=(marks["first_byte"] - start) * MS_PER_S,
            first_fragment_ms=(marks["first_fragment"] - start) * MS_PER_S,
            total_ms=(end - start) * MS_PER_S,
            output_bytes=len(data),
        ),
        data,
    )


def count_frames(data: bytes, path: Path) -> int:
    """Decode ``data`` with ffprobe (a sanity check that both outputs are complete)."""
    path.write_bytes(data)
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-of", "json", str(path)],
        capture_output=True,
        check=True,
        timeout=FFMPEG_TIMEOUT_S,
    )
    return int(json.loads(result.stdout)["streams"][0]["nb_read_frames"])


def summarize(runs: list[Run]) -> dict[str, Any]:
    fields = ("first_byte_ms", "first_fragment_ms", "total_ms")
    return {
        "median": {f: statistics.median(getattr(r, f) for r in runs) for f in fields},
        "min": {f: min(getattr(r, f) for r in runs) for f in fields},
        "max": {f: max(getattr(r, f) for r in runs) for f in fields},
        "output_bytes_median": statistics.median(r.output_bytes for r in runs),
        "runs": [asdict(r) for r in runs],
    }


def ffmpeg_version() -> str:
    result = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=True)
    return result.stdout.splitlines()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per approach (default 10)")
    parser.add_argument("--frames", type=int, default=24, help="frames per segment (default 24)")
    parser.add_argument("--size", type=int, default=512, help="frame width = height in px (default 512)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if shutil.which("ffmpeg") is None:
        parser.error("ffmpeg is not installed (apt-get install -y ffmpeg)")

    frames = synthetic_frames(args.frames, args.size)
    construct_start = time.perf_counter()
    encoder = Fmp4Encoder(width=args.size, height=args.size, fps=FPS)
    construct_ms = (time.perf_counter() - construct_start) * MS_PER_S

    logger.info("warm-up and decode check ...")
    # One untimed warm-up each (page cache for the ffmpeg binary, first-use costs in-process).
    _, pyav_data = run_pyav(encoder, frames)
    _, ffmpeg_data = run_ffmpeg(frames, FPS)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    check = {
        "pyav_frames": count_frames(pyav_data, args.out.with_suffix(".pyav.mp4")),
        "ffmpeg_frames": count_frames(ffmpeg_data, args.out.with_suffix(".ffmpeg.mp4")),
    }
    args.out.with_suffix(".pyav.mp4").unlink()
    args.out.with_suffix(".ffmpeg.mp4").unlink()
    if check["pyav_frames"] != args.frames or check["ffmpeg_frames"] != args.frames:
        raise RuntimeError(f"decoded frame counts are wrong: {check}")

    pyav_runs: list[Run] = []
    ffmpeg_runs: list[Run] = []
    for _ in range(args.repeats):  # alternate, so drift in machine load hits both alike
        pyav_runs.append(run_pyav(encoder, frames)[0])
        ffmpeg_runs.append(run_ffmpeg(frames, FPS)[0])
    pyav, ffmpeg = summarize(pyav_runs), summarize(ffmpeg_runs)
    ratios = {
        key: ffmpeg["median"][key] / pyav["median"][key]
        for key in ("first_byte_ms", "first_fragment_ms", "total_ms")
    }

    print(f"\n{args.frames} frames {args.size}x{args.size} @ {FPS} fps, median of {args.repeats} runs (ms)")
    print(f"{'approach':<34}{'first byte':>12}{'1st fragment':>14}{'total':>10}{'bytes':>10}")
    for name, summary in (("PyAV in-process (Fmp4Encoder)", pyav), ("ffmpeg subprocess (incl. spawn)", ffmpeg)):
        m = summary["median"]
        print(
            f"{name:<34}{m['first_byte_ms']:>12.1f}{m['first_fragment_ms']:>14.1f}"
            f"{m['total_ms']:>10.1f}{summary['output_bytes_median']:>10.0f}"
        )
    print(
        f"{'ratio ffmpeg / PyAV':<34}{ratios['first_byte_ms']:>11.1f}x{ratios['first_fragment_ms']:>13.1f}x"
        f"{ratios['total_ms']:>9.2f}x"
    )
    print(f"(Fmp4Encoder construction, once per stream: {construct_ms:.1f} ms, not in the figures)")

    result = {
        "benchmark": "fmp4_encode",
        "config": {"frames": args.frames, "width": args.size, "height": args.size, "fps": FPS,
                   "repeats": args.repeats, "preset": "ultrafast", "tune": "zerolatency"},
        "notes": {
            "ffmpeg_includes_process_start": True,
            "ffmpeg_command": ffmpeg_command(args.size, FPS),
            "pyav_fragments": "one moof+mdat per frame; first byte is the init (ftyp+moov)",
            "ffmpeg_fragments": "frag_keyframe: one moof+mdat for the whole segment",
            "pyav_encoder_construction_ms": construct_ms,
            "decode_check": check,
        },
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "pyav": av.__version__,
            "ffmpeg": ffmpeg_version(),
        },
        "pyav": pyav,
        "ffmpeg_subprocess": ffmpeg,
        "ratio_ffmpeg_over_pyav": ratios,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
