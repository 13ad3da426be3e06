"""Benchmark: sound with the picture over WebRTC, against real server processes on loopback.

Measures, in one run:
- A/V offset at the aiortc client over --segments segments: for each segment, the click that the
  synthetic backend puts at its first sample against the segment's first decoded frame (by its
  frame marker), both timed by arrival of their RTP packets (tests/rtc_server/transports/
  test_webrtc_audio.py explains why arrival, not decode); median and max of |offset|, and the
  median signed offset (positive: audio after video);
- server CPU seconds per second of stream with audio + video (synthetic ``audio: true``, the client
  offers audio) against video only (``audio: false``, the same offer: its audio m-line is answered
  inactive), from /proc, server process only; the two servers run side by side and their sessions
  alternate (--repeats each) so that machine noise hits both alike.

With ``--pool subprocess`` (the default) generation runs in worker processes, so the server figure
is the streaming path alone: pacing, VP8 and Opus encoding, packetisation.

Usage: python bench/av_webrtc.py [--size 512] [--fps 24] [--segments 10] [--seconds 8] [--repeats 2] [--out FILE]
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

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.webrtc_session import free_port, process_cpu_seconds, running, write_config
from rtc_server.clients.webrtc_client import WebRTCClient

CLICK_THRESHOLD: Final = 0.5  # the synthetic click peaks at 0.9, its tone at 0.15
CLICK_MIN_GAP_S: Final = 0.1  # a click lasts 6 ms; clicks are at least a segment apart
WARMUP_FRAMES: Final = 10
INIT: Final = {"type": "session_init_v2", "curated_prompts": ["a red fox running through fresh snow"]}


def server_config(path: Path, *, port: int, args: argparse.Namespace, audio: bool) -> None:
    """The house bench config (bench/webrtc_session.py) with the synthetic backend's sound on or off."""
    write_config(path, port=port, size=args.size, fps=args.fps, pool=args.pool)
    config = yaml.safe_load(path.read_text())
    config["generator"] = {"backend": "synthetic", "options": {"audio": audio}}
    path.write_text(yaml.safe_dump(config))


def click_onsets(client: WebRTCClient) -> list[float]:
    """Arrival times (monotonic s) of the clicks: the packet's arrival plus the click's place in it."""
    onsets: list[float] = []
    for audio in client.audio:
        if audio.arrived_at is None:
            continue
        loud = np.flatnonzero(np.abs(audio.samples) > CLICK_THRESHOLD)
        if len(loud):
            onset = audio.arrived_at + loud[0] / audio.sample_rate
            if not onsets or onset - onsets[-1] > CLICK_MIN_GAP_S:
                onsets.append(float(onset))
    return onsets


def segment_starts(client: WebRTCClient) -> dict[int, float]:
    starts: dict[int, float] = {}
    for frame in client.frames:
        if frame.marker is not None and frame.arrived_at is not None:
            starts.setdefault(frame.marker.segment_idx, frame.arrived_at)
    return starts


async def av_offsets(url: str, segments: int) -> list[float]:
    """Signed offsets (s, audio after video positive) of ``segments`` segment starts, after the first."""
    async with WebRTCClient(url, session_init=INIT, receive_audio=True) as client:
        await client.connect()
        while len(segment_starts(client)) < segments + 2:  # segment 0 starts the clocks; the last needs its audio
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        onsets = click_onsets(client)
        starts = sorted(segment_starts(client).items())[1 : segments + 1]
    if not onsets:
        raise RuntimeError("no click heard: does the server send audio?")
    return [min(onsets, key=lambda onset: abs(onset - start)) - start for _, start in starts]


