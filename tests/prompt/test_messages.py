"""Message building for the enhancer's operations and clean-up of single-prompt replies (pure)."""

from __future__ import annotations

import pytest

from prompt.messages import (
    MAX_PRIOR_PROMPTS,
    MAX_PROMPT_CHARS,
    auto_extend_messages,
    clean_reply,
    enhance_messages,
    rewrite_messages,
)
from prompt.providers import LLMMessage


def test_enhance_is_system_then_the_stripped_prompt() -> None:
    assert enhance_messages("SYS", "  a fox  ") == (LLMMessage("system", "SYS"), LLMMessage("user", "a fox"))


@pytest.mark.parametrize("prompt", ["", "   \n"])
def test_enhance_refuses_empty_prompts(prompt: str) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        enhance_messages("SYS", prompt)


def test_overlong_prompts_are_refused() -> None:
    with pytest.raises(ValueError, match="over the limit"):
        enhance_messages("SYS", "x" * (MAX_PROMPT_CHARS + 1))


def test_auto_extend_numbers_prior_prompts_oldest_first() -> None:
    system, user = auto_extend_messages("SYS", ["a fox wakes", " ", "the fox runs"])
    assert system == LLMMessage("system", "SYS")
    assert user.role == "user"
    assert "1. a fox wakes\n2. the fox runs\n" in user.content
    assert user.content.endswith("Write the prompt for the next segment.")


def test_auto_extend_keeps_only_the_latest_prompts() -> None:
    prior = [f"scene {i}" for i in range(MAX_PRIOR_PROMPTS + 5)]
    _, user = auto_extend_messages("SYS", prior)
    assert "scene 4" not in user.content
    assert "1. scene 5\n" in user.content
    assert f"{MAX_PRIOR_PROMPTS}. scene {MAX_PRIOR_PROMPTS + 4}" in user.content


@pytest.mark.parametrize("prior", [[], ["", "  "]])
def test_auto_extend_needs_a_prior_prompt(prior: list[str]) -> None:
    with pytest.raises(ValueError, match="at least one prior prompt"):
        auto_extend_messages("SYS", prior)


def test_rewrite_asks_for_count_alternatives() -> None:
    _, user = rewrite_messages("SYS", "a fox", count=4)
    assert user.content == "Seed prompt: a fox\n\nWrite 4 alternative prompts, one per line."


def test_rewrite_refuses_zero_count() -> None:
    with pytest.raises(ValueError, match="count"):
        rewrite_messages("SYS", "a fox", count=0)


@pytest.mark.parametrize(
    ("reply", "cleaned"),
    [
        ("  A fox in snow.  ", "A fox in snow."),
        ('"A fox in snow."', "A fox in snow."),
        ("\u201cA fox in snow.\u201d", "A fox in snow."),
        ("'A fox'", "A fox"),
        ("A fox\nin snow", "A fox in snow"),
        ("<think>the user wants a fox</think>\nA fox in snow", "A fox in snow"),
        ('A "quoted" word', 'A "quoted" word'),
        ("<think>only thinking</think>", ""),
    ],
)
def test_clean_reply(reply: str, cleaned: str) -> None:
    assert clean_reply(reply) == cleaned
