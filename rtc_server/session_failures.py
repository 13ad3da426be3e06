"""How a failure that ends a session is told to its client: error code, message, retryable.

Messages come from exceptions raised deep in the generator, the pool, PIL or the store, which
name server files (an initial image's temporary path, a model directory). ``describe_failure``
replaces every absolute filesystem path in them with ``<server path>``: the client learns what
went wrong, not how the server's disk is laid out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gpu.generator import GeneratorError, IncompatibleStateError
from gpu.pool import PoolError, PoolUnavailableError, WorkerFailedError
from rtc_server.init_image import InitImageError
from rtc_server.protocol import ErrorCode
from rtc_server.redact import REDACTED_PATH, redact_paths
from rtc_server.session_start import ResumeRefused
from rtc_server.store.base import StoreError

__all__ = ["REDACTED_PATH", "UNEXPECTED", "SessionFailure", "describe_failure", "failure_for", "redact_paths"]

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class SessionFailure:
    """The ``error`` a session ends with."""

    code: ErrorCode
    message: str
    retryable: bool


# The first matching type wins: more specific types first.
_FAILURES: tuple[tuple[type[Exception], ErrorCode, str, bool], ...] = (
    (InitImageError, "invalid_message", "{}", False),
    (ResumeRefused, "invalid_message", "{}", False),
    (StoreError, "internal_error", "session store failed: {}", True),
    (PoolUnavailableError, "gpu_unavailable", "{}", True),
    (WorkerFailedError, "worker_failed", "{}", True),
    (IncompatibleStateError, "invalid_message", "continuation_state refused: {}", False),
    (GeneratorError, "internal_error", "generation failed: {}", True),
    (PoolError, "internal_error", "generation failed: {}", True),
)


UNEXPECTED = SessionFailure("internal_error", "unexpected server error", True)


def failure_for(exc: Exception, *, label: str) -> SessionFailure:
    """What a session that ``exc`` ended tells its client; an unexpected one is logged as the bug it is."""
    failure = describe_failure(exc)
    if failure is None:
        logger.error("%s: unexpected failure", label, exc_info=exc)
        return UNEXPECTED
    return failure


def describe_failure(exc: Exception) -> SessionFailure | None:
    """The error for an expected failure, server paths redacted; None for anything else (a bug: log
    it, report internal_error)."""
    for kind, code, text, retryable in _FAILURES:
        if isinstance(exc, kind):
            return SessionFailure(code, redact_paths(text.format(exc)), retryable)
    return None
