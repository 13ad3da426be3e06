"""Benchmark (c): how many concurrent 512x512@24 WebRTC sessions this machine holds.

A session is "on time" when it receives at least --on-time (98 %) of the frames its
fps promises over the measuring window. Sessions are added one step at a time
until that fails. Next to it, in the same run, the theoretical bound:
cores / (bare VP8 encode seconds per frame x fps).

The clients run on the same machine (aiortc decodes every frame they receive), so
they take CPU from the server; the report says how much (client CPU per session).

Usage: python bench/capacity.py [--size 512] [--fps 24] [--start 1] [--step 1] [--max-sessions 24] [--window 8] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.encoder_cost import frames_for, vp8_cost  # noqa: E402
from bench.webrtc_session import free_port, process_cpu_seconds, wait_ready, write_config  # noqa: E402
from rtc_server.clients.webrtc_client import WebRTCClient  # noqa: E402


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure_step(url: str, sessions: int, fps: int, window_s: float, server_pid: int) -> dict[str, Any]:
    clients = [WebRTCClient(url, session_init={"type": "session_init_v2"}, keep_frames=False) for _ in range(sessions)]
    try:
        for client in clients:
            await client.connect()
        deadline = time.monotonic() + 20
        while any(c.frame_count < fps for c in clients):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        before = [c.frame_count for c in clients]
        server_cpu, client_cpu, started = process_cpu_seconds(server_pid), own_cpu_seconds(), time.monotonic()
        await asyncio.sleep(window_s)
        elapsed = time.monotonic() - started
        delivered = [(c.frame_count - b) / (elapsed * fps) for c, b in zip(clients, before, strict=True)]
        return {
            "sessions": sessions,
            "min_on_time": min(delivered),
            "mean_on_time": sum(delivered) / len(delivered),
            "server_cpu_s_per_s": (process_cpu_seconds(server_pid) - server_cpu) / elapsed,
            "client_cpu_s_per_s": (own_cpu_seconds() - client_cpu) / elapsed,
        }
    finally:
        for client in clients:
            await client.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    bare = vp8_cost(frames_for(args.size, args.size, 4 * args.fps))
    cores = os.cpu_count() or 1
    bound = cores / (bare["cpu_ms_per_frame"] / 1000.0 * args.fps)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    steps: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "capacity.yaml"
        write_config(config_path, port=port, size=args.size, fps=args.fps, max_sessions=args.max_sessions)
        server = subprocess.Popen(
            [sys.executable, "-m", "rtc_server", "--config", str(config_path), "--log-level", "WARNING"], cwd=REPO
        )
        try:
            wait_ready(url)
            for sessions in range(args.start, args.max_sessions + 1, args.step):
                step = await measure_step(url, sessions, args.fps, args.window, server.pid)
                steps.append(step)
                print(
                    f"{sessions:3d} sessions: worst {step['min_on_time'] * 100:5.1f}% on time, "
                    f"server {step['server_cpu_s_per_s']:.2f} CPU-s/s, clients {step['client_cpu_s_per_s']:.2f} CPU-s/s",
                    flush=True,
                )
                if step["min_on_time"] < args.on_time:
                    break
                await asyncio.sleep(1.0)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=15)
    held = max((s["sessions"] for s in steps if s["min_on_time"] >= args.on_time), default=0)
    return {
        "size": f"{args.size}x{args.size}",
        "fps": args.fps,
        "on_time_threshold": args.on_time,
        "cores": cores,
        "bare_vp8_cpu_ms_per_frame": bare["cpu_ms_per_frame"],
        "theoretical_bound_sessions": bound,
        "sessions_held": held,
        "fraction_of_bound": held / bound,
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--max-sessions", type=int, default=24)
    parser.add_argument("--start", type=int, default=1, help="first step's session count")
    parser.add_argument("--step", type=int, default=1, help="sessions added per step")
    parser.add_argument("--window", type=float, default=8.0, help="seconds measured per step")
    parser.add_argument("--on-time", type=float, default=0.98)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "capacity.json")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(
        f"held {result['sessions_held']} sessions at >= {args.on_time:.0%} on time; theoretical bound "
        f"{result['theoretical_bound_sessions']:.1f} ({result['cores']} cores / "
        f"({result['bare_vp8_cpu_ms_per_frame']:.2f} ms x {args.fps} fps)) = {result['fraction_of_bound']:.0%} of it"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
