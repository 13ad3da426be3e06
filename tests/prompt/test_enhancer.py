"""The enhancer: priority-ordered fallback over real providers on loopback, deadlines, system prompts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from prompt import DEFAULT_SYSTEM_PROMPTS, PromptEnhancer
from prompt.providers import (
    AllProvidersFailedError,
    LLMProviderError,
    LLMRequest,
    LLMResponse,
    LLMTimeoutError,
    OpenAICompatibleProvider,
)
from tests.prompt.chat_server import ChatServer, Fault


def providers_for(chat: ChatServer, client: httpx.AsyncClient, *routes: str) -> list[OpenAICompatibleProvider]:
    return [OpenAICompatibleProvider(client=client, base_url=chat.base_url(r), name=r) for r in routes]


def enhancer_for(chat: ChatServer, client: httpx.AsyncClient, *routes: str, **kwargs: object) -> PromptEnhancer:
    return PromptEnhancer(providers=providers_for(chat, client, *routes), model="test-model", **kwargs)  # type: ignore[arg-type]


class StuckProvider:
    """A provider that never answers (not HTTP: only the enhancer's own deadline can stop it)."""

    name = "stuck"

    async def complete(self, request: LLMRequest) -> LLMResponse:
        await asyncio.sleep(60)
        raise AssertionError("unreachable")


# --- fallback -------------------------------------------------------------------------------------


async def test_first_provider_answers_without_fallback(chat_server: ChatServer, http_client: httpx.AsyncClient) -> None:
    response = await enhancer_for(chat_server, http_client, "a", "b").enhance("a fox")
    assert (response.provider, response.content, response.fallback_used) == ("a", "reply from a", False)
    assert chat_server.routes_called() == ["a"]


async def test_retryable_failures_fall_back_in_priority_order(
    chat_server: ChatServer, http_client: httpx.AsyncClient
) -> None:
    chat_server.faults.update(a=Fault.HTTP_500, b=Fault.HTTP_429, c=Fault.NON_JSON)
    response = await enhancer_for(chat_server, http_client, "a", "b", "c", "d").enhance("a fox")
    assert response.provider == "d"
    assert response.fallback_used is True
    assert chat_server.routes_called() == ["a", "b", "c", "d"]


async def test_timeout_falls_back(chat_server: ChatServer, http_client: httpx.AsyncClient) -> None:
    chat_server.faults["a"] = Fault.SLOW
    enhancer = enhancer_for(chat_server, http_client, "a", "b", timeout_ms=200)
    response = await enhancer.enhance("a fox")
    assert (response.provider, response.fallback_used) == ("b", True)


async def test_connection_refused_falls_back(
    chat_server: ChatServer, http_client: httpx.AsyncClient, closed_port_url: str
) -> None:
    dead = OpenAICompatibleProvider(client=http_client, base_url=closed_port_url, name="dead")
    enhancer = PromptEnhancer(providers=[dead, *providers_for(chat_server, http_client, "b")], model="m")
    response = await enhancer.enhance("a fox")
    assert (response.provider, response.fallback_used) == ("b", True)


async def test_non_retryable_error_stops_the_chain(chat_server: ChatServer, http_client: httpx.AsyncClient) -> None:
    chat_server.faults.update(a=Fault.HTTP_503, b=Fault.HTTP_401)
    with pytest.raises(LLMProviderError) as info:
        await enhancer_for(chat_server, http_client, "a", "b", "c").enhance("a fox")
    assert (info.value.provider, info.value.status, info.value.retryable) == ("b", 401, False)
    assert chat_server.routes_called() == ["a", "b"]


async def test_missing_key_stops_the_chain_naming_the_variable(
    chat_server: ChatServer, http_client: httpx.AsyncClient
) -> None:
    keyless = OpenAICompatibleProvider(
        client=http_client,
        base_url=chat_server.base_url("a"),
        name="a",
        api_key_env="A_KEY",
        require_api_key=True,
        environ={},
    )
    enhancer = PromptEnhancer(providers=[keyless, *providers_for(chat_server, http_client, "b")], model="m")
    with pytest.raises(LLMProviderError, match="A_KEY"):
        await enhancer.enhance("a fox")
    assert chat_server.received == []


async def test_all_failing_raises_with_every_error(chat_server: ChatServer, http_client: httpx.AsyncClient) -> None:
    chat_server.faults.update(a=Fault.HTTP_500, b=Fault.EMPTY_CHOICES)
    with pytest.raises(AllProvidersFailedError) as info:
        await enhancer_for(chat_server, http_client, "a", "b").enhance("a fox")
    assert info.value.retryable is True
    assert [e.provider for e in info.value.errors] == ["a", "b"]
    assert info.value.__cause__ is info.value.errors[-1]
    assert "a: a: HTTP 500" in str(info.value)


async def test_enhancer_deadline_covers_providers_that_ignore_it(
    chat_server: ChatServer, http_client: httpx.AsyncClient
) -> None:
    enhancer = PromptEnhancer(
        providers=[StuckProvider(), *providers_for(chat_server, http_client, "b")], model="m", timeout_ms=100
    )
    response = await enhancer.enhance("a fox")
    assert (response.provider, response.fallback_used) == ("b", True)


async def test_a_lone_stuck_provider_times_out() -> None:
    enhancer = PromptEnhancer(providers=[StuckProvider()], model="m", timeout_ms=100)
    with pytest.raises(AllProvidersFailedError) as info:
        await enhancer.enhance("a fox")
    assert isinstance(info.value.errors[0], LLMTimeoutError)


async def test_a_reply_empty_after_clean_up_falls_back(chat_server: ChatServer, http_client: httpx.AsyncClient) -> None:
    chat_server.replies["a"] = "<think>hmm</think>"
    response = await enhancer_for(chat_server, http_client, "a", "b").enhance("a fox")
    assert response.provider == "b"


# --- operations -----------------------------------------------------------------------------------


async def test_enhance_sends_system_prompt_and_cleans_the_reply(
    chat_server: ChatServer, http_client: httpx.AsyncClient
) -> None:
    chat_server.replies["a"] = '"A red fox leaps through fresh powder snow, golden hour."\n'
    enhancer = enhancer_for(chat_server, http_client, "a", temperature=0.3, max_tokens=100)
    response = await enhancer.enhance("a fox")
    assert response.content == "A red fox leaps through fresh powder snow, golden hour."
    body = chat_server.received[0].body
    assert body["messages"] == [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPTS["enhance"]},
        {"role": "user", "content": "a fox"},
    ]
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("test-model", 0.3, 100)


