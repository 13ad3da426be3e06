"""Building generators from config: known backends, and errors that name what is wrong."""

from __future__ import annotations

from typing import Any

import pytest

from gpu.factory import build_generator
from gpu.generator import GeneratorError
from gpu.synthetic import SyntheticGenerator


def test_synthetic_backend_builds_with_options() -> None:
    generator = build_generator("synthetic", {"step_delay_s": 0, "frame_delay_s": 0.01, "shapes": 3})
    assert isinstance(generator, SyntheticGenerator)
    assert generator.name == "synthetic"


def test_unknown_backend_is_named() -> None:
    with pytest.raises(GeneratorError, match="unknown backend 'nope'"):
        build_generator("nope", {})


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"colour": "red"}, "unknown option 'colour'"),
        ({"shapes": "6"}, "option 'shapes'"),
        ({"shapes": True}, "option 'shapes'"),
        ({"step_delay_s": "0.1"}, "option 'step_delay_s'"),
        ({"frame_delay_s": True}, "option 'frame_delay_s'"),
        ({"frame_delay_s": -0.1}, "frame_delay_s must be a non-negative number"),
        ({"fail_on_start": 1}, "option 'fail_on_start'"),
        ({"shapes": 0}, "shapes"),
    ],
)
def test_bad_options_raise_generator_error_naming_them(options: dict[str, Any], named: str) -> None:
    with pytest.raises(GeneratorError, match=named):
        build_generator("synthetic", options)


def test_fail_on_start_surfaces_as_generator_error() -> None:
    with pytest.raises(GeneratorError, match="fail_on_start"):
        build_generator("synthetic", {"fail_on_start": True})
