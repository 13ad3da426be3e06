"""The prompt safety filter: a fastText classifier, loaded lazily once, deciding ALLOW / BLOCK / UNAVAILABLE.

:meth:`PromptSafetyFilter.classify` is blocking CPU work (and, on first use, model file I/O): the
server calls it through ``asyncio.to_thread``. It is thread-safe: loading happens once under a lock,
and predictions are serialised on the shared model (each takes microseconds).
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prompt.safety.model_file import ModelFileError, check_fasttext_file
from prompt.safety.text import LABEL_PREFIX, UNSAFE_LABEL, normalize_text

__all__ = [
    "DEFAULT_BLOCK_THRESHOLD",
    "FastTextModel",
    "ModelLoader",
    "PromptSafetyFilter",
    "SafetyDecision",
    "SafetyModelError",
    "SafetyResult",
    "first_blocked",
    "load_fasttext_model",
    "preflight_safety",
]

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_THRESHOLD = 0.5  # probability of "unsafe" at or above which a prompt is blocked
_PROBE_PROMPT = "a red fox running through fresh snow"  # scored once by require_ready


class SafetyModelError(RuntimeError):
    """The classifier could not be loaded (fastText not installed, file missing or not a model)."""


class SafetyDecision(enum.Enum):
    """What to do with a prompt."""

    ALLOW = "allow"
    BLOCK = "block"
    # The classifier could not run (disabled, not configured, model missing, prediction failed).
    # An enabled filter whose model cannot be used stops the server at start (require_ready, fail
    # closed); what is left at run time (a prediction failing) the server refuses the prompt for.
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, kw_only=True)
class SafetyResult:
    """The decision on one prompt, the classifier's probability of "unsafe" (None when it did not run), and why."""

    prompt: str
    decision: SafetyDecision
    unsafe_score: float | None
    reason: str

    @property
    def blocked(self) -> bool:
        return self.decision is SafetyDecision.BLOCK


class FastTextModel(Protocol):
    """The part of a fastText model the filter uses."""

    def predict(self, text: str, k: int = ..., threshold: float = ...) -> tuple[Sequence[str], Any]: ...


ModelLoader = Callable[[str], FastTextModel]


def load_fasttext_model(path: str) -> FastTextModel:
    """Load a fastText model file; :class:`SafetyModelError` when fastText or the file is missing."""
    try:
        import fasttext  # type: ignore[import-untyped]  # optional extra: prompt safety
    except ImportError as exc:
        raise SafetyModelError("fastText is not installed (pip install the 'safety' extra)") from exc
    if not Path(path).is_file():
        raise SafetyModelError(f"safety model {path} does not exist")
    try:
        # fastText trusts the sizes in the file: a truncated one can get the process killed.
        check_fasttext_file(path)
    except ModelFileError as exc:
        raise SafetyModelError(f"safety model {path} is not a usable fastText model: {exc}") from exc
    try:
        model: FastTextModel = fasttext.load_model(path)
    except (ValueError, RuntimeError, MemoryError) as exc:
        raise SafetyModelError(f"safety model {path} could not be loaded: {exc}") from exc
    return model


