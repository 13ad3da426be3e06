"""GPU check: both tiny pipelines on CUDA in bfloat16 through the subprocess pool, with segment times.

For a machine with an NVIDIA GPU (not run where there is none). Builds the tiny LTX-Video and LTX-2
pipelines offline in a temporary directory, starts a SubprocessGpuPool with one worker on GPU 0 for
each backend (``diffusers`` and ``diffusers_ltx2``, ``device: cuda``, ``dtype: bfloat16``), and streams
--segments continuation segments for one session through it, frames and audio crossing from the
worker by shared memory. Reports worker boot (load + warm-up), the first segment and the median
continuation segment per backend and size, checks frames and audio arrive and the states chain, and
writes JSON. Exit status 1 when a check fails, 2 when there is no CUDA device.

Usage: python bench/gpu_tiny_pipelines.py [--segments 6] [--steps 4] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gpu.generator import SegmentRequest
from gpu.subprocess_pool import SubprocessGpuPool, WorkerSettings
from gpu.tiny_ltx2 import build_tiny_ltx2_pipeline_dir
from gpu.tiny_model import build_tiny_pipeline_dir

FPS = 24
K = 9
SIZES = ((256, 256, 24), (512, 512, 48))  # width, height, new frames per segment (multiples of 8)
LTX_TIMESTEPS = [1000, 993, 987, 981, 975, 909, 725, 0.03]
LTX2_SIGMAS = [1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875]


def backends(root: Path) -> dict[str, dict[str, Any]]:
    common = {"device": "cuda", "dtype": "bfloat16", "conditioning_frames": K}
    return {
        "diffusers": {"model_path": str(build_tiny_pipeline_dir(root / "ltx")), "timesteps": LTX_TIMESTEPS,
                      "image_cond_noise_scale": 0.0, **common},
        "diffusers_ltx2": {"model_path": str(build_tiny_ltx2_pipeline_dir(root / "ltx2")), "sigmas": LTX2_SIGMAS,
                           "max_sequence_length": 128, **common},
    }


async def run_backend(backend: str, options: dict[str, Any], *, segments: int, steps: int) -> dict[str, Any]:
    width, height, frames = max(SIZES)
    warmup = SegmentRequest(prompt="warm-up", width=width, height=height, num_frames=frames, fps=FPS,
                            num_inference_steps=steps, guidance_scale=1.0)
    pool = SubprocessGpuPool(WorkerSettings(
        backend=backend, options=options, num_workers=1, gpu_ids=(0,),
        max_frame_bytes=width * height * 3 * frames, warmup=True, warmup_request=warmup,
        boot_timeout_s=600.0, segment_timeout_s=120.0,
    ))
    started = time.perf_counter()
    await pool.start()
    boot_s = time.perf_counter() - started
    rows = []
    try:
        if not pool.ready:
            raise RuntimeError(f"{backend}: the worker never got ready: {pool.status()}")
        for width, height, frames in SIZES:
            session = f"{backend}-{width}"
            await pool.acquire(session)
            request = replace(warmup, prompt="a red fox running through fresh snow", width=width, height=height,
                              num_frames=frames)
            times, state, sound = [], None, 0
            for index in range(segments):
                chunks: list[tuple[int, int]] = []

                def on_frames(chunk: np.ndarray, audio: np.ndarray | None, into: list[tuple[int, int]] = chunks) -> None:
                    into.append((chunk.shape[0], 0 if audio is None else audio.shape[0]))

                began = time.perf_counter()
                result = await pool.run(session, replace(request, continuation=state, segment_idx=index),
                                        on_frames=on_frames)
                times.append(time.perf_counter() - began)
                assert sum(n for n, _ in chunks) == frames, f"{backend}: {chunks}"
                sound = sum(s for _, s in chunks)
                state = result.continuation
                assert state.payload["segment_idx"] == index + 1
            if backend == "diffusers_ltx2":
                assert sound > 0 and "audio_latents" in state.payload, f"{backend}: no sound"
            await pool.release(session)
            rows.append({
                "size": f"{width}x{height}", "new_frames": frames, "segment_video_s": frames / FPS,
                "first_segment_s": round(times[0], 4), "continuation_median_s": round(statistics.median(times[1:]), 4),
                "audio_samples_per_segment": sound,
            })
    finally:
        await pool.shutdown()
    return {"boot_s": round(boot_s, 2), "sizes": rows}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tiny-pipelines-") as tmp:
        results = {}
        for backend, options in backends(Path(tmp)).items():
            results[backend] = await run_backend(backend, options, segments=args.segments, steps=args.steps)
        return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=6)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_tiny_pipelines.json")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU", file=sys.stderr)
        return 2
    try:
        backends_results = asyncio.run(main_async(args))
    except (AssertionError, RuntimeError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    results = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "dtype": "bfloat16",
               "steps": args.steps, "segments": args.segments, "backends": backends_results}
    for backend, row in backends_results.items():
        print(f"{backend}: boot {row['boot_s']} s")
        for size in row["sizes"]:
            print(f"  {size['size']:>9} x{size['new_frames']:<3} first {size['first_segment_s']:.3f} s, "
                  f"continuation median {size['continuation_median_s']:.3f} s (video {size['segment_video_s']:.2f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
