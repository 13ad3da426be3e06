"""Benchmark: what viewers cost the server, one session encoded once for all of them.

One server process (generation in a worker process, so the server figure is the streaming path:
pacing, one encoder per tier, packetisation and SRTP per viewer), one WebRTC owner and, in turn,
1, 4 and 16 WHEP viewers (plain WHEP requests, aiortc, decoding every frame, in this process).
For each count: the server's CPU seconds per second (from /proc, server process only) and the fps
each viewer got. The counts are measured in rounds (--repeats), interleaved, so machine noise hits
them alike; the figure is the median. For scale, the same run times the bare tier encoder on the
same frames: what each viewer would add if it had an encoder of its own.

Goal (issue 19): 16 viewers cost at most 1.3x one viewer's CPU.

Usage: python bench/viewers_cpu.py [--size 512] [--fps 24] [--counts 1 4 16] [--seconds 8] [--repeats 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import av
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.webrtc_session import free_port, process_cpu_seconds, running, write_config
from rtc_server.clients.webrtc_client import WebRTCClient
from rtc_server.clients.whep_client import WhepClient
from rtc_server.media.tier_encoders import VideoTierEncoder

INIT: Final = {"type": "session_init_v2", "curated_prompts": ["a red fox running through fresh snow"]}
SETTLE_S: Final = 2.0  # after the viewers' first frames: keyframes and bitrate settle


def server_config(path: Path, *, port: int, args: argparse.Namespace) -> None:
    write_config(path, port=port, size=args.size, fps=args.fps, pool="subprocess")
    config = yaml.safe_load(path.read_text())
    config["generator"] = {"backend": "synthetic", "options": {"audio": False}}
    config.setdefault("streaming", {})["viewers"] = {"max_per_session": max(args.counts) + 1}
    config["streaming"]["session_timeout_seconds"] = 3600
    path.write_text(yaml.safe_dump(config))


async def with_viewers(url: str, pid: int, info: dict[str, Any], count: int, seconds: float) -> dict[str, float]:
    viewers = [WhepClient(url, info["session_id"], info["watch_token"], keep_frames=False) for _ in range(count)]
    try:
        await asyncio.gather(*(v.connect() for v in viewers))
        deadline = time.monotonic() + 20
        while any(v.frame_count == 0 for v in viewers):
            if time.monotonic() > deadline:
                raise RuntimeError("a viewer got no frames")
            await asyncio.sleep(0.05)
        await asyncio.sleep(SETTLE_S)
        frames_before = [v.frame_count for v in viewers]
        cpu_before, wall_before = process_cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(seconds)
        cpu = process_cpu_seconds(pid) - cpu_before
        wall = time.monotonic() - wall_before
        fps = [(v.frame_count - before) / wall for v, before in zip(viewers, frames_before, strict=True)]
    finally:
        for viewer in viewers:
            with contextlib.suppress(Exception):
                await viewer.leave()
            await viewer.close()
    return {"cpu_s_per_s": cpu / wall, "min_viewer_fps": min(fps), "median_viewer_fps": statistics.median(fps)}


async def measure(url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[int, list[dict[str, float]]] = {count: [] for count in args.counts}
    async with WebRTCClient(url, session_init=INIT, keep_frames=False) as owner:
        await owner.connect()
        info = await owner.wait_for_event("session_info", timeout=30)
        while owner.frame_count < 24:
            await asyncio.sleep(0.05)
        for _ in range(args.repeats):
            for count in args.counts:
                await asyncio.sleep(1.0)  # the previous viewers' teardown off the books
                runs[count].append(await with_viewers(url, pid, info, count, args.seconds))
        owner_fps = owner.frame_count
    return {"runs": runs, "owner_frames": owner_fps}


def bare_encoder_cpu_s_per_s(size: int, fps: int, frames: int = 96) -> float:
    """CPU seconds per second of stream of one VP8 tier encoder alone, on moving frames of the bench size."""
    encoder = VideoTierEncoder("video/VP8", fps=fps, bitrate=1_500_000)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    yuv = []
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(np.roll(base, i * 4, axis=1), format="rgb24").reformat(format="yuv420p")
        frame.pts = i * 3750
        yuv.append(frame)
    started = time.process_time()
    for frame in yuv:
        encoder.encode(frame)
    return (time.process_time() - started) / frames * fps


def run(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "viewers.yaml"
        server_config(path, port=port, args=args)
        command = [sys.executable, "-m", "rtc_server", "--config", str(path), "--log-level", "WARNING"]
        with running(command, f"http://127.0.0.1:{port}") as server:
            measured = asyncio.run(measure(server.url, server.pid, args))
    cpu = {count: statistics.median(r["cpu_s_per_s"] for r in runs) for count, runs in measured["runs"].items()}
    fps = {count: min(r["min_viewer_fps"] for r in runs) for count, runs in measured["runs"].items()}
    one, most = min(args.counts), max(args.counts)
    encoder = bare_encoder_cpu_s_per_s(args.size, args.fps)
    return {
        "size": f"{args.size}x{args.size}",
        "fps": args.fps,
        "seconds": args.seconds,
        "repeats": args.repeats,
        "server_cpu_s_per_s": {str(c): round(v, 4) for c, v in cpu.items()},
        "min_viewer_fps": {str(c): round(v, 2) for c, v in fps.items()},
        f"ratio_{most}_to_{one}": round(cpu[most] / cpu[one], 3),
        "bare_vp8_encoder_cpu_s_per_s": round(encoder, 4),
        f"estimated_ratio_{most}_to_{one}_with_an_encoder_per_viewer": round(
            (cpu[one] + (most - one) * encoder) / cpu[one], 3
        ),
        "runs": {str(c): r for c, r in measured["runs"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "viewers_cpu.json")
    args = parser.parse_args()
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: v for k, v in result.items() if k != "runs"}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