class PromptSafetyFilter:
    """Scores prompts with a fastText classifier whose labels are ``safe`` and ``unsafe``.

    The model is loaded on first use (or by :meth:`load`), once: a failed load is not retried on
    every prompt, it makes every decision UNAVAILABLE until ``load(force=True)``. ``loader`` is
    injectable so tests can count loads.
    """

    def __init__(
        self,
        *,
        classifier_path: str | Path | None,
        enabled: bool = True,
        block_threshold: float = DEFAULT_BLOCK_THRESHOLD,
        loader: ModelLoader = load_fasttext_model,
    ) -> None:
        if not 0.0 < block_threshold <= 1.0:
            raise ValueError(f"block_threshold must be in (0, 1], got {block_threshold}")
        self._classifier_path = str(classifier_path) if classifier_path is not None else None
        self._enabled = enabled
        self._block_threshold = block_threshold
        self._loader = loader
        self._model: FastTextModel | None = None
        self._load_attempted = False
        self._load_error: str | None = None
        self._load_lock = threading.Lock()
        self._predict_lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def classifier_path(self) -> str | None:
        return self._classifier_path

    @property
    def block_threshold(self) -> float:
        return self._block_threshold

    @property
    def loaded(self) -> bool:
        """True once a model is loaded and ready."""
        return self._model is not None

    @property
    def unavailable_reason(self) -> str | None:
        """Why decisions would be UNAVAILABLE now, or None when the filter can run (or has yet to try loading)."""
        if not self._enabled:
            return "safety filter disabled"
        if self._classifier_path is None:
            return "no safety classifier configured"
        return self._load_error

    def load(self, *, force: bool = False) -> bool:
        """Load the model now (blocking); True when one is ready. ``force`` retries after a failure."""
        if not self._enabled or self._classifier_path is None:
            return False
        with self._load_lock:
            if self._model is not None or (self._load_attempted and not force):
                return self._model is not None
            self._load_attempted = True
            try:
                self._model = self._loader(self._classifier_path)
            except (SafetyModelError, OSError, ValueError) as exc:
                self._load_error = str(exc)
                logger.error("safety filter unavailable: %s", exc)
                return False
            self._load_error = None
            logger.info("safety filter: loaded %s", self._classifier_path)
            return True

    def require_ready(self) -> None:
        """Load the model now and check that it scores prompts; :class:`SafetyModelError` naming the path if not.

        For an enabled filter that must fail closed (the server at start): where :meth:`classify`
        would answer UNAVAILABLE and let prompts through, this raises. Blocking.
        """
        if not self._enabled:
            return
        path = self._classifier_path
        if path is None:
            raise SafetyModelError("the safety filter is enabled but no classifier_path is configured")
        reason = None if self.load() else self._load_error or "the model did not load"
        if reason is None:
            probe = self.classify(_PROBE_PROMPT)
            if probe.decision is SafetyDecision.UNAVAILABLE:
                reason = f"the model cannot score prompts: {probe.reason}"
        if reason is not None:
            where = "" if path in reason else f" (classifier_path {path})"
            raise SafetyModelError(f"the safety filter is enabled but cannot run: {reason}{where}")

    def classify(self, prompt: str) -> SafetyResult:
        """ALLOW or BLOCK ``prompt``, or UNAVAILABLE when the classifier cannot run. Blocking."""
        reason = self.unavailable_reason
        if reason is None and not self.load():
            reason = self.unavailable_reason or "safety model not loaded"
        if reason is not None or self._model is None:
            return SafetyResult(
                prompt=prompt, decision=SafetyDecision.UNAVAILABLE, unsafe_score=None, reason=reason or ""
            )
        text = normalize_text(prompt)
        if not text:
            return SafetyResult(prompt=prompt, decision=SafetyDecision.ALLOW, unsafe_score=0.0, reason="no words")
        try:
            with self._predict_lock:
                labels, probs = self._model.predict(text, k=-1, threshold=0.0)
            scores = {label: float(p) for label, p in zip(labels, probs, strict=True)}
        except (ValueError, RuntimeError, TypeError) as exc:
            logger.warning("safety filter: prediction failed: %s", exc)
            return SafetyResult(
                prompt=prompt,
                decision=SafetyDecision.UNAVAILABLE,
                unsafe_score=None,
                reason=f"prediction failed: {exc}",
            )
        unsafe_key = LABEL_PREFIX + UNSAFE_LABEL
        if unsafe_key not in scores:
            return SafetyResult(
                prompt=prompt,
                decision=SafetyDecision.UNAVAILABLE,
                unsafe_score=None,
                reason=f"model has no {UNSAFE_LABEL!r} label",
            )
        score = scores[unsafe_key]
        if score >= self._block_threshold:
            return SafetyResult(
                prompt=prompt,
                decision=SafetyDecision.BLOCK,
                unsafe_score=score,
                reason=f"unsafe score {score:.3f} >= {self._block_threshold}",
            )
        return SafetyResult(
            prompt=prompt,
            decision=SafetyDecision.ALLOW,
            unsafe_score=score,
            reason=f"unsafe score {score:.3f} < {self._block_threshold}",
        )


def preflight_safety(
    classifier_path: str | Path | None,
    *,
    block_threshold: float = DEFAULT_BLOCK_THRESHOLD,
    loader: ModelLoader = load_fasttext_model,
) -> None:
    """Check before starting a server that an enabled safety filter can run (fail closed).

    Loads the model at ``classifier_path`` with ``loader`` and scores one prompt; raises
    :class:`SafetyModelError` naming the path when fastText is missing, the file is missing,
    truncated or not a model, or the model has no ``unsafe`` label. Blocking.
    """
    PromptSafetyFilter(classifier_path=classifier_path, block_threshold=block_threshold, loader=loader).require_ready()


def first_blocked(filter_: PromptSafetyFilter, prompts: Sequence[str]) -> SafetyResult | None:
    """The result for the first prompt the filter blocks, or None. Blocking, like ``classify``."""
    for prompt in prompts:
        result = filter_.classify(prompt)
        if result.decision is SafetyDecision.BLOCK:
            return result
    return None
