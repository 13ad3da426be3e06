"""Train and evaluate the safety classifier from a labelled prompt file (blocking work).

Defaults train in well under a second on the shipped file, reproducibly: one thread and a fixed
seed make fastText's SGD order fixed, and training runs in a fresh child process
(:mod:`prompt.safety._fit` says why) so no stale memory leaks into the weights or turns them NaN.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prompt.safety.filter import PromptSafetyFilter, SafetyDecision
from prompt.safety.text import LABELS, UNSAFE_LABEL, LabelledPrompt, parse_labelled_lines

__all__ = [
    "DEFAULT_DATA_PATH",
    "EvalReport",
    "TrainOptions",
    "TrainReport",
    "TrainingError",
    "evaluate",
    "read_labelled",
    "train_classifier",
]

logger = logging.getLogger(__name__)

DEFAULT_DATA_PATH = Path(__file__).with_name("data") / "prompts.txt"
MIN_EXAMPLES_PER_LABEL = 10
DEFAULT_TRAIN_TIMEOUT_S = 300.0  # seconds; the shipped file takes well under one second
# glibc's default threshold (128 KiB), pinned: a pinned threshold stops glibc from raising it, so the
# weight matrices always come from mmap, zero-filled (see prompt.safety._fit).
_MMAP_THRESHOLD_BYTES = 128 * 1024
# Run by path, not `-m`, so the child imports only fastText, not this package and its dependencies;
# -P keeps the script's own directory (whose text.py, filter.py could shadow other modules) off sys.path.
_FIT_SCRIPT = Path(__file__).with_name("_fit.py")


class TrainingError(RuntimeError):
    """The data was unusable or fastText failed to train (e.g. diverged to NaN)."""


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """fastText supervised-training parameters (names as in fastText, snake_cased)."""

    epoch: int = 40
    lr: float = 0.3
    dim: int = 32
    word_ngrams: int = 2
    minn: int = 3  # character n-grams from 3 to 5 letters: "decapitated" still meets "decapitation"
    maxn: int = 5
    bucket: int = 50_000  # hashed n-gram rows; fastText's 2M default makes a ~250 MB model
    min_count: int = 1
    loss: str = "softmax"
    seed: int = 0
    threads: int = 1  # more threads make SGD order, and so the model, nondeterministic

    def fasttext_args(self) -> dict[str, Any]:
        """The keyword arguments for ``fasttext.train_supervised``."""
        return {
            "epoch": self.epoch,
            "lr": self.lr,
            "dim": self.dim,
            "wordNgrams": self.word_ngrams,
            "minn": self.minn,
            "maxn": self.maxn,
            "bucket": self.bucket,
            "minCount": self.min_count,
            "loss": self.loss,
            "seed": self.seed,
            "thread": self.threads,
            "verbose": 0,
        }


@dataclass(frozen=True, kw_only=True)
class TrainReport:
    """What was trained: examples per label, seconds spent, where the model went."""

    out_path: Path
    label_counts: Mapping[str, int]
    seconds: float

    @property
    def examples(self) -> int:
        return sum(self.label_counts.values())


@dataclass(frozen=True, kw_only=True)
class EvalReport:
    """Accuracy of a filter on labelled examples, with the misclassified ones."""

    total: int
    correct: int
    errors: tuple[tuple[LabelledPrompt, float | None], ...] = field(default=())

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def read_labelled(path: str | Path) -> list[LabelledPrompt]:
    """The examples in a labelled prompt file (see :func:`prompt.safety.text.parse_labelled_lines`)."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        return parse_labelled_lines(f, source=str(path))


def _check_balance(examples: Sequence[LabelledPrompt], source: str) -> Counter[str]:
    counts = Counter(e.label for e in examples)
    for label in LABELS:
        if counts[label] < MIN_EXAMPLES_PER_LABEL:
            raise TrainingError(
                f"{source}: {counts[label]} examples labelled {label!r}, need at least {MIN_EXAMPLES_PER_LABEL}"
            )
    return counts


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MALLOC_PERTURB_", None)  # would fill fresh memory with garbage on purpose
    env["MALLOC_MMAP_THRESHOLD_"] = str(_MMAP_THRESHOLD_BYTES)
    return env


def _fit_in_child(input_path: Path, output_path: Path, options: TrainOptions, timeout_s: float) -> None:
    job = {"input": str(input_path), "output": str(output_path), "args": options.fasttext_args()}
    try:
        proc = subprocess.run(
            [sys.executable, "-P", str(_FIT_SCRIPT)],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            env=_child_env(),
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise TrainingError(f"fastText training took longer than {timeout_s:.0f} s") from exc
    except OSError as exc:
        raise TrainingError(f"cannot start the training process: {exc}") from exc
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit status {proc.returncode}"
        raise TrainingError(f"fastText training failed: {detail}")


def train_classifier(
    data_path: str | Path = DEFAULT_DATA_PATH,
    out_path: str | Path = "safety_model.bin",
    options: TrainOptions | None = None,
    *,
    timeout_s: float = DEFAULT_TRAIN_TIMEOUT_S,
) -> TrainReport:
    """Train a fastText classifier on ``data_path`` and save it to ``out_path`` (replaced atomically). Blocking."""
    if importlib.util.find_spec("fasttext") is None:
        raise TrainingError("fastText is not installed (pip install the 'safety' extra)")
    options = options or TrainOptions()
    try:
        examples = read_labelled(data_path)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot read training data: {exc}") from exc
    counts = _check_balance(examples, str(data_path))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="safety-train-") as tmp:
        # fastText reads a file; it gets the normalised text, the same form classify() predicts on.
        normalised = Path(tmp) / "train.txt"
        normalised.write_text("".join(e.to_fasttext_line() + "\n" for e in examples), encoding="utf-8")
        # Written beside the target, then renamed: a server loading the model never sees half a file.
        partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
        try:
            _fit_in_child(normalised, partial, options, timeout_s)
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    logger.info("safety classifier: trained on %d examples in %.2f s -> %s", len(examples), seconds, out)
    return TrainReport(out_path=out, label_counts=dict(counts), seconds=seconds)


def evaluate(filter_: PromptSafetyFilter, examples: Sequence[LabelledPrompt]) -> EvalReport:
    """How many ``examples`` the filter decides as labelled (BLOCK for unsafe, ALLOW for safe). Blocking."""
    errors: list[tuple[LabelledPrompt, float | None]] = []
    for example in examples:
        result = filter_.classify(example.text)
        if result.decision is SafetyDecision.UNAVAILABLE:
            raise TrainingError(f"cannot evaluate: safety filter unavailable: {result.reason}")
        if result.blocked != (example.label == UNSAFE_LABEL):
            errors.append((example, result.unsafe_score))
    return EvalReport(total=len(examples), correct=len(examples) - len(errors), errors=tuple(errors))
