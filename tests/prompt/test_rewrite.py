"""Rewrite: splitting a reply into alternatives (pure) and the whole flow over a real provider."""

from __future__ import annotations

import httpx
import pytest

from prompt import PromptEnhancer, RewriteOptions, build_rewrite, split_alternatives
from prompt.providers import LLMProviderError, OpenAICompatibleProvider
from prompt.rewrite import MAX_REWRITE_COUNT
from tests.prompt.chat_server import ChatServer, Fault


@pytest.mark.parametrize(
    "reply",
    [
        "a fox at dawn\na fox at dusk\na fox at night",
        "- a fox at dawn\n- a fox at dusk\n- a fox at night",
        "* a fox at dawn\n* a fox at dusk\n* a fox at night",
        "\u2022 a fox at dawn\n\u2022 a fox at dusk\n\u2022 a fox at night",
        "1. a fox at dawn\n2. a fox at dusk\n3. a fox at night",
        "1) a fox at dawn\n2) a fox at dusk\n3) a fox at night",
        "(1) a fox at dawn\n(2) a fox at dusk\n(3) a fox at night",
        '1. "a fox at dawn"\n2. "a fox at dusk"\n3. "a fox at night"',
        "\u201ca fox at dawn\u201d\n\u201ca fox at dusk\u201d\n\u201ca fox at night\u201d",
        "\n\na fox at dawn\n\n   \na fox at dusk\n\na fox at night\n\n",
        "Here are three alternatives:\n1. a fox at dawn\n2. a fox at dusk\n3. a fox at night",
        "<think>dawn, dusk, night</think>\n- a fox at dawn\n- a fox at dusk\n- a fox at night",
        "  10. a fox at dawn\n  11. a fox at dusk\n  12. a fox at night  ",
    ],
)
def test_split_strips_list_markers_quotes_blanks_and_headings(reply: str) -> None:
    assert split_alternatives(reply, limit=5) == ("a fox at dawn", "a fox at dusk", "a fox at night")


def test_split_keeps_at_most_limit() -> None:
    reply = "\n".join(f"{i}. prompt {i}" for i in range(1, 8))
    assert split_alternatives(reply, limit=3) == ("prompt 1", "prompt 2", "prompt 3")


def test_split_drops_repeats() -> None:
    assert split_alternatives("A fox\na fox\nA wolf", limit=5) == ("A fox", "A wolf")


def test_split_keeps_numbers_that_are_not_list_markers() -> None:
    assert split_alternatives("1.5 metre robot walking\n3 dogs on a beach", limit=5) == (
        "1.5 metre robot walking",
        "3 dogs on a beach",
    )


def test_split_of_nothing_is_empty() -> None:
    assert split_alternatives("\n  \n---\n", limit=3) == ()


@pytest.mark.parametrize("count", [0, -1, MAX_REWRITE_COUNT + 1])
def test_options_refuse_bad_counts(count: int) -> None:
    with pytest.raises(ValueError, match="count"):
        RewriteOptions(count=count)


@pytest.fixture
def enhancer(chat_server: ChatServer, http_client: httpx.AsyncClient) -> PromptEnhancer:
    providers = [
        OpenAICompatibleProvider(client=http_client, base_url=chat_server.base_url(route), name=route)
        for route in ("a", "b")
    ]
    return PromptEnhancer(providers=providers, model="test-model")


async def test_build_rewrite_returns_at_most_count_alternatives(
    chat_server: ChatServer, enhancer: PromptEnhancer
) -> None:
    chat_server.replies["a"] = "1. a fox at dawn\n2. a fox at dusk\n3. a fox at night\n4. a fox in the rain"
    result = await build_rewrite(enhancer, "a fox", options=RewriteOptions(count=3, temperature=0.9))
    assert result.seed_prompt == "a fox"
    assert result.alternatives == ("a fox at dawn", "a fox at dusk", "a fox at night")
    assert (result.provider, result.model, result.fallback_used) == ("a", "test-model", False)
    body = chat_server.received[0].body
    assert body["temperature"] == 0.9
    assert "Seed prompt: a fox" in body["messages"][1]["content"]
    assert "Write 3 alternative prompts" in body["messages"][1]["content"]


async def test_build_rewrite_reports_fallback(chat_server: ChatServer, enhancer: PromptEnhancer) -> None:
    chat_server.faults["a"] = Fault.HTTP_503
    chat_server.replies["b"] = "- one\n- two\n- three"
    result = await build_rewrite(enhancer, "a fox")
    assert (result.provider, result.fallback_used, result.alternatives) == ("b", True, ("one", "two", "three"))


@pytest.mark.parametrize("seed", ["", "   "])
async def test_build_rewrite_refuses_an_empty_seed(
    chat_server: ChatServer, enhancer: PromptEnhancer, seed: str
) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        await build_rewrite(enhancer, seed)
    assert chat_server.received == []


async def test_a_reply_without_alternatives_is_a_retryable_error(
    chat_server: ChatServer, enhancer: PromptEnhancer
) -> None:
    chat_server.replies["a"] = "Here you go:\n\n---"
    with pytest.raises(LLMProviderError, match="no alternatives") as info:
        await build_rewrite(enhancer, "a fox")
    assert info.value.retryable is True
