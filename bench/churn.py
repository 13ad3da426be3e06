"""Churn: sessions opened and left, half of them abruptly, against real server processes on loopback.

Two servers run side by side, one per pool backend (in-process, one worker process). Each cycle
opens a session on one of them, over WebRTC or WebSocket in turn, waits for its first segment,
then leaves: cleanly (close), or abruptly: a WebRTC peer that just goes silent (its ICE transport
stops: no DTLS close, no RTCP, the server must notice by itself), or a WebSocket whose TCP
connection is aborted. At checkpoints it reads each server's resident memory, threads, open file
descriptors and child processes from /proc, once every session is gone, without asking the
server to collect garbage: what piles up there is what a long-running server would keep.

Usage: python bench/churn.py [--cycles 200] [--concurrency 8] [--checkpoint 100] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.webrtc_session import Server, free_port, running
from rtc_server.clients.webrtc_client import WebRTCClient
from rtc_server.clients.ws_client import WebSocketClient

INIT: Final = {"type": "session_init_v2", "curated_prompts": ["a red fox running through fresh snow"]}
PEER_TIMEOUT_S: Final = 2.0  # how long a silent WebRTC peer lives on at the server
SETTLE_TIMEOUT_S: Final = 30.0
FIRST_SEGMENT_TIMEOUT_S: Final = 20.0


@dataclass(frozen=True)
class ProcessFigures:
    """One server process at one moment."""

    rss_mb: float
    threads: int
    fds: int
    children: int


def process_figures(pid: int) -> ProcessFigures:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    children = sum(1 for _ in Path(f"/proc/{pid}/task").glob("*/children") if Path(_).read_text().split())
    return ProcessFigures(
        rss_mb=int(fields["VmRSS"].split()[0]) / 1024,
        threads=int(fields["Threads"]),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        children=children,
    )


def write_config(path: Path, *, port: int, pool: str) -> None:
    config = {
        "server": {"host": "127.0.0.1", "port": port},
        "generator": {"options": {"audio": os.environ.get("CHURN_AUDIO", "1") == "1"}},
        "pool": {"backend": pool, "num_workers": 1, "sessions_per_worker": 16},
        "default_request": {"sampling": {"width": 128, "height": 128, "fps": 24, "num_frames": 12}},
        "streaming": {"max_sessions": 16, "max_queue": 16},
        # Every session here comes from this one client: lift its per-client share (DESIGN §9).
        "limits": {"sessions_per_client": 1000, "offers_per_minute": 100_000},
        "webrtc": {"ice_host_addresses": ["127.0.0.1"], "peer_timeout_seconds": PEER_TIMEOUT_S},
    }
    path.write_text(yaml.safe_dump(config))


def silence(client: WebRTCClient) -> None:
    """The peer vanishes: its ICE transport stops, so nothing more leaves it (no DTLS close, no RTCP)."""
    transceiver = client.pc.getTransceivers()[0]
    transport = transceiver.receiver.transport.transport
    asyncio.ensure_future(transport.stop())


async def webrtc_cycle(url: str, abrupt: bool, parked: list[WebRTCClient]) -> None:
    client = WebRTCClient(url, session_init=INIT, keep_frames=False)
    try:
        await client.connect()
        await client.wait_for_event("ltx2_segment_complete", timeout=FIRST_SEGMENT_TIMEOUT_S)
    except BaseException:
        await client.close()
        raise
    if abrupt:
        silence(client)
        parked.append(client)  # closed (client side only) once the server has let go of it
    else:
        await client.close()


async def ws_cycle(url: str, abrupt: bool) -> None:
    client = WebSocketClient(url, session_init=INIT)
    try:
        await client.connect()
        await client.wait_for_event("ltx2_segment_complete", timeout=FIRST_SEGMENT_TIMEOUT_S)
        if abrupt and client.ws is not None:
            # The only way to drop the TCP connection without a close frame.
            connection = client.ws._response.connection
            if connection is not None and connection.transport is not None:
                connection.transport.abort()
    finally:
        await client.close()


async def sessions_of(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(f"{url}/health") as response:
        return int((await response.json())["sessions"])


async def settle(http: aiohttp.ClientSession, servers: list[Server]) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    for server in servers:
        while await sessions_of(http, server.url):
            if time.monotonic() > deadline:
                raise TimeoutError(f"sessions left on {server.url}")
            await asyncio.sleep(0.1)


async def churn(servers: list[Server], *, cycles: int, concurrency: int, checkpoint: int) -> dict[str, Any]:
    figures: dict[str, list[dict[str, Any]]] = {server.url: [] for server in servers}
    parked: list[WebRTCClient] = []
    gate = asyncio.Semaphore(concurrency)

    def record(done: int) -> None:
        for server in servers:
            figures[server.url].append({"cycles": done, **process_figures(server.pid).__dict__})

    async def one(index: int) -> None:
        # Every 8 cycles cover each server x {clean, abrupt} x {WebRTC, WebSocket} once.
        server = servers[index % 2]
        abrupt = (index // 2) % 2 == 1
        async with gate:
            if (index // 4) % 2 == 0:
                await webrtc_cycle(server.url, abrupt, parked)
            else:
                await ws_cycle(server.url, abrupt)

    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        await settle(http, servers)
        record(0)
        for first in range(0, cycles, checkpoint):
            await asyncio.gather(*(one(i) for i in range(first, min(first + checkpoint, cycles))))
            await settle(http, servers)
            for client in parked:
                await client.close()
            parked.clear()
            record(min(first + checkpoint, cycles))
    return {"seconds": time.monotonic() - started, "figures": figures}


@contextlib.contextmanager
def servers_running() -> Iterator[list[Server]]:
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        servers = []
        for pool in ("inprocess", "subprocess"):
            port = free_port()
            config = tmp / f"{pool}.yaml"
            write_config(config, port=port, pool=pool)
            command = [sys.executable, "-m", "rtc_server", "--config", str(config), "--log-level", "WARNING"]
            servers.append(stack.enter_context(running(command, f"http://127.0.0.1:{port}")))
        yield servers


def run(cycles: int, concurrency: int, checkpoint: int) -> dict[str, Any]:
    with servers_running() as servers:
        measured = asyncio.run(churn(servers, cycles=cycles, concurrency=concurrency, checkpoint=checkpoint))
        pools = dict(zip((server.url for server in servers), ("inprocess", "subprocess"), strict=True))
    return {
        "cycles": cycles,
        "seconds": round(measured["seconds"], 1),
        "servers": {pools[url]: rows for url, rows in measured["figures"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--checkpoint", type=int, default=100, help="cycles between measurements")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "churn.json")
    args = parser.parse_args()
    result = run(args.cycles, args.concurrency, args.checkpoint)
    for pool, rows in result["servers"].items():
        for row in rows:
            print(
                f"{pool:10s} after {row['cycles']:4d} cycles: RSS {row['rss_mb']:7.1f} MB, threads {row['threads']:3d}, "
                f"fds {row['fds']:4d}, children {row['children']}"
            )
    print(f"{args.cycles} cycles in {result['seconds']} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
