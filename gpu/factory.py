"""Build a generator from a backend name and its options (as read from config)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from gpu.generator import Generator, GeneratorError
from gpu.synthetic import SyntheticGenerator

__all__ = ["BACKENDS", "build_generator"]

# Option name -> accepted types, per backend. bool is never accepted where a number is expected.
_SYNTHETIC_OPTIONS: Mapping[str, tuple[type, ...]] = MappingProxyType(
    {"step_delay_s": (int, float), "fail_on_start": (bool,), "shapes": (int,)}
)
BACKENDS: tuple[str, ...] = ("synthetic",)


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


def build_generator(backend: str, options: Mapping[str, Any]) -> Generator:
    """The generator for ``backend`` built with ``options``; GeneratorError names what is wrong."""
    if backend == "synthetic":
        _check_options(backend, options, _SYNTHETIC_OPTIONS)
        try:
            return SyntheticGenerator(**options)
        except ValueError as exc:
            raise GeneratorError(f"backend {backend!r}: {exc}") from exc
    raise GeneratorError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
