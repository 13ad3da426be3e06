"""Benchmark: the tiny LTX-2 pipeline's segment time on this machine's CPU (the real code path, random weights).

Builds the tiny pipeline (python -m gpu.tiny_ltx2) in a temporary directory, loads it with the
``diffusers_ltx2`` backend and generates a stream of segments, each continuing the last (its last 9
frames and their audio latents), at a few sizes. Reports load time, the first (fresh) segment and the
median continuation segment, with the real time the segment's video lasts for comparison.

Usage: python bench/tiny_ltx2.py [--segments 5] [--steps 2] [--device cpu] [--dtype float32] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gpu.diffusers_ltx2 import DiffusersLtx2Generator
from gpu.generator import SegmentRequest
from gpu.tiny_ltx2 import build_tiny_ltx2_pipeline_dir

SIZES = ((64, 64, 16), (128, 128, 16), (256, 256, 24))  # width, height, new frames per segment
FPS = 24
K = 9
DISTILLED = [1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875]


def measure_size(generator: DiffusersLtx2Generator, width: int, height: int, frames: int, *, segments: int, steps: int) -> dict[str, Any]:
    request = SegmentRequest(
        prompt="a red fox running through fresh snow", width=width, height=height, num_frames=frames,
        fps=FPS, num_inference_steps=steps, guidance_scale=1.0, seed=1,
    )
    generator.generate(replace(request, num_frames=8))  # warm the size's kernels, not counted
    times: list[float] = []
    state = None
    for index in range(segments):
        started = time.perf_counter()
        result = generator.generate(replace(request, continuation=state, segment_idx=index))
        times.append(time.perf_counter() - started)
        state = result.continuation
    assert result.audio is not None
    return {
        "size": f"{width}x{height}",
        "new_frames": frames,
        "segment_video_s": frames / FPS,
        "first_segment_s": round(times[0], 4),
        "continuation_median_s": round(statistics.median(times[1:]), 4) if len(times) > 1 else None,
        "audio_samples_per_segment": int(result.audio.shape[0]),
        "state_json_bytes": len(json.dumps(state.payload)) if state is not None else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "tiny_ltx2.json")
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory(prefix="tiny-ltx2-") as tmp:
        started = time.perf_counter()
        model = build_tiny_ltx2_pipeline_dir(Path(tmp) / "model")
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        generator = DiffusersLtx2Generator(
            model_path=model, device=args.device, dtype=args.dtype, conditioning_frames=K, sigmas=DISTILLED,
            max_sequence_length=128,
        )
        load_s = time.perf_counter() - started
        try:
            rows = [measure_size(generator, w, h, f, segments=args.segments, steps=args.steps) for w, h, f in SIZES]
        finally:
            generator.close()
    results = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads()},
        "device": args.device, "dtype": args.dtype, "steps": args.steps, "conditioning_frames": K, "fps": FPS,
        "build_s": round(build_s, 2), "load_s": round(load_s, 3), "sizes": rows,
    }
    print(f"build {build_s:.1f} s, load {load_s:.2f} s ({args.device}, {args.dtype}, {args.steps} steps, K={K})")
    print(f"{'size':>9} {'frames':>6} {'video s':>8} {'first s':>8} {'cont. median s':>15}")
    for row in rows:
        print(f"{row['size']:>9} {row['new_frames']:>6} {row['segment_video_s']:>8.2f} "
              f"{row['first_segment_s']:>8.3f} {row['continuation_median_s']:>15.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
