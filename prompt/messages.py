"""Chat messages for the enhancer's operations and clean-up of single-prompt replies. Pure, no I/O."""

from __future__ import annotations

import re
from collections.abc import Sequence

from prompt.providers.base import LLMMessage

__all__ = [
    "MAX_PRIOR_PROMPTS",
    "MAX_PROMPT_CHARS",
    "auto_extend_messages",
    "clean_reply",
    "enhance_messages",
    "rewrite_messages",
    "strip_reasoning",
    "strip_wrapping_quotes",
]

MAX_PRIOR_PROMPTS = 8  # prior segments sent to auto_extend; older ones add tokens, not continuity
MAX_PROMPT_CHARS = 4000  # characters; longer input is refused before it costs tokens

# Local reasoning models (Qwen3, DeepSeek-R1 via Ollama or vLLM) put their thinking in the content.
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_QUOTE_PAIRS = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`"}


def _checked(text: str, what: str) -> str:
    text = text.strip()
    if not text:
        raise ValueError(f"{what} must be non-empty")
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(f"{what} is {len(text)} characters, over the limit of {MAX_PROMPT_CHARS}")
    return text


def enhance_messages(system_prompt: str, prompt: str) -> tuple[LLMMessage, ...]:
    """System prompt, then the user's prompt as is."""
    return (LLMMessage("system", system_prompt), LLMMessage("user", _checked(prompt, "prompt")))


def auto_extend_messages(
    system_prompt: str, prior_prompts: Sequence[str], *, max_prior: int = MAX_PRIOR_PROMPTS
) -> tuple[LLMMessage, ...]:
    """System prompt, then the last ``max_prior`` non-blank prior prompts, numbered oldest first."""
    prior = [p.strip() for p in prior_prompts if p.strip()][-max_prior:]
    if not prior:
        raise ValueError("auto_extend needs at least one prior prompt")
    listing = "\n".join(f"{i}. {_checked(p, 'prior prompt')}" for i, p in enumerate(prior, start=1))
    user = f"Prompts of the previous segments, oldest first:\n{listing}\n\nWrite the prompt for the next segment."
    return (LLMMessage("system", system_prompt), LLMMessage("user", user))


def rewrite_messages(system_prompt: str, seed_prompt: str, *, count: int) -> tuple[LLMMessage, ...]:
    """System prompt, then the seed and how many alternatives to write."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    seed = _checked(seed_prompt, "seed prompt")
    user = f"Seed prompt: {seed}\n\nWrite {count} alternative prompts, one per line."
    return (LLMMessage("system", system_prompt), LLMMessage("user", user))


def strip_reasoning(text: str) -> str:
    """``text`` without ``<think>...</think>`` blocks."""
    return _THINK_BLOCK.sub("", text)


def strip_wrapping_quotes(text: str) -> str:
    """``text`` without one pair of quotes around the whole of it."""
    text = text.strip()
    if len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1]:
        return text[1:-1].strip()
    return text


def clean_reply(text: str) -> str:
    """A single-prompt reply made fit to use as a prompt: no reasoning, quotes or line breaks."""
    return " ".join(strip_wrapping_quotes(strip_reasoning(text)).split())
