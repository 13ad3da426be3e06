"""Benchmark: moving frames from a worker process to the server, shared memory vs. a pickling Queue.

Both methods run in one run on the same frames: a spawned worker sends --segments
segments of --frames frames of --size x --size RGB; the server side receives each
segment as a private numpy array. Prints the cost per frame and the ratio; writes JSON.

Usage: python bench/frame_transport.py [--size 512] [--frames 24] [--segments 40] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gpu.frame_slots import FrameSlots, SlotRef  # noqa: E402


def _segment(size: int, frames: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(frames, size, size, 3), dtype=np.uint8)


def shm_worker(conn: Connection, slot_names: list[str], size: int, frames: int, segments: int) -> None:
    slots = FrameSlots.attach(slot_names)
    data = _segment(size, frames)
    free = set(range(slots.count))
    for _ in range(segments):
        while not free:
            free.add(conn.recv())
        slot = free.pop()
        ref = slots.write(slot, data)
        conn.send((ref.index, ref.shape))
    conn.send(None)
    slots.close()


def queue_worker(out: Any, size: int, frames: int, segments: int) -> None:
    data = _segment(size, frames)
    for _ in range(segments):
        out.put(data)
    out.put(None)


def run_shm(context: Any, size: int, frames: int, segments: int) -> float:
    slots = FrameSlots.create(count=2, slot_bytes=size * size * 3 * frames)
    parent, child = context.Pipe()
    process = context.Process(target=shm_worker, args=(child, slots.names, size, frames, segments))
    process.start()
    first = parent.recv()  # the clock starts once the worker is up and producing
    started = time.perf_counter()
    received = 0
    message = first
    while message is not None:
        index, shape = message
        slots.read(SlotRef(index, tuple(shape)))
        parent.send(index)
        received += 1
        message = parent.recv()
    elapsed = time.perf_counter() - started
    process.join()
    slots.close()
    return elapsed / ((received - 1) * frames)


def run_queue(context: Any, size: int, frames: int, segments: int) -> float:
    queue = context.Queue(maxsize=2)
    process = context.Process(target=queue_worker, args=(queue, size, frames, segments))
    process.start()
    first = queue.get()
    started = time.perf_counter()
    received = 0
    item = first
    while item is not None:
        received += 1
        item = queue.get()
    elapsed = time.perf_counter() - started
    process.join()
    return elapsed / ((received - 1) * frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--segments", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "frame_transport.json")
    args = parser.parse_args()
    context = mp.get_context("spawn")
    shm, pickled = [], []
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        shm.append(run_shm(context, args.size, args.frames, args.segments))
        pickled.append(run_queue(context, args.size, args.frames, args.segments))
    result = {
        "frame": f"{args.size}x{args.size} RGB",
        "frames_per_segment": args.frames,
        "segments": args.segments,
        "shared_memory_us_per_frame": statistics.median(shm) * 1e6,
        "pickled_queue_us_per_frame": statistics.median(pickled) * 1e6,
    }
    result["ratio_queue_over_shm"] = result["pickled_queue_us_per_frame"] / result["shared_memory_us_per_frame"]
    print(f"shared memory : {result['shared_memory_us_per_frame']:8.1f} us per frame")
    print(f"pickled Queue : {result['pickled_queue_us_per_frame']:8.1f} us per frame")
    print(f"ratio         : {result['ratio_queue_over_shm']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
