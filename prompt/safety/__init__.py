"""Prompt safety: a fastText classifier (trained by this package from a labelled file it ships) and the filter."""

from prompt.safety.filter import (
    DEFAULT_BLOCK_THRESHOLD,
    PromptSafetyFilter,
    SafetyDecision,
    SafetyModelError,
    SafetyResult,
    first_blocked,
    load_fasttext_model,
    preflight_safety,
)
from prompt.safety.train import (
    DEFAULT_DATA_PATH,
    EvalReport,
    TrainingError,
    TrainOptions,
    TrainReport,
    evaluate,
    read_labelled,
    train_classifier,
)

__all__ = [
    "DEFAULT_BLOCK_THRESHOLD",
    "DEFAULT_DATA_PATH",
    "EvalReport",
    "PromptSafetyFilter",
    "SafetyDecision",
    "SafetyModelError",
    "SafetyResult",
    "TrainOptions",
    "TrainReport",
    "TrainingError",
    "evaluate",
    "first_blocked",
    "load_fasttext_model",
    "preflight_safety",
    "read_labelled",
    "train_classifier",
]
