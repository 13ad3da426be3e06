"""Build a generator from a backend name and its options (as read from config).

``preflight`` checks the same options without building anything (no torch, no weights): option
names and types, schedule values, the model directory, and, given the config's default sampling
values, the model's size rules, so a bad config stops the server at startup naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from gpu.diffusers_backend import DEFAULT_CONDITIONING_FRAMES, DiffusersGenerator
from gpu.diffusers_runtime import check_model_dir
from gpu.diffusion_rules import check_sampling_rules, check_schedule
from gpu.generator import Generator, GeneratorError
from gpu.synthetic import SyntheticGenerator

__all__ = ["BACKENDS", "build_generator", "preflight"]

_NONE = type(None)  # YAML null: "not set"

# Option name -> accepted types, per backend. bool is never accepted where a number is expected.
_SYNTHETIC_OPTIONS: Mapping[str, tuple[type, ...]] = MappingProxyType(
    {
        "step_delay_s": (int, float),
        "frame_delay_s": (int, float),
        "fail_on_start": (bool,),
        "shapes": (int,),
        "audio": (bool,),
    }
)
# The options both diffusers backends take (diffusers_runtime: placement, loading, conditioning, prompts).
_PIPELINE_OPTIONS: Mapping[str, tuple[type, ...]] = MappingProxyType(
    {
        "model_path": (str,),
        "device": (str,),
        "dtype": (str,),
        "enable_model_cpu_offload": (bool,),
        "enable_vae_tiling": (bool,),
        "conditioning_frames": (int,),
        "conditioning_strength": (int, float),
        "guidance_rescale": (int, float),
        "max_sequence_length": (int,),
        "prompt_cache_size": (int,),
    }
)
_DIFFUSERS_OPTIONS: Mapping[str, tuple[type, ...]] = MappingProxyType(
    {
        **_PIPELINE_OPTIONS,
        "decode_timestep": (int, float),
        "decode_noise_scale": (int, float),
        "timesteps": (list, _NONE),
        "image_cond_noise_scale": (int, float),
    }
)
_LTX2_OPTIONS: Mapping[str, tuple[type, ...]] = MappingProxyType(
    {
        **_PIPELINE_OPTIONS,
        "audio_conditioning": (bool,),
        "sigmas": (list, _NONE),
        "audio_guidance_scale": (int, float, _NONE),
        "stg_scale": (int, float),
        "stg_blocks": (list,),
        "modality_scale": (int, float),
        "use_cross_timestep": (bool,),
    }
)
_DIFFUSERS_REQUIRED = ("model_path",)
# Per model backend: its options, and the option holding a fixed schedule with that schedule's range.
_MODEL_BACKENDS: Mapping[str, tuple[Mapping[str, tuple[type, ...]], str, float]] = MappingProxyType(
    {
        "diffusers": (_DIFFUSERS_OPTIONS, "timesteps", 1000.0),
        "diffusers_ltx2": (_LTX2_OPTIONS, "sigmas", 1.0),
    }
)
BACKENDS: tuple[str, ...] = ("synthetic", "diffusers", "diffusers_ltx2")


def _check_options(backend: str, options: Mapping[str, Any], allowed: Mapping[str, tuple[type, ...]]) -> None:
    for key, value in options.items():
        if key not in allowed:
            raise GeneratorError(
                f"unknown option {key!r} for backend {backend!r} (known: {', '.join(sorted(allowed))})"
            )
        types = allowed[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = " or ".join(t.__name__ for t in types)
            raise GeneratorError(
                f"option {key!r} for backend {backend!r} must be {expected}, got {type(value).__name__}"
            )


def _check_model_options(backend: str, options: Mapping[str, Any]) -> None:
    allowed, schedule_name, schedule_high = _MODEL_BACKENDS[backend]
    _check_options(backend, options, allowed)
    missing = [key for key in _DIFFUSERS_REQUIRED if key not in options]
    if missing:
        raise GeneratorError(f"backend {backend!r} needs option(s) {', '.join(map(repr, missing))}")
    try:
        check_schedule(options.get(schedule_name), name=schedule_name, high=schedule_high)
    except ValueError as exc:
        raise GeneratorError(f"backend {backend!r}: {exc}") from exc


def preflight(
    backend: str,
    options: Mapping[str, Any],
    *,
    sampling: Mapping[str, Any] | None = None,
    sampling_key: str = "sampling",
    options_key: str = "generator.options",
) -> None:
    """Check a generator config without building it (no model load).

    Options and their types, a fixed schedule's values, the model directory, and, with ``sampling``
    (the config's default ``width``, ``height``, ``num_frames``, ``num_inference_steps``), the
    model's size and length rules. GeneratorError names the key: ``{sampling_key}.num_frames``,
    ``{options_key}.conditioning_frames``.
    """
    if backend == "synthetic":
        _check_options(backend, options, _SYNTHETIC_OPTIONS)
        return
    if backend in _MODEL_BACKENDS:
        _check_model_options(backend, options)
        check_model_dir(options["model_path"])
        if sampling is not None:
            _, schedule_name, _ = _MODEL_BACKENDS[backend]
            schedule = options.get(schedule_name)
            check_sampling_rules(
                options["model_path"],
                sampling,
                conditioning_frames=options.get("conditioning_frames", DEFAULT_CONDITIONING_FRAMES),
                schedule_name=schedule_name,
                schedule_length=None if schedule is None else len(schedule),
                key_prefix=sampling_key,
                options_prefix=options_key,
            )
        return
    raise GeneratorError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")


def build_generator(backend: str, options: Mapping[str, Any]) -> Generator:
    """The generator for ``backend`` built with ``options``; GeneratorError names what is wrong."""
    if backend == "synthetic":
        _check_options(backend, options, _SYNTHETIC_OPTIONS)
        try:
            return SyntheticGenerator(**options)
        except ValueError as exc:
            raise GeneratorError(f"backend {backend!r}: {exc}") from exc
    if backend in _MODEL_BACKENDS:
        _check_model_options(backend, options)
        try:
            if backend == "diffusers":
                return DiffusersGenerator(**options)
            from gpu.diffusers_ltx2 import DiffusersLtx2Generator

            return DiffusersLtx2Generator(**options)
        except ValueError as exc:
            raise GeneratorError(f"backend {backend!r}: {exc}") from exc
    raise GeneratorError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
