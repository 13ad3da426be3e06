"""``python -m rtc_server.loadtest --url URL --sessions N --duration S --transport webrtc|ws [--ramp R]``.

Runs N headless sessions against a running server, shows progress, and writes a
JSON report and a PNG plot. Exit status 1 when any session got no frames.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from rtc_server.loadtest.report import build_report, write_plot
from rtc_server.loadtest.runner import LoadSettings, SessionRecord, run_load


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rtc_server.loadtest", description=__doc__)
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds each session streams")
    parser.add_argument("--transport", choices=["webrtc", "ws"], default="webrtc")
    parser.add_argument("--ramp", type=float, default=0.0, help="seconds over which sessions start")
    parser.add_argument("--prompt-interval", type=float, default=5.0, help="seconds between prompts per session")
    parser.add_argument("--ice-host", action="append", help="pin client ICE host candidates (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("loadtest-results"), help="directory for report.json and plot.png")
    parser.add_argument(
        "--token", default=os.environ.get("RTCVS_TOKEN"), help="bearer token for a server with auth (default: $RTCVS_TOKEN)"
    )
    parser.add_argument("--viewers", type=int, default=0, help="WHEP viewers watching each session")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def _progress(records: list[SessionRecord], elapsed_s: float) -> None:
    live = sum(1 for r in records if r.started_at and r.ended_at is None)
    frames = sum(len(r.frame_times) for r in records)
    errors = sum(sum(r.errors.values()) for r in records)
    print(f"\r t={elapsed_s:6.1f}s  live {live:3d}/{len(records)}  frames {frames:7d}  errors {errors}", end="", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    settings = LoadSettings(
        url=args.url,
        sessions=args.sessions,
        duration_s=args.duration,
        transport=args.transport,
        ramp_s=args.ramp,
        prompt_interval_s=args.prompt_interval,
        host_addresses=args.ice_host,
        token=args.token,
        viewers=args.viewers,
    )
    records = asyncio.run(run_load(settings, progress=None if args.quiet else _progress))
    if not args.quiet:
        print(file=sys.stderr)
    report = build_report(settings, records)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    write_plot(report, args.out / "plot.png")
    summary = report["summary"]
    print(
        f"sessions {summary['sessions_with_frames']}/{summary['sessions']} got frames; "
        f"ttff median {summary['ttff_ms']['median']} ms p95 {summary['ttff_ms']['p95']} ms; "
        f"fps median {summary['delivered_fps']['median']}; "
        f"frame latency median {summary['frame_latency_ms']['median']} ms p95 {summary['frame_latency_ms']['p95']} ms "
        f"({summary['frame_latency_ms_without_receiver_hold']['median']} ms without the aiortc receiver's hold); "
        f"prompt to pixels median {summary['prompt_to_pixels_ms']['median']} ms "
        f"p95 {summary['prompt_to_pixels_ms']['p95']} ms ({summary['prompt_to_pixels_samples']} prompts); "
        f"stalls {summary['stalls']}; errors {summary['errors']}"
    )
    if settings.viewers:
        watched = summary["viewers"]
        print(
            f"viewers {watched['viewers_with_frames']}/{watched['viewers']} got frames; ttff median "
            f"{watched['ttff_ms']['median']} ms; fps median {watched['delivered_fps']['median']} "
            f"min {watched['min_delivered_fps']}; errors {watched['errors']}"
        )
    if summary["errors"].get("rate_limited") or summary["errors"].get("unauthorized"):
        # All load sessions come from one address (or one token): the server's per-client share applies.
        print(
            "note: the server refused sessions as one client's share (rate_limited) or without a token "
            "(unauthorized): give the server under test higher limits.sessions_per_client and "
            "limits.offers_per_minute, and pass --token when it has auth",
            file=sys.stderr,
        )
    print(f"wrote {args.out / 'report.json'} and {args.out / 'plot.png'}")
    return 0 if summary["sessions_with_frames"] == summary["sessions"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
