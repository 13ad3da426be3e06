"""The "rewrite seed prompts" flow: ask the enhancer for alternatives and split the reply into a list.

What is UI-specific (how many alternatives, how a reply is split) lives here so the enhancer stays
provider- and UI-agnostic. :func:`split_alternatives` is pure and tested on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prompt.enhancer import DEFAULT_REWRITE_COUNT, PromptEnhancer
from prompt.messages import strip_reasoning, strip_wrapping_quotes
from prompt.providers.base import LLMProviderError

__all__ = ["MAX_REWRITE_COUNT", "RewriteOptions", "RewriteResult", "build_rewrite", "split_alternatives"]

MAX_REWRITE_COUNT = 10  # alternatives per request; more is a UI mistake, and costs tokens

# A list marker at the start of a line: "-", "*", "•" bullets, or "1." / "1)" / "(1)" numbering.
# Numbering needs whitespace after it so "1.5 metre robot" keeps its number.
_LIST_MARKER = re.compile(r"^(?:[-*\u2022]+\s*|\(?\d{1,3}[.)]\s+)")


@dataclass(frozen=True, kw_only=True)
class RewriteOptions:
    """How many alternatives to ask for, and an optional temperature override."""

    count: int = DEFAULT_REWRITE_COUNT
    temperature: float | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_REWRITE_COUNT:
            raise ValueError(f"count must be between 1 and {MAX_REWRITE_COUNT}, got {self.count}")


@dataclass(frozen=True, kw_only=True)
class RewriteResult:
    """The alternatives written for a seed prompt and where they came from."""

    seed_prompt: str
    alternatives: tuple[str, ...]
    provider: str
    model: str
    latency_ms: float
    fallback_used: bool


def _clean_line(line: str) -> str:
    line = _LIST_MARKER.sub("", line.strip(), count=1)
    return strip_wrapping_quotes(line)


def split_alternatives(content: str, *, limit: int) -> tuple[str, ...]:
    """One alternative per non-blank line, list markers and wrapping quotes removed, at most ``limit``.

    Lines ending in ":" are taken for headings ("Here are three prompts:") and dropped, as are
    repeats (compared without case).
    """
    alternatives: list[str] = []
    seen: set[str] = set()
    for raw in strip_reasoning(content).splitlines():
        line = _clean_line(raw)
        if not line or line.endswith(":"):
            continue
        key = line.casefold()
        if key in seen:
            continue
        seen.add(key)
        alternatives.append(line)
        if len(alternatives) == limit:
            break
    return tuple(alternatives)


async def build_rewrite(
    enhancer: PromptEnhancer, seed_prompt: str, *, options: RewriteOptions | None = None
) -> RewriteResult:
    """Run a rewrite through the enhancer and return the alternatives.

    ValueError for an empty seed; :class:`LLMProviderError` when the providers fail or the reply
    holds no usable line (retryable: another try may do better).
    """
    if not seed_prompt.strip():
        raise ValueError("rewrite seed prompt must be non-empty")
    options = options or RewriteOptions()
    response = await enhancer.rewrite(seed_prompt, count=options.count, temperature=options.temperature)
    alternatives = split_alternatives(response.content, limit=options.count)
    if not alternatives:
        raise LLMProviderError(
            f"{response.provider}: rewrite reply held no alternatives", retryable=True, provider=response.provider
        )
    return RewriteResult(
        seed_prompt=seed_prompt,
        alternatives=alternatives,
        provider=response.provider,
        model=response.model,
        latency_ms=response.latency_ms,
        fallback_used=response.fallback_used,
    )
