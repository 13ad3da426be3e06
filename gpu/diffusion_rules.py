"""Rules both LTX backends share, checked without torch: sizes, lengths and denoising schedules.

Pure code (plus reading a model directory's small JSON configs), so the server can check a config
at startup, before any worker loads weights, and exit naming the key that breaks a rule.

- Sizes: frame width and height are multiples of the VAE's spatial compression (32 for LTX-Video
  and LTX-2), read from ``vae/config.json`` the way diffusers computes it.
- Lengths: the VAE takes clips of ``temporal_ratio * n + 1`` frames. A continuation segment
  generates K conditioning plus ``num_frames`` new frames; with K itself ``8n + 1``, ``num_frames``
  must be a multiple of the temporal ratio for that total to be a valid length with nothing wasted.
- Schedules: a distilled model comes with a fixed list of timesteps (LTX-Video) or sigmas (LTX-2).
  A request for fewer steps runs a subset of it, chosen as the original system does: both ends kept,
  the interior picked to make the largest jump between neighbours as small as possible.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from itertools import combinations, pairwise
from pathlib import Path
from typing import Any

from gpu.generator import MAX_STEPS, GeneratorError, is_finite_number

__all__ = [
    "DEFAULT_RATIOS",
    "check_sampling_rules",
    "check_schedule",
    "schedule_for_steps",
    "vae_ratios",
]

DEFAULT_RATIOS = (32, 8)  # (spatial, temporal) of every LTX VAE so far; used when a config does not say
_VAE_CONFIG = Path("vae") / "config.json"


def check_schedule(values: object, *, name: str, high: float) -> list[float] | None:
    """``values`` as a list of floats if it is a usable schedule (strictly falling, in ``[0, high]``).

    None stays None (the pipeline's own schedule); anything else wrong is a ValueError naming ``name``.
    """
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name} must be a non-empty list of numbers, got {values!r}")
    if len(values) > MAX_STEPS or not all(is_finite_number(value) and 0 <= value <= high for value in values):
        raise ValueError(f"{name} must hold at most {MAX_STEPS} numbers in [0, {high:g}], got {values!r}")
    floats = [float(value) for value in values]
    if any(later >= earlier for earlier, later in pairwise(floats)):
        raise ValueError(f"{name} must be strictly decreasing, got {values!r}")
    return floats


def schedule_for_steps(schedule: Sequence[float], steps: int) -> list[float]:
    """The ``steps`` entries of ``schedule`` to run: all of it, or a subset keeping both ends.

    The subset minimises the largest gap between consecutive values (then the last gap, then the sum
    of squared gaps), the gap after the last value running down to 0, as FastVideo's LTX-2 does with
    the distilled sigmas. ValueError when ``steps`` exceeds the schedule.
    """
    count = len(schedule)
    if not 1 <= steps <= count:
        raise ValueError(f"the configured schedule has {count} steps; a segment cannot run {steps}")
    if steps == count:
        return list(schedule)
    values = [*schedule, 0.0]  # the terminal value every schedule runs down to
    last = len(values) - 1
    best: tuple[float, float, float] | None = None
    chosen: tuple[int, ...] = ()
    for interior in combinations(range(1, last), steps - 1):
        indices = (0, *interior, last)
        gaps = [values[a] - values[b] for a, b in pairwise(indices)]
        key = (max(gaps), gaps[-1], sum(gap * gap for gap in gaps))
        if best is None or key < best:
            best, chosen = key, indices
    return [values[index] for index in chosen[:-1]]


def vae_ratios(model_path: str | Path) -> tuple[int, int]:
    """(spatial, temporal) compression of the pipeline's VAE, from its config; DEFAULT_RATIOS if unreadable.

    Explicit ``spatial_compression_ratio`` / ``temporal_compression_ratio`` win; otherwise the patch
    sizes times 2 per scaling stage, as diffusers' LTX VAEs compute them.
    """
    try:
        config = json.loads((Path(model_path) / _VAE_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return DEFAULT_RATIOS
    if not isinstance(config, Mapping):
        return DEFAULT_RATIOS
    scaling = config.get("spatio_temporal_scaling", (True, True, True))
    stages = sum(bool(stage) for stage in scaling) if isinstance(scaling, list) else 3
    spatial = _ratio(config, "spatial_compression_ratio", "patch_size", 4, stages)
    temporal = _ratio(config, "temporal_compression_ratio", "patch_size_t", 1, stages)
    return spatial, temporal


def _ratio(config: Mapping[str, Any], explicit: str, patch: str, default_patch: int, stages: int) -> int:
    value = config.get(explicit)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    patch_size = config.get(patch, default_patch)
    if not isinstance(patch_size, int) or isinstance(patch_size, bool) or patch_size < 1:
        patch_size = default_patch
    return int(patch_size * 2**stages)


def check_sampling_rules(
    model_path: str | Path,
    sampling: Mapping[str, Any],
    *,
    conditioning_frames: int,
    schedule_name: str | None,
    schedule_length: int | None,
    key_prefix: str,
    options_prefix: str = "generator.options",
) -> None:
    """GeneratorError naming the first config key whose value breaks the model's rules.

    ``sampling`` holds the config's default ``width``, ``height``, ``num_frames`` and
    ``num_inference_steps`` (missing ones are not checked); ``key_prefix`` is where they live in the
    config (``default_request.sampling``), for the message.
    """
    spatial, temporal = vae_ratios(model_path)
    if not isinstance(conditioning_frames, int) or (conditioning_frames - 1) % temporal:
        raise GeneratorError(
            f"{options_prefix}.conditioning_frames {conditioning_frames!r} must be {temporal}*n+1 "
            f"(1, {temporal + 1}, {2 * temporal + 1}, ...): this model's VAE compresses time {temporal}x"
        )
    for edge in ("width", "height"):
        value = sampling.get(edge)
        if value is not None and (not isinstance(value, int) or value < spatial or value % spatial):
            raise GeneratorError(
                f"{key_prefix}.{edge} {value!r} must be a positive multiple of {spatial}: "
                f"this model's VAE compresses space {spatial}x"
            )
    frames = sampling.get("num_frames")
    if frames is not None and (not isinstance(frames, int) or frames < 1 or frames % temporal):
        raise GeneratorError(
            f"{key_prefix}.num_frames {frames!r} must be a positive multiple of {temporal}: a continuation "
            f"generates conditioning_frames ({conditioning_frames}) + num_frames frames, and this model's VAE "
            f"takes {temporal}*n+1 frames (e.g. {conditioning_frames} + {4 * temporal} = "
            f"{conditioning_frames + 4 * temporal})"
        )
    steps = sampling.get("num_inference_steps")
    if schedule_length is not None and steps is not None and not 1 <= steps <= schedule_length:
        raise GeneratorError(
            f"{key_prefix}.num_inference_steps {steps!r} must be in 1..{schedule_length}: "
            f"{options_prefix}.{schedule_name} lists {schedule_length} steps (fewer run a subset of them)"
        )