async def test_temperature_can_be_overridden_per_call(chat_server: ChatServer, http_client: httpx.AsyncClient) -> None:
    await enhancer_for(chat_server, http_client, "a").enhance("a fox", temperature=1.1)
    assert chat_server.received[0].body["temperature"] == 1.1


async def test_auto_extend_sends_prior_prompts(chat_server: ChatServer, http_client: httpx.AsyncClient) -> None:
    response = await enhancer_for(chat_server, http_client, "a").auto_extend(["a fox wakes", "the fox runs"])
    assert response.content == "reply from a"
    system, user = chat_server.received[0].body["messages"]
    assert system["content"] == DEFAULT_SYSTEM_PROMPTS["auto_extend"]
    assert "1. a fox wakes\n2. the fox runs" in user["content"]


async def test_rewrite_asks_for_count_and_room_for_them(
    chat_server: ChatServer, http_client: httpx.AsyncClient
) -> None:
    chat_server.replies["a"] = "one\ntwo"
    response = await enhancer_for(chat_server, http_client, "a", max_tokens=100).rewrite("a fox", count=5)
    assert response.content == "one\ntwo"  # raw: splitting is rewrite.py's job
    body = chat_server.received[0].body
    assert body["messages"][0]["content"] == DEFAULT_SYSTEM_PROMPTS["rewrite"]
    assert "Write 5 alternative prompts" in body["messages"][1]["content"]
    assert body["max_tokens"] > 100  # raised so five prompts fit


async def test_empty_prompt_is_refused_before_any_call(chat_server: ChatServer, http_client: httpx.AsyncClient) -> None:
    with pytest.raises(ValueError):
        await enhancer_for(chat_server, http_client, "a").enhance("  ")
    assert chat_server.received == []


