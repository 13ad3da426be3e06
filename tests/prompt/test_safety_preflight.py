"""The safety filter fails closed: ``preflight_safety`` / ``require_ready`` refuse a model that cannot run.

Every case names the configured path; a truncated model is refused by the file check before
fastText reads it (fastText would trust its sizes and could get the process killed).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from prompt.safety import PromptSafetyFilter, SafetyModelError, load_fasttext_model, preflight_safety
from prompt.safety.filter import FastTextModel
from prompt.safety.model_file import ModelFileError, check_fasttext_file


def test_a_trained_model_passes_and_stays_loaded(trained_model: Path) -> None:
    preflight_safety(trained_model)
    safety = PromptSafetyFilter(classifier_path=trained_model)
    safety.require_ready()
    assert safety.loaded  # the server's filter is ready before the first prompt
    check_fasttext_file(trained_model)


def test_a_missing_model_is_refused_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.bin"
    with pytest.raises(SafetyModelError, match=re.escape(str(missing))) as caught:
        preflight_safety(missing)
    assert "does not exist" in str(caught.value)


def test_no_classifier_path_is_refused() -> None:
    with pytest.raises(SafetyModelError, match="no classifier_path"):
        preflight_safety(None)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "empty"),
        (b"this is not a model\n" * 20, "wrong magic"),
    ],
    ids=["empty", "text"],
)
def test_a_file_that_is_not_a_model_is_refused(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(content)
    with pytest.raises(SafetyModelError, match=re.escape(str(path))) as caught:
        preflight_safety(path)
    assert why in str(caught.value)


@pytest.mark.parametrize("keep", [20, 200, 5000, 0.5, -1], ids=["args", "dictionary", "words", "half", "last-byte"])
def test_a_truncated_model_is_refused_before_fasttext_reads_it(
    trained_model: Path, tmp_path: Path, keep: float
) -> None:
    data = trained_model.read_bytes()
    size = int(len(data) * keep) if isinstance(keep, float) else (len(data) + keep if keep < 0 else keep)
    path = tmp_path / "model.bin"
    path.write_bytes(data[:size])
    with pytest.raises(ModelFileError, match="truncated"):
        check_fasttext_file(path)
    with pytest.raises(SafetyModelError, match=re.escape(str(path))) as caught:
        preflight_safety(path)
    assert "truncated" in str(caught.value)


def test_missing_fasttext_is_refused_naming_the_path(trained_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fasttext", None)  # `import fasttext` raises ImportError
    with pytest.raises(SafetyModelError, match="fastText is not installed") as caught:
        preflight_safety(trained_model)
    assert str(trained_model) in str(caught.value)


class _NoUnsafeLabel:
    """A model that loads but knows only one label: every decision would be UNAVAILABLE (prompts pass)."""

    def predict(self, text: str, k: int = 1, threshold: float = 0.0) -> tuple[Sequence[str], Any]:
        return ["__label__safe"], [1.0]


def test_a_model_without_an_unsafe_label_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    calls: list[str] = []

    def loader(p: str) -> FastTextModel:
        calls.append(p)
        return _NoUnsafeLabel()

    with pytest.raises(SafetyModelError, match="no 'unsafe' label") as caught:
        preflight_safety(path, loader=loader)
    assert str(path) in str(caught.value) and calls == [str(path)]


def test_a_loader_error_is_refused_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"

    def loader(p: str) -> FastTextModel:
        raise OSError(13, "Permission denied", p)

    with pytest.raises(SafetyModelError, match="Permission denied") as caught:
        preflight_safety(path, loader=loader)
    assert str(path) in str(caught.value)


def test_a_disabled_filter_needs_no_model() -> None:
    PromptSafetyFilter(classifier_path=None, enabled=False).require_ready()  # nothing to check


def test_the_real_loader_still_loads_a_good_model(trained_model: Path) -> None:
    model = load_fasttext_model(str(trained_model))
    labels, _ = model.predict("a fox", k=-1, threshold=0.0)
    assert set(labels) == {"__label__safe", "__label__unsafe"}
