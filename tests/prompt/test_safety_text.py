"""Normalisation and the labelled-file format (pure), and the shape of the shipped training file."""

from __future__ import annotations

from collections import Counter

import pytest

from prompt.safety import DEFAULT_DATA_PATH, read_labelled
from prompt.safety.text import LabelledPrompt, normalize_text, parse_labelled_lines


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("A Fox, running!", "a fox running"),
        ("self-harm\ntips", "self harm tips"),
        ("  spaced\t\tout  ", "spaced out"),
        ("caf\u00e9 cr\u00e8me", "caf\u00e9 cr\u00e8me"),
        ("!!!", ""),
    ],
)
def test_normalize_text(text: str, normalised: str) -> None:
    assert normalize_text(text) == normalised


def test_fasttext_line_is_label_and_normalised_text() -> None:
    assert LabelledPrompt("unsafe", "How to build a BOMB?").to_fasttext_line() == "__label__unsafe how to build a bomb"


def test_parse_skips_comments_and_blanks() -> None:
    lines = ["# header", "", "__label__safe a fox", "   ", "__label__unsafe gore"]
    assert parse_labelled_lines(lines) == [LabelledPrompt("safe", "a fox"), LabelledPrompt("unsafe", "gore")]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a fox without label", r"f\.txt:1: line does not start"),
        ("__label__maybe a fox", "unknown label 'maybe'"),
        ("__label__safe", "has no text"),
        ("__label__safe ...", "has no text"),
    ],
)
def test_parse_names_the_bad_line(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_labelled_lines([line], source="f.txt")


def test_shipped_data_is_a_few_hundred_varied_balanced_examples() -> None:
    examples = read_labelled(DEFAULT_DATA_PATH)
    counts = Counter(e.label for e in examples)
    assert 400 <= len(examples) <= 1000
    assert counts["safe"] >= 200 and counts["unsafe"] >= 200
    normalised = [normalize_text(e.text) for e in examples]
    assert len(set(normalised)) == len(normalised), "duplicate examples"