async def cpu_per_stream_second(url: str, pid: int, seconds: float) -> dict[str, float]:
    async with WebRTCClient(url, session_init=INIT, keep_frames=False, receive_audio=True) as client:
        await client.connect()
        while client.frame_count < WARMUP_FRAMES:
            await asyncio.sleep(0.01)
        frames_before, audio_before = client.frame_count, client.audio_frame_count
        cpu_before, wall_before = process_cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(seconds)
        cpu = process_cpu_seconds(pid) - cpu_before
        wall = time.monotonic() - wall_before
        frames, audio_frames = client.frame_count - frames_before, client.audio_frame_count - audio_before
    return {"cpu_s_per_s": cpu / wall, "delivered_fps": frames / wall, "audio_frames_per_s": audio_frames / wall}


async def measure(with_audio: tuple[str, int], video_only: tuple[str, int], args: argparse.Namespace) -> dict[str, Any]:
    offsets = await av_offsets(with_audio[0], args.segments)
    runs: dict[str, list[dict[str, float]]] = {"audio_video": [], "video_only": []}
    for _ in range(args.repeats):
        for name, (url, pid) in (("audio_video", with_audio), ("video_only", video_only)):
            await asyncio.sleep(0.5)  # the previous session's teardown off the books
            runs[name].append(await cpu_per_stream_second(url, pid, args.seconds))
    return {"offsets": offsets, "runs": runs}


def run(args: argparse.Namespace) -> dict[str, Any]:
    port_av, port_v = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        servers = []
        for port, audio in ((port_av, True), (port_v, False)):
            path = tmp / f"bench_{port}.yaml"
            server_config(path, port=port, args=args, audio=audio)
            command = [sys.executable, "-m", "rtc_server", "--config", str(path), "--log-level", "WARNING"]
            servers.append(stack.enter_context(running(command, f"http://127.0.0.1:{port}")))
        av, video = servers
        measured = asyncio.run(measure((av.url, av.pid), (video.url, video.pid), args))
    offsets_ms = [o * 1000 for o in measured["offsets"]]
    magnitudes = [abs(o) for o in offsets_ms]
    cpu = {name: statistics.median(r["cpu_s_per_s"] for r in runs) for name, runs in measured["runs"].items()}
    return {
        "pool": args.pool,
        "size": f"{args.size}x{args.size}",
        "fps": args.fps,
        "segments": len(offsets_ms),
        "av_offset_ms_median_abs": statistics.median(magnitudes),
        "av_offset_ms_max_abs": max(magnitudes),
        "av_offset_ms_median_signed": statistics.median(offsets_ms),
        "av_offset_ms_all": [round(o, 1) for o in offsets_ms],
        "frame_interval_ms": 1000 / args.fps,
        "server_cpu_s_per_s_audio_video": cpu["audio_video"],
        "server_cpu_s_per_s_video_only": cpu["video_only"],
        "audio_cpu_s_per_s": cpu["audio_video"] - cpu["video_only"],
        "runs": measured["runs"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--segments", type=int, default=10, help="segment starts measured for the A/V offset")
    parser.add_argument("--seconds", type=float, default=8.0, help="streaming window of each CPU measurement")
    parser.add_argument("--repeats", type=int, default=2, help="CPU measurements per server, alternating")
    parser.add_argument("--pool", choices=["inprocess", "subprocess"], default="subprocess")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/av_webrtc_<pool>.json")
    args = parser.parse_args()
    if args.out is None:
        args.out = REPO / "bench" / "results" / f"av_webrtc_{args.pool}.json"
    result = run(args)
    print(
        f"A/V offset over {result['segments']} segments: |median| {result['av_offset_ms_median_abs']:.1f} ms, "
        f"max {result['av_offset_ms_max_abs']:.1f} ms, signed median {result['av_offset_ms_median_signed']:+.1f} ms "
        f"(frame interval {result['frame_interval_ms']:.1f} ms)"
    )
    print(
        f"server CPU s per s of stream: audio+video {result['server_cpu_s_per_s_audio_video']:.3f}, "
        f"video only {result['server_cpu_s_per_s_video_only']:.3f} "
        f"(audio adds {result['audio_cpu_s_per_s']:+.3f})"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
