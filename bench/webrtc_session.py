"""Benchmark: one WebRTC session against a real server process on loopback.

Measures, in one run:
- time from POSTing the offer to the first decoded frame (median and p95 over --runs sessions);
- the same for the floor, a bare aiortc server (bench/bare_aiortc_server.py, its own process, same
  client, same signalling, same frame size, fps and VP8 bitrate, pre-made frames, no generation),
  its runs interleaved with the server's so that machine noise hits both alike, and the ratio of
  the medians (``ttff_ratio``, goal <= 1.3);
- delivered fps of one session over --seconds of streaming;
- server CPU seconds per second of streamed video (from /proc, server process only);
- the overhead ratio: server CPU per delivered frame / the bare VP8 encoder's CPU per frame
  (same frames size, same encoder and bitrate, measured in this process right after).

Before each run the previous session must be gone from the server it ran on (``/health`` reports
no sessions), so one run's teardown does not land in the next one's measurement.

Usage: python bench/webrtc_session.py [--size 512] [--fps 24] [--runs 20] [--seconds 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.encoder_cost import frames_for, vp8_cost
from rtc_server.clients.webrtc_client import WebRTCClient

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
START_BITRATE_BPS = 1_500_000  # the config default start bitrate, which bench/encoder_cost.py uses
TTFF_RATIO_GOAL: Final = 1.3  # server median / bare-aiortc median
BETWEEN_RUNS_S: Final = 0.2  # pause after a session has gone, before the next offer
SETTLE_TIMEOUT_S: Final = 10.0  # how long a finished session may take to leave its server
SETTLE_POLL_S: Final = 0.02
STOP_TIMEOUT_S: Final = 10.0  # for a server process to exit after SIGTERM
BARE_SERVER = REPO / "bench" / "bare_aiortc_server.py"


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
        # Every session here comes from this one client: lift its per-client share (DESIGN §9).
        "limits": {"sessions_per_client": 1000, "offers_per_minute": 100_000},
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


def wait_ready(url: str, timeout_s: float = 30.0, *, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url``/readyz until it answers 200; fail early if ``process`` (the server) exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"server at {url} did not become ready")


@dataclass(frozen=True)
class Server:
    """A server process under test: where it answers, and its pid for CPU figures."""

    url: str
    pid: int


@contextlib.contextmanager
def running(command: list[str], url: str) -> Iterator[Server]:
    """Start ``command`` (a server answering at ``url``), wait until ready, stop it with SIGTERM on exit."""
    process = subprocess.Popen(command, cwd=REPO)
    try:
        wait_ready(url, process=process)
        yield Server(url=url, pid=process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def bare_server_command(*, port: int, size: int, fps: int) -> list[str]:
    return [
        sys.executable, str(BARE_SERVER), "--port", str(port), "--size", str(size), "--fps", str(fps),
        "--bitrate", str(START_BITRATE_BPS),
    ]


async def time_to_first_frame(url: str) -> float:
    """Seconds from POSTing the offer to the first decoded frame."""
    async with WebRTCClient(url, session_init={"type": "session_init_v2"}, keep_frames=False) as client:
        await client.connect()
        while client.first_frame_at is None:
            await asyncio.sleep(0.002)
        assert client.offer_posted_at is not None
        return client.first_frame_at - client.offer_posted_at


async def settle(http: aiohttp.ClientSession, url: str) -> bool:
    """Wait until the server at ``url`` has no session left (``/health``); False on timeout."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        async with http.get(f"{url}/health") as response:
            if (await response.json())["sessions"] == 0:
                return True
        await asyncio.sleep(SETTLE_POLL_S)
    return False


