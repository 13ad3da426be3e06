"""Benchmark: time to first frame direct vs through a TURN relay, in one run.

One server process with ``webrtc.turn`` pointing at a real coturn on loopback (Debian's ``coturn``);
its sessions alternate between a client on host candidates (direct) and a relay-only client
(``iceTransportPolicy: relay``) holding credentials from ``/v1/webrtc/ice-servers``, so that machine
noise hits both alike. Two figures per mode:

- ``ttff`` from POSTing the offer to the first decoded frame (as bench/webrtc_session.py measures);
- ``ttff_from_start`` from asking for the ICE servers to the first frame: what a page waits, the
  client's TURN allocation included (a browser gathers before it sends a non-trickle offer).

On loopback the relay adds coturn's forwarding and the allocation round trips, not a network path:
the difference is the relay's own cost, the floor of what a real TURN server adds.

Usage: python bench/turn_relay.py [--runs 30] [--size 512] [--fps 24] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import aiohttp
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.webrtc_session import BETWEEN_RUNS_S, free_port, percentile, settle, wait_ready
from rtc_server.clients.webrtc_client import WebRTCClient, fetch_ice_servers
from tests.turn_fixture import start_coturn, stop_coturn

SECRET_ENV: Final = "RTCVS_BENCH_TURN_SECRET"
STOP_TIMEOUT_S: Final = 10.0


def write_config(path: Path, *, port: int, size: int, fps: int, turn_url: str) -> None:
    config = {
        "server": {"host": "127.0.0.1", "port": port},
        "default_request": {"sampling": {"width": size, "height": size, "fps": fps, "num_frames": fps}},
        "limits": {"sessions_per_client": 1000, "offers_per_minute": 100_000},  # one client makes every session
        "webrtc": {"ice_host_addresses": ["127.0.0.1"], "turn": {"urls": [turn_url], "secret_env": SECRET_ENV}},
    }
    path.write_text(yaml.safe_dump(config))


async def one_session(url: str, *, relay: bool) -> tuple[float, float]:
    """(offer → first frame, ICE-server request → first frame) in seconds."""
    started = time.monotonic()
    ice_servers, _ = await fetch_ice_servers(url) if relay else ([], 0)
    async with WebRTCClient(
        url, session_init={"type": "session_init_v2"}, keep_frames=False, ice_servers=ice_servers, relay_only=relay
    ) as client:
        await client.connect()
        if relay:
            assert " typ relay " in client.pc.localDescription.sdp
        while client.first_frame_at is None:
            await asyncio.sleep(0.002)
        assert client.offer_posted_at is not None
        return client.first_frame_at - client.offer_posted_at, client.first_frame_at - started


async def measure(url: str, runs: int) -> dict[str, Any]:
    times: dict[str, list[tuple[float, float]]] = {"direct": [], "relay": []}
    unsettled = 0
    async with aiohttp.ClientSession() as http:
        for relay in (False, True):  # warm up both paths; not counted
            await one_session(url, relay=relay)
            unsettled += not await settle(http, url)
        for _ in range(runs):
            for mode in ("direct", "relay"):
                await asyncio.sleep(BETWEEN_RUNS_S)
                times[mode].append(await one_session(url, relay=mode == "relay"))
                unsettled += not await settle(http, url)
    result: dict[str, Any] = {"runs": runs, "unsettled_runs": unsettled}
    for mode, pairs in times.items():
        for index, name in ((0, "ttff"), (1, "ttff_from_start")):
            values = [pair[index] for pair in pairs]
            result[f"{mode}_{name}_ms_median"] = statistics.median(values) * 1000
            result[f"{mode}_{name}_ms_p95"] = percentile(values, 0.95) * 1000
    result["relay_over_direct_ttff_ratio"] = result["relay_ttff_ms_median"] / result["direct_ttff_ms_median"]
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        coturn, turn = start_coturn(tmp, secrets.token_urlsafe(24))
        stack.callback(stop_coturn, coturn)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        config = tmp / "bench.yaml"
        write_config(config, port=port, size=args.size, fps=args.fps, turn_url=turn.url)
        command = [sys.executable, "-m", "rtc_server", "--config", str(config), "--log-level", "WARNING"]
        server = subprocess.Popen(command, cwd=REPO, env={**os.environ, SECRET_ENV: turn.secret})

        def stop_server() -> None:
            server.terminate()
            try:
                server.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

        stack.callback(stop_server)
        wait_ready(url, process=server)
        result = asyncio.run(measure(url, args.runs))
        allocations = turn.log_text().count("ALLOCATE processed, success")
    return {"size": f"{args.size}x{args.size}", "fps": args.fps, "turn_allocations": allocations, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "turn_relay.json")
    args = parser.parse_args()
    result = run(args)
    for mode in ("direct", "relay"):
        print(
            f"{mode:>6}: offer -> first frame median {result[f'{mode}_ttff_ms_median']:.1f} ms "
            f"(p95 {result[f'{mode}_ttff_ms_p95']:.1f}); from asking for ICE servers "
            f"{result[f'{mode}_ttff_from_start_ms_median']:.1f} ms (p95 {result[f'{mode}_ttff_from_start_ms_p95']:.1f})"
        )
    print(f"relay / direct (offer -> first frame, medians): {result['relay_over_direct_ttff_ratio']:.2f}")
    print(f"TURN allocations coturn granted: {result['turn_allocations']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
