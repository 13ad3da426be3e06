"""The OpenAI-compatible provider against a real chat-completions server on loopback."""

from __future__ import annotations

import httpx
import pytest

from prompt.providers import (
    LLMConfigError,
    LLMMessage,
    LLMProviderError,
    LLMRequest,
    LLMTimeoutError,
    OpenAICompatibleProvider,
)
from prompt.providers.presets import CerebrasProvider, GroqProvider
from tests.prompt.chat_server import ChatServer, Fault

REQUEST = LLMRequest(
    messages=(LLMMessage("system", "be brief"), LLMMessage("user", "a fox in snow")),
    model="test-model",
    temperature=0.2,
    max_tokens=64,
)


def provider_for(
    chat: ChatServer, client: httpx.AsyncClient, route: str = "a", **kwargs: object
) -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider(client=client, base_url=chat.base_url(route), name=route, **kwargs)  # type: ignore[arg-type]


async def test_completion_returns_content_provider_and_model(
    chat_server: ChatServer, http_client: httpx.AsyncClient
) -> None:
    chat_server.replies["a"] = "  a fox bounding through deep snow  "
    response = await provider_for(chat_server, http_client).complete(REQUEST)
    assert response.content == "a fox bounding through deep snow"
    assert response.provider == "a"
    assert response.model == "test-model"
    assert response.latency_ms > 0
    assert response.fallback_used is False


async def test_server_receives_path_bearer_model_and_messages(
    chat_server: ChatServer, http_client: httpx.AsyncClient
) -> None:
    await provider_for(chat_server, http_client, api_key="sk-test-123").complete(REQUEST)
    [seen] = chat_server.received
    assert seen.path == "/a/v1/chat/completions"
    assert seen.headers["Authorization"] == "Bearer sk-test-123"
    assert seen.body == {
        "model": "test-model",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a fox in snow"}],
        "temperature": 0.2,
        "max_tokens": 64,
        "stream": False,
    }


async def test_provider_model_overrides_request_model(chat_server: ChatServer, http_client: httpx.AsyncClient) -> None:
    response = await provider_for(chat_server, http_client, model="llama-local").complete(REQUEST)
    assert chat_server.received[0].body["model"] == "llama-local"
    assert response.model == "llama-local"


async def test_generic_provider_without_key_sends_no_authorization(
    chat_server: ChatServer, http_client: httpx.AsyncClient
) -> None:
    await provider_for(chat_server, http_client, api_key_env="LOCAL_KEY", environ={}).complete(REQUEST)
    assert "Authorization" not in chat_server.received[0].headers


async def test_generic_provider_reads_key_from_named_variable(
    chat_server: ChatServer, http_client: httpx.AsyncClient
) -> None:
    provider = provider_for(chat_server, http_client, api_key_env="LOCAL_KEY", environ={"LOCAL_KEY": "k-env"})
    await provider.complete(REQUEST)
    assert chat_server.received[0].headers["Authorization"] == "Bearer k-env"


@pytest.mark.parametrize(
    ("fault", "retryable", "status"),
    [
        (Fault.HTTP_500, True, 500),
        (Fault.HTTP_503, True, 503),
        (Fault.HTTP_429, True, 429),
        (Fault.HTTP_401, False, 401),
        (Fault.HTTP_400, False, 400),
        (Fault.NON_JSON, True, 200),
        (Fault.EMPTY_CHOICES, True, 200),
        (Fault.NO_CONTENT, True, 200),
    ],
)
async def test_faults_map_to_retryable_flag(
    chat_server: ChatServer, http_client: httpx.AsyncClient, fault: Fault, retryable: bool, status: int
) -> None:
    chat_server.faults["a"] = fault
    with pytest.raises(LLMProviderError) as info:
        await provider_for(chat_server, http_client).complete(REQUEST)
    assert info.value.retryable is retryable
    assert info.value.status == status
    assert info.value.provider == "a"
    assert "a:" in str(info.value)


async def test_http_error_message_carries_the_servers_error_text(
    chat_server: ChatServer, http_client: httpx.AsyncClient
) -> None:
    chat_server.faults["a"] = Fault.HTTP_401
    with pytest.raises(LLMProviderError, match="HTTP 401: simulated 401"):
        await provider_for(chat_server, http_client).complete(REQUEST)


async def test_slow_reply_past_the_timeout_is_a_retryable_timeout(
    chat_server: ChatServer, http_client: httpx.AsyncClient
) -> None:
    chat_server.faults["a"] = Fault.SLOW
    request = LLMRequest(messages=REQUEST.messages, model="m", timeout_s=0.2)
    with pytest.raises(LLMTimeoutError) as info:
        await provider_for(chat_server, http_client).complete(request)
    assert info.value.retryable is True
    assert isinstance(info.value.__cause__, httpx.TimeoutException)


async def test_connection_refused_is_retryable(closed_port_url: str, http_client: httpx.AsyncClient) -> None:
    provider = OpenAICompatibleProvider(client=http_client, base_url=closed_port_url, name="gone")
    with pytest.raises(LLMProviderError) as info:
        await provider.complete(REQUEST)
    assert info.value.retryable is True
    assert not isinstance(info.value, LLMTimeoutError)
    assert isinstance(info.value.__cause__, httpx.ConnectError)


@pytest.mark.parametrize(("cls", "variable"), [(CerebrasProvider, "CEREBRAS_API_KEY"), (GroqProvider, "GROQ_API_KEY")])
async def test_preset_without_key_is_non_retryable_and_names_the_variable(
    chat_server: ChatServer, http_client: httpx.AsyncClient, cls: type[OpenAICompatibleProvider], variable: str
) -> None:
    provider = cls(client=http_client, base_url=chat_server.base_url("a"), environ={})
    with pytest.raises(LLMConfigError, match=variable) as info:
        await provider.complete(REQUEST)
    assert info.value.retryable is False
    assert chat_server.received == []
    with pytest.raises(LLMConfigError, match=variable):
        provider.check_configured()


@pytest.mark.parametrize(("cls", "variable"), [(CerebrasProvider, "CEREBRAS_API_KEY"), (GroqProvider, "GROQ_API_KEY")])
async def test_preset_sends_key_from_its_variable(
    chat_server: ChatServer, http_client: httpx.AsyncClient, cls: type[OpenAICompatibleProvider], variable: str
) -> None:
    provider = cls(client=http_client, base_url=chat_server.base_url("a"), environ={variable: "sk-preset"})
    await provider.complete(REQUEST)
    assert chat_server.received[0].headers["Authorization"] == "Bearer sk-preset"


async def test_no_model_anywhere_is_a_config_error(chat_server: ChatServer, http_client: httpx.AsyncClient) -> None:
    request = LLMRequest(messages=REQUEST.messages)
    with pytest.raises(LLMConfigError, match="no model"):
        await provider_for(chat_server, http_client).complete(request)
    assert chat_server.received == []


async def test_connections_are_reused_across_calls(chat_server: ChatServer, http_client: httpx.AsyncClient) -> None:
    provider = provider_for(chat_server, http_client)
    for _ in range(3):
        await provider.complete(REQUEST)
    peers = {r.peer for r in chat_server.received}
    assert len(peers) == 1 and None not in peers
