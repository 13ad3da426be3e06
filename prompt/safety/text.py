"""Text handling shared by training and classification: normalisation and the labelled-file format. Pure.

fastText splits on whitespace only, so "Gore!" and "gore" would be different words; both the training
file and every prompt classified go through :func:`normalize_text` so they meet the same vocabulary.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "LABELS",
    "LABEL_PREFIX",
    "SAFE_LABEL",
    "UNSAFE_LABEL",
    "LabelledPrompt",
    "normalize_text",
    "parse_labelled_lines",
]

LABEL_PREFIX = "__label__"
SAFE_LABEL = "safe"
UNSAFE_LABEL = "unsafe"
LABELS: tuple[str, ...] = (SAFE_LABEL, UNSAFE_LABEL)
MAX_TEXT_CHARS = 8192  # characters looked at; bounds the CPU one prompt can cost

_WORD = re.compile(r"\w+")


def normalize_text(text: str) -> str:
    """Lower-case words separated by single spaces; punctuation and line breaks dropped."""
    return " ".join(_WORD.findall(text[:MAX_TEXT_CHARS].lower()))


@dataclass(frozen=True)
class LabelledPrompt:
    """One training or evaluation example."""

    label: str
    text: str

    def to_fasttext_line(self) -> str:
        """The example as a fastText training line, text normalised."""
        return f"{LABEL_PREFIX}{self.label} {normalize_text(self.text)}"


def parse_labelled_lines(lines: Iterable[str], *, source: str = "<data>") -> list[LabelledPrompt]:
    """Examples from ``__label__safe some prompt`` lines; blank lines and ``#`` comments are skipped.

    ValueError names the source and line of anything else (an unknown label, a label with no text).
    """
    examples: list[LabelledPrompt] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        head, _, text = line.partition(" ")
        if not head.startswith(LABEL_PREFIX):
            raise ValueError(f"{source}:{number}: line does not start with {LABEL_PREFIX}<label>")
        label = head[len(LABEL_PREFIX) :]
        if label not in LABELS:
            raise ValueError(f"{source}:{number}: unknown label {label!r} (known: {', '.join(LABELS)})")
        if not normalize_text(text):
            raise ValueError(f"{source}:{number}: label {label!r} has no text")
        examples.append(LabelledPrompt(label, text.strip()))
    return examples