def test_no_providers_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        PromptEnhancer(providers=[], model="m")


# --- register_provider ----------------------------------------------------------------------------


async def test_register_provider_at_priority_zero_becomes_primary(
    chat_server: ChatServer, http_client: httpx.AsyncClient
) -> None:
    enhancer = enhancer_for(chat_server, http_client, "a", "b")
    [first] = providers_for(chat_server, http_client, "first")
    enhancer.register_provider(first, priority=0)
    assert [p.name for p in enhancer.providers] == ["first", "a", "b"]
    response = await enhancer.enhance("a fox")
    assert (response.provider, response.fallback_used) == ("first", False)


async def test_register_provider_at_minus_one_becomes_last_fallback(
    chat_server: ChatServer, http_client: httpx.AsyncClient
) -> None:
    chat_server.faults.update(a=Fault.HTTP_503, b=Fault.HTTP_500)
    enhancer = enhancer_for(chat_server, http_client, "a", "b")
    [last] = providers_for(chat_server, http_client, "last")
    enhancer.register_provider(last, priority=-1)
    assert [p.name for p in enhancer.providers] == ["a", "b", "last"]
    response = await enhancer.enhance("a fox")
    assert (response.provider, response.fallback_used) == ("last", True)
    assert chat_server.routes_called() == ["a", "b", "last"]


def test_register_provider_defaults_to_appending(http_client: httpx.AsyncClient, chat_server: ChatServer) -> None:
    enhancer = enhancer_for(chat_server, http_client, "a")
    [b] = providers_for(chat_server, http_client, "b")
    enhancer.register_provider(b)
    assert [p.name for p in enhancer.providers] == ["a", "b"]


# --- system prompts -------------------------------------------------------------------------------


def make_enhancer(directory: Path | None) -> PromptEnhancer:
    return PromptEnhancer(providers=[StuckProvider()], model="m", system_prompt_dir=directory)


def test_defaults_without_a_directory() -> None:
    assert dict(make_enhancer(None).system_prompts) == dict(DEFAULT_SYSTEM_PROMPTS)


def test_defaults_for_a_missing_directory(tmp_path: Path) -> None:
    assert dict(make_enhancer(tmp_path / "absent").system_prompts) == dict(DEFAULT_SYSTEM_PROMPTS)


def test_override_files_replace_only_their_operation(tmp_path: Path) -> None:
    (tmp_path / "enhance.txt").write_text("  Make it cinematic.\n", encoding="utf-8")
    prompts = make_enhancer(tmp_path).system_prompts
    assert prompts["enhance"] == "Make it cinematic."
    assert prompts["auto_extend"] == DEFAULT_SYSTEM_PROMPTS["auto_extend"]
    assert prompts["rewrite"] == DEFAULT_SYSTEM_PROMPTS["rewrite"]


@pytest.mark.parametrize("content", [b"", b"  \n\t\n", b"\xff\xfe not utf-8"])
def test_empty_or_unreadable_file_falls_back_to_default(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "rewrite.txt").write_bytes(content)
    assert make_enhancer(tmp_path).system_prompts["rewrite"] == DEFAULT_SYSTEM_PROMPTS["rewrite"]


async def test_hot_reload_picks_up_edits(
    tmp_path: Path, chat_server: ChatServer, http_client: httpx.AsyncClient
) -> None:
    enhancer = enhancer_for(chat_server, http_client, "a", system_prompt_dir=tmp_path)
    (tmp_path / "enhance.txt").write_text("Version two.", encoding="utf-8")
    await enhancer.enhance("a fox")
    assert chat_server.received[-1].body["messages"][0]["content"] == DEFAULT_SYSTEM_PROMPTS["enhance"]

    await asyncio.to_thread(enhancer.reload_system_prompts)
    await enhancer.enhance("a fox")
    assert chat_server.received[-1].body["messages"][0]["content"] == "Version two."

    (tmp_path / "enhance.txt").write_text("", encoding="utf-8")
    enhancer.reload_system_prompts()
    assert enhancer.system_prompts["enhance"] == DEFAULT_SYSTEM_PROMPTS["enhance"]