async def interleaved_ttff(server_url: str, bare_url: str, runs: int) -> dict[str, Any]:
    """``runs`` TTFF measurements of each, alternating server and bare; the first of each unmeasured."""
    ttff: dict[str, list[float]] = {server_url: [], bare_url: []}
    unsettled = 0
    async with aiohttp.ClientSession() as http:
        for url in (server_url, bare_url):  # warm caches and codecs; not counted
            await time_to_first_frame(url)
            unsettled += not await settle(http, url)
        for _ in range(runs):
            for url in (server_url, bare_url):
                await asyncio.sleep(BETWEEN_RUNS_S)
                ttff[url].append(await time_to_first_frame(url))
                unsettled += not await settle(http, url)
    return {"server": ttff[server_url], "bare": ttff[bare_url], "unsettled": unsettled}


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


async def measure(server: Server, bare: Server, args: argparse.Namespace) -> dict[str, Any]:
    ttff = await interleaved_ttff(server.url, bare.url, args.runs)
    steady = await steady_session(server.url, server.pid, args.seconds)
    return {"ttff": ttff, "steady": steady}


def ttff_figures(prefix: str, ttff: list[float]) -> dict[str, Any]:
    return {
        f"{prefix}ttff_ms_median": statistics.median(ttff) * 1000,
        f"{prefix}ttff_ms_p95": percentile(ttff, 0.95) * 1000,
        f"{prefix}ttff_ms_all": [round(t * 1000, 1) for t in ttff],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    port, bare_port = free_port(), free_port()
    url, bare_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{bare_port}"
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        config_path = tmp / "bench.yaml"
        write_config(config_path, port=port, size=args.size, fps=args.fps, pool=args.pool)
        server_command = [sys.executable, "-m", "rtc_server", "--config", str(config_path), "--log-level", "WARNING"]
        server = stack.enter_context(running(server_command, url))
        bare = stack.enter_context(running(bare_server_command(port=bare_port, size=args.size, fps=args.fps), bare_url))
        measured = asyncio.run(measure(server, bare, args))
    ttff, steady = measured["ttff"], measured["steady"]
    bare_encoder = vp8_cost(frames_for(args.size, args.size, 4 * args.fps))
    server_ms_per_frame = steady["server_cpu_s_per_s"] / steady["delivered_fps"] * 1000.0
    server_figures = ttff_figures("", ttff["server"])
    bare_figures = ttff_figures("bare_aiortc_", ttff["bare"])
    return {
        "pool": args.pool,
        "size": f"{args.size}x{args.size}",
        "fps": args.fps,
        "runs": args.runs,
        **server_figures,
        **bare_figures,
        "ttff_ratio": server_figures["ttff_ms_median"] / bare_figures["bare_aiortc_ttff_ms_median"],
        "ttff_ratio_goal": TTFF_RATIO_GOAL,
        "ttff_unsettled_runs": ttff["unsettled"],
        **steady,
        "server_cpu_ms_per_frame": server_ms_per_frame,
        "bare_vp8_cpu_ms_per_frame": bare_encoder["cpu_ms_per_frame"],
        "overhead_ratio": server_ms_per_frame / bare_encoder["cpu_ms_per_frame"],
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
    result = run(args)
    print(f"time to first frame ({args.runs} runs): median {result['ttff_ms_median']:.1f} ms, p95 {result['ttff_ms_p95']:.1f} ms")
    print(
        f"bare aiortc floor ({args.runs} runs, interleaved): median {result['bare_aiortc_ttff_ms_median']:.1f} ms, "
        f"p95 {result['bare_aiortc_ttff_ms_p95']:.1f} ms"
    )
    verdict = "meets" if result["ttff_ratio"] <= TTFF_RATIO_GOAL else "misses"
    print(f"ttff_ratio (server / bare, medians): {result['ttff_ratio']:.2f} ({verdict} the goal <= {TTFF_RATIO_GOAL})")
    if result["ttff_unsettled_runs"]:
        print(f"warning: {result['ttff_unsettled_runs']} sessions outlived their run by > {SETTLE_TIMEOUT_S:.0f} s")
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
