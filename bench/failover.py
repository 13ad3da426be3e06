"""Benchmark: failover time, replica SIGKILL -> first frame of the continued stream, per transport.

Real processes on loopback: redis-server, two replicas sharing it, a router in front. Each run
opens a session through the router (it lands on the primary), lets it play past its first segment,
SIGKILLs the primary, and times the moment the resuming client (rtc_server/clients/resuming.py)
receives media of the continued stream from the other replica; then the primary is started again
and the router waits to see it healthy before the next run. Runs alternate WebRTC and WebSocket.

Usage: python bench/failover.py [--kills 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Final

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.webrtc_session import percentile
from rtc_server.clients.resuming import ResumingSession
from tests.cluster import Cluster, Process
from tests.processes import free_port, listening, stop_process

INIT: Final = {"curated_prompts": ["a red fox running through fresh snow", "a lighthouse in a storm"]}
TRANSPORTS: Final = ("webrtc", "websocket")


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port("127.0.0.1")
    args = ["redis-server", "--save", "", "--appendonly", "no", "--port", str(port), "--bind", "127.0.0.1"]
    process = subprocess.Popen([*args, "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not listening("127.0.0.1", port):
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/0"


def healthy(router: Process, url: str) -> bool:
    with urllib.request.urlopen(f"{router.url}/status", timeout=2) as response:
        replicas = json.loads(response.read())["replicas"]
    return any(r["url"] == url and r["state"] == "healthy" for r in replicas)


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)


def media_times(session: ResumingSession, after: float) -> list[float]:
    if session.transport == "webrtc":
        return [f.received_at for f in session.frames if f.received_at > after]
    return [s.first_chunk_at for s in session.segments if s.first_chunk_at is not None and s.first_chunk_at > after]


def segment_indices(session: ResumingSession) -> list[int]:
    if session.transport == "webrtc":
        return [f.marker.segment_idx for f in session.frames if f.marker is not None]
    return [s.segment_idx for s in session.segments if s.first_chunk_at is not None]


async def one_kill(primary: Process, router: Process, transport: str) -> dict[str, float]:
    async with ResumingSession(router.url, transport=transport, session_init=INIT) as session:  # type: ignore[arg-type]
        await session.start()
        await wait_until(lambda: session.session_id and max(segment_indices(session), default=-1) >= 1, 20, "not playing")
        killed_at = time.monotonic()
        primary.kill()
        await wait_until(lambda: session.reconnects and media_times(session, session.reconnects[-1].noticed_at), 15, "no resume")
        reconnect = session.reconnects[-1]
        first = min(media_times(session, reconnect.noticed_at))
        return {
            "kill_to_media_s": first - killed_at,
            "kill_to_noticed_s": reconnect.noticed_at - killed_at,
            "noticed_to_resumed_s": (reconnect.resumed_at or first) - reconnect.noticed_at,
        }


async def measure(cluster: Cluster, a: Process, router: Process, kills: int) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {t: [] for t in TRANSPORTS}
    for run in range(kills * len(TRANSPORTS)):
        transport = TRANSPORTS[run % len(TRANSPORTS)]
        await wait_until(lambda: healthy(router, a.url), 20, "primary not healthy again")
        results[transport].append(await one_kill(a, router, transport))
        a.start()  # the same port and config: the router sees it come back
        a.wait_ready()
    return results


def summarise(runs: list[dict[str, float]]) -> dict[str, float]:
    figures: dict[str, float] = {}
    for key in ("kill_to_media_s", "kill_to_noticed_s", "noticed_to_resumed_s"):
        values = [r[key] * 1000 for r in runs]
        figures[f"{key[:-2]}_ms_median"] = statistics.median(values)
        figures[f"{key[:-2]}_ms_p95"] = percentile(values, 0.95)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10, help="kills per transport")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "failover.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        redis, redis_url = start_redis(workdir)
        cluster = Cluster(workdir, redis_url)
        try:
            a, b = cluster.replica("replica-a"), cluster.replica("replica-b")
            a.wait_ready()
            b.wait_ready()
            router = cluster.router("router", [a, b])
            router.wait_ready()
            runs = asyncio.run(measure(cluster, a, router, args.kills))
        finally:
            cluster.close()
            stop_process(redis)
    result: dict[str, Any] = {"kills_per_transport": args.kills}
    for transport, transport_runs in runs.items():
        figures = summarise(transport_runs)
        result[transport] = {**figures, "kill_to_media_ms_all": [round(r["kill_to_media_s"] * 1000, 1) for r in transport_runs]}
        print(
            f"{transport:>9}: kill -> first frame of the continued stream median {figures['kill_to_media_ms_median']:.0f} ms "
            f"(p95 {figures['kill_to_media_ms_p95']:.0f}); noticed after {figures['kill_to_noticed_ms_median']:.0f} ms, "
            f"reconnected {figures['noticed_to_resumed_ms_median']:.0f} ms later"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
