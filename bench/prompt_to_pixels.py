"""Benchmark: prompt-to-pixels over WebRTC, against a real server process on loopback.

One session streams (synthetic generator, --size square at --fps, segments of --fps frames, i.e.
one second); the client sends --prompts user prompts, each at a random moment of the segment
playing then, and times each from sending ``segment_prompt_source`` to the first decoded frame
generated from it (the frame marker carries a tag of the prompt the frame came from). Reported
with the segment's duration and median generation time measured in the same run, against the
goals: median <= 0.6 x segment duration, p95 <= segment duration + generation time.

Usage: python bench/prompt_to_pixels.py [--size 512] [--fps 24] [--prompts 30] [--pool inprocess] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.webrtc_session import free_port, percentile, running, write_config
from rtc_server.clients.prompt_probe import PromptProbe
from rtc_server.clients.webrtc_client import ReceivedFrame, WebRTCClient

MEDIAN_GOAL_SEGMENTS: Final = 0.6  # median <= this many segment durations
# Prompts go out this many segment durations apart (uniformly drawn): longer than a segment plus
# its generation, so each prompt shows before the next is sent, at a random phase of the segment.
GAP_SEGMENTS: Final = (1.3, 2.3)
LAST_PROMPT_WAIT_S: Final = 5.0
PROMPTS: Final = (
    "a red fox running through fresh snow",
    "neon city skyline at night, rain on the glass",
    "a lighthouse in a storm, waves crashing",
    "desert dunes at dawn, long shadows",
    "a paper boat drifting down a gutter stream",
)


async def measure(url: str, *, prompts: int, segment_s: float, seed: int) -> dict[str, Any]:
    probe = PromptProbe()

    def on_frame(frame: ReceivedFrame) -> None:
        probe.frame(frame.marker, frame.received_at)

    client = WebRTCClient(url, session_init={"type": "session_init_v2"}, on_frame=on_frame, keep_frames=False)
    client.on_event = lambda e: (
        probe.acknowledged(str(e["prompt"]), str(e["prompt_used"])) if e.get("type") == "prompt_received" else None
    )
    draw = random.Random(seed)
    async with client:
        await client.connect()
        await client.wait_channel_open()
        await client.wait_for_event("ltx2_segment_complete", lambda e: e["segment_idx"] == 1, timeout=30)
        for number in range(prompts):
            await asyncio.sleep(segment_s * draw.uniform(*GAP_SEGMENTS))
            text = f"{PROMPTS[number % len(PROMPTS)]}, take {number + 1}"
            probe.sent(text, time.monotonic())
            await client.send({"type": "segment_prompt_source", "prompt": text})
        deadline = time.monotonic() + LAST_PROMPT_WAIT_S
        while probe.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        generation_ms = [float(e["generation_time_ms"]) for e in client.events_of("ltx2_segment_complete")]
    return {"latencies_s": probe.latencies_s, "superseded": probe.superseded, "generation_ms": generation_ms}


def run(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    segment_s = 1.0  # write_config makes segments of fps frames
    with contextlib.ExitStack() as stack:
        config_path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "bench.yaml"
        write_config(config_path, port=port, size=args.size, fps=args.fps, pool=args.pool)
        command = [sys.executable, "-m", "rtc_server", "--config", str(config_path), "--log-level", "WARNING"]
        stack.enter_context(running(command, url))
        measured = asyncio.run(measure(url, prompts=args.prompts, segment_s=segment_s, seed=args.seed))
    latencies_ms = [s * 1000.0 for s in measured["latencies_s"]]
    if not latencies_ms:
        raise RuntimeError("no prompt's frames were seen")
    segment_ms = segment_s * 1000.0
    generation_ms = statistics.median(measured["generation_ms"])
    median_ms, p95_ms = statistics.median(latencies_ms), percentile(latencies_ms, 0.95)
    return {
        "pool": args.pool,
        "size": f"{args.size}x{args.size}",
        "fps": args.fps,
        "segment_ms": segment_ms,
        "generation_ms_median": generation_ms,
        "prompts_sent": args.prompts,
        "samples": len(latencies_ms),
        "superseded": measured["superseded"],
        "prompt_to_pixels_ms_median": median_ms,
        "prompt_to_pixels_ms_p95": p95_ms,
        "prompt_to_pixels_ms_all": [round(v, 1) for v in latencies_ms],
        "median_goal_ms": MEDIAN_GOAL_SEGMENTS * segment_ms,
        "p95_goal_ms": segment_ms + generation_ms,
        "median_in_segments": median_ms / segment_ms,
        "meets_goals": median_ms <= MEDIAN_GOAL_SEGMENTS * segment_ms and p95_ms <= segment_ms + generation_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--prompts", type=int, default=30)
    parser.add_argument("--pool", choices=["inprocess", "subprocess"], default="inprocess")
    parser.add_argument("--seed", type=int, default=1, help="for the random moments the prompts are sent at")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/prompt_to_pixels_<pool>.json")
    args = parser.parse_args()
    if args.out is None:
        args.out = REPO / "bench" / "results" / f"prompt_to_pixels_{args.pool}.json"
    result = run(args)
    print(
        f"prompt to pixels ({result['samples']} of {args.prompts} prompts, {result['superseded']} superseded): "
        f"median {result['prompt_to_pixels_ms_median']:.0f} ms (goal <= {result['median_goal_ms']:.0f}), "
        f"p95 {result['prompt_to_pixels_ms_p95']:.0f} ms (goal <= {result['p95_goal_ms']:.0f} = one "
        f"{result['segment_ms']:.0f} ms segment + its {result['generation_ms_median']:.0f} ms generation)"
    )
    print("meets the goals" if result["meets_goals"] else "misses the goals")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
