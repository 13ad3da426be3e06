"""Build a generator from a backend name and its options (as read from config)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from gpu.diffusers_backend import DiffusersGenerator, check_model_dir
from gpu.generator import Generator, GeneratorError
from gpu.synthetic import SyntheticGenerator

__all__ = ["BACKENDS", "build_generator"]

# Option name -> accepted types, per backend. bool is never accepted where a number is expected.
_SYNTHETIC_OPTIONS: Mapping[str, tuple[type, ...]] = MappingProxyType(
    {"step_delay_s": (int, float), "frame_delay_s": (int, float), "fail_on_start": (bool,), "shapes": (int,)}
)
_DIFFUSERS_OPTIONS: Mapping[str, tuple[type, ...]] = MappingProxyType(
    {
        "model_path": (str,),
        "device": (str,),
        "dtype": (str,),
        "enable_model_cpu_offload": (bool,),
        "enable_vae_tiling": (bool,),
        "conditioning_frames": (int,),
        "conditioning_strength": (int, float),
        "decode_timestep": (int, float),
        "decode_noise_scale": (int, float),
        "max_sequence_length": (int,),
    }
)
_DIFFUSERS_REQUIRED = ("model_path",)
BACKENDS: tuple[str, ...] = ("synthetic", "diffusers")


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


def preflight(backend: str, options: Mapping[str, Any]) -> None:
    """Check a generator config without building it (no model load): options, and a model directory."""
    if backend == "synthetic":
        _check_options(backend, options, _SYNTHETIC_OPTIONS)
        return
    if backend == "diffusers":
        _check_options(backend, options, _DIFFUSERS_OPTIONS)
        missing = [key for key in _DIFFUSERS_REQUIRED if key not in options]
        if missing:
            raise GeneratorError(f"backend {backend!r} needs option(s) {', '.join(map(repr, missing))}")
        check_model_dir(options["model_path"])
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
    if backend == "diffusers":
        _check_options(backend, options, _DIFFUSERS_OPTIONS)
        missing = [key for key in _DIFFUSERS_REQUIRED if key not in options]
        if missing:
            raise GeneratorError(f"backend {backend!r} needs option(s) {', '.join(map(repr, missing))}")
        try:
            return DiffusersGenerator(**options)
        except ValueError as exc:
            raise GeneratorError(f"backend {backend!r}: {exc}") from exc
    raise GeneratorError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
