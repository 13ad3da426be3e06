"""Benchmark: what the router costs, against one real replica process, on loopback.

Measures, in one run (router and replica each in their own process, ``python -m ...``):
- offer latency (POST /v1/webrtc/offer until the answer is read) through the router and directly,
  --offers of each, interleaved so that machine noise hits both alike; median and p95 of each and
  the median difference (what the extra hop adds). Every session is ended right after its answer;
- router CPU for bridged WebSocket streams: --streams sessions through the router for --seconds,
  the router's CPU seconds per second (from /proc/<pid>/stat), per stream, and per MB relayed.
  The replica generates and encodes the video (synthetic generator, fMP4); the router only relays.

Usage: python bench/router_overhead.py [--offers 40] [--streams 4] [--seconds 10] [--size 256] [--out FILE]
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

import aiohttp
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


from bench.webrtc_session import Server, free_port, percentile, process_cpu_seconds, running
from rtc_server.clients.ws_client import WebSocketClient
from tests.rtc_server.offers import real_offer_sdp

WARMUP_OFFERS: Final = 3  # of each, not counted
STOP_TIMEOUT_S: Final = 10.0
STREAM_START_TIMEOUT_S: Final = 30.0
INIT: Final = {"type": "session_init_v2", "curated_prompts": ["a red fox running through fresh snow"]}




def replica_config(port: int, size: int, streams: int) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": port},
        "default_request": {"sampling": {"width": size, "height": size, "fps": 24, "num_frames": 24}},
        "streaming": {"max_sessions": max(4, streams), "max_queue": 0},
        # Every session comes from this one client (the router's address): lift its share.
        "limits": {"sessions_per_client": 1000, "offers_per_minute": 100_000},
        "webrtc": {"ice_host_addresses": ["127.0.0.1"], "peer_timeout_seconds": 2.0},
    }


def router_config(port: int, replica_url: str) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "replicas": [{"url": replica_url, "role": "primary"}]}




async def offer_once(http: aiohttp.ClientSession, base_url: str, body: dict[str, Any], replica_url: str) -> float:
    """Seconds from sending the offer to having read its answer; the session is then ended on the replica."""
    started = time.perf_counter()
    async with http.post(f"{base_url}/v1/webrtc/offer", json=body) as response:
        answer = await response.json()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"offer to {base_url} answered {response.status}: {answer}")
    async with http.delete(f"{replica_url}/v1/sessions/{answer['session_id']}") as response:
        await response.read()
    return elapsed


async def interleaved_offers(router_url: str, replica_url: str, count: int) -> dict[str, list[float]]:
    body = {"sdp": await real_offer_sdp(), "type": "offer", "session_init": INIT}
    times: dict[str, list[float]] = {"router": [], "direct": []}
    async with aiohttp.ClientSession() as http:
        for _ in range(WARMUP_OFFERS):
            await offer_once(http, router_url, body, replica_url)
            await offer_once(http, replica_url, body, replica_url)
        for _ in range(count):
            times["direct"].append(await offer_once(http, replica_url, body, replica_url))
            times["router"].append(await offer_once(http, router_url, body, replica_url))
    return times


async def bridged_streams(router: Server, streams: int, seconds: float) -> dict[str, float]:
    clients = [WebSocketClient(router.url, session_init=INIT) for _ in range(streams)]
    try:
        for client in clients:
            await client.connect()
        for client in clients:
            await client.wait_for_event("media_segment_complete", timeout=STREAM_START_TIMEOUT_S)
        bytes_before = sum(relayed_bytes(c) for c in clients)
        cpu_before, wall_before = process_cpu_seconds(router.pid), time.monotonic()
        await asyncio.sleep(seconds)
        cpu = process_cpu_seconds(router.pid) - cpu_before
        wall = time.monotonic() - wall_before
        relayed = sum(relayed_bytes(c) for c in clients) - bytes_before
    finally:
        for client in clients:
            await client.close()
    return {
        "window_s": wall,
        "router_cpu_s_per_s": cpu / wall,
        "router_cpu_s_per_s_per_stream": cpu / wall / streams,
        "relayed_mb_per_s": relayed / wall / 1e6,
        "router_cpu_ms_per_mb": cpu * 1000 / (relayed / 1e6) if relayed else float("nan"),
    }


def relayed_bytes(client: WebSocketClient) -> int:
    return sum(len(segment.init) + sum(len(chunk) for chunk in segment.chunks) for segment in client.segments)


async def measure(router: Server, replica: Server, args: argparse.Namespace) -> dict[str, Any]:
    offers = await interleaved_offers(router.url, replica.url, args.offers)
    streams = await bridged_streams(router, args.streams, args.seconds)
    return {"offers": offers, "streams": streams}


def run(args: argparse.Namespace) -> dict[str, Any]:
    replica_port, router_port = free_port(), free_port()
    replica_url, router_url = f"http://127.0.0.1:{replica_port}", f"http://127.0.0.1:{router_port}"
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        (tmp / "replica.yaml").write_text(yaml.safe_dump(replica_config(replica_port, args.size, args.streams)))
        (tmp / "router.yaml").write_text(yaml.safe_dump(router_config(router_port, replica_url)))
        quiet = ["--log-level", "WARNING"]
        replica = stack.enter_context(
            running([sys.executable, "-m", "rtc_server", "--config", str(tmp / "replica.yaml"), *quiet], replica_url)
        )
        router = stack.enter_context(
            running([sys.executable, "-m", "rtc_server.router", "--config", str(tmp / "router.yaml"), *quiet], router_url)
        )
        measured = asyncio.run(measure(router, replica, args))
    offers, streams = measured["offers"], measured["streams"]
    direct_ms = statistics.median(offers["direct"]) * 1000
    routed_ms = statistics.median(offers["router"]) * 1000
    return {
        "offers": args.offers,
        "offer_ms_direct_median": direct_ms,
        "offer_ms_direct_p95": percentile(offers["direct"], 0.95) * 1000,
        "offer_ms_router_median": routed_ms,
        "offer_ms_router_p95": percentile(offers["router"], 0.95) * 1000,
        "offer_ms_added_by_router_median": routed_ms - direct_ms,
        "streams": args.streams,
        "size": f"{args.size}x{args.size}",
        **streams,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--offers", type=int, default=40, help="measured offers of each kind (direct, router)")
    parser.add_argument("--streams", type=int, default=4, help="WebSocket sessions bridged at once")
    parser.add_argument("--seconds", type=float, default=10.0, help="CPU measurement window")
    parser.add_argument("--size", type=int, default=256, help="frame edge (px) of the replica's video")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "router_overhead.json")
    args = parser.parse_args()
    result = run(args)
    print(
        f"offer latency ({args.offers} interleaved): direct median {result['offer_ms_direct_median']:.1f} ms "
        f"(p95 {result['offer_ms_direct_p95']:.1f}), through the router {result['offer_ms_router_median']:.1f} ms "
        f"(p95 {result['offer_ms_router_p95']:.1f}): +{result['offer_ms_added_by_router_median']:.1f} ms"
    )
    print(
        f"router CPU with {args.streams} bridged WebSocket streams ({result['size']}@24, "
        f"{result['relayed_mb_per_s']:.2f} MB/s relayed): {result['router_cpu_s_per_s']:.4f} s/s, "
        f"{result['router_cpu_s_per_s_per_stream']:.4f} s/s per stream, {result['router_cpu_ms_per_mb']:.1f} ms per MB"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
