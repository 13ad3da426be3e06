"""Benchmark: one WebRTC session against a real server process on loopback.

Measures, in one run:
- time from POSTing the offer to the first decoded frame (median and p95 over --runs sessions);
- delivered fps of one session over --seconds of streaming;
- server CPU seconds per second of streamed video (from /proc, server process only);
- the overhead ratio: server CPU per delivered frame / the bare VP8 encoder's CPU per frame
  (same frames size, same encoder and bitrate, measured in this process right after).

Usage: python bench/webrtc_session.py [--size 512] [--fps 24] [--runs 20] [--seconds 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.encoder_cost import frames_for, vp8_cost  # noqa: E402
from rtc_server.clients.webrtc_client import WebRTCClient  # noqa: E402

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
START_BITRATE_BPS = 1_500_000  # the config default start bitrate, which bench/encoder_cost.py uses


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS_PER_S


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(
    path: Path, *, port: int, size: int, fps: int, pool: str = "inprocess", max_sessions: int = 4
) -> None:
    config = {
        "pool": {"backend": pool},
        "server": {"host": "127.0.0.1", "port": port},
        "default_request": {"sampling": {"width": size, "height": size, "fps": fps, "num_frames": fps}},
        "streaming": {"max_sessions": max_sessions},
        # The encoder's bitrate pinned to the start bitrate: REMB from a loopback client would
        # otherwise raise it (and the encoder's cost) above what the bare-encoder figure uses.
        "webrtc": {
            "ice_host_addresses": ["127.0.0.1"],
            "min_bitrate": START_BITRATE_BPS,
            "start_bitrate": START_BITRATE_BPS,
            "max_bitrate": START_BITRATE_BPS,
        },
    }
    path.write_text(yaml.safe_dump(config))


def wait_ready(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    raise TimeoutError("server did not become ready")


async def time_to_first_frame(url: str) -> float:
    async with WebRTCClient(url, session_init={"type": "session_init_v2"}, keep_frames=False) as client:
        started = time.monotonic()
        await client.connect()
        while client.first_frame_at is None:
            await asyncio.sleep(0.002)
        return client.first_frame_at - started


async def steady_session(url: str, pid: int, seconds: float) -> dict[str, float]:
    async with WebRTCClient(url, session_init={"type": "session_init_v2"}, keep_frames=False) as client:
        await client.connect()
        while client.frame_count < 10:
            await asyncio.sleep(0.01)
        frames_before, cpu_before, wall_before = client.frame_count, process_cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(seconds)
        frames = client.frame_count - frames_before
        cpu = process_cpu_seconds(pid) - cpu_before
        wall = time.monotonic() - wall_before
    return {"delivered_fps": frames / wall, "server_cpu_s_per_s": cpu / wall, "window_s": wall, "frames": frames}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "bench.yaml"
        write_config(config_path, port=port, size=args.size, fps=args.fps, pool=args.pool)
        server = subprocess.Popen(
            [sys.executable, "-m", "rtc_server", "--config", str(config_path), "--log-level", "WARNING"], cwd=REPO
        )
        try:
            wait_ready(url)
            await time_to_first_frame(url)  # warm caches and codecs; not counted
            ttff = []
            for _ in range(args.runs):
                ttff.append(await time_to_first_frame(url))
                await asyncio.sleep(0.2)
            steady = await steady_session(url, server.pid, args.seconds)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=10)
    bare = vp8_cost(frames_for(args.size, args.size, 4 * args.fps))
    server_ms_per_frame = steady["server_cpu_s_per_s"] / steady["delivered_fps"] * 1000.0
    return {
        "pool": args.pool,
        "size": f"{args.size}x{args.size}",
        "fps": args.fps,
        "runs": args.runs,
        "ttff_ms_median": statistics.median(ttff) * 1000,
        "ttff_ms_p95": percentile(ttff, 0.95) * 1000,
        "ttff_ms_all": [round(t * 1000, 1) for t in ttff],
        **steady,
        "server_cpu_ms_per_frame": server_ms_per_frame,
        "bare_vp8_cpu_ms_per_frame": bare["cpu_ms_per_frame"],
        "overhead_ratio": server_ms_per_frame / bare["cpu_ms_per_frame"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--pool",
        choices=["inprocess", "subprocess"],
        default="inprocess",
        help="subprocess: generation runs in a worker process, so server CPU is the streaming path alone",
    )
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/webrtc_session_<pool>.json")
    args = parser.parse_args()
    if args.out is None:
        args.out = REPO / "bench" / "results" / f"webrtc_session_{args.pool}.json"
    result = asyncio.run(run(args))
    print(f"time to first frame ({args.runs} runs): median {result['ttff_ms_median']:.1f} ms, p95 {result['ttff_ms_p95']:.1f} ms")
    print(f"delivered fps: {result['delivered_fps']:.2f} (target {args.fps})")
    print(f"server CPU: {result['server_cpu_s_per_s']:.3f} s per s of {result['size']}@{args.fps} video")
    print(
        f"overhead: {result['server_cpu_ms_per_frame']:.2f} ms server CPU per frame / "
        f"{result['bare_vp8_cpu_ms_per_frame']:.2f} ms bare VP8 = {result['overhead_ratio']:.2f}x"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
