"""Provider specs from config and the factory that builds providers from them."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from prompt.providers import (
    CerebrasProvider,
    GroqProvider,
    LLMConfigError,
    LLMMessage,
    LLMRequest,
    OpenAICompatibleProvider,
    ProviderSpec,
    build_providers,
    open_providers,
)
from prompt.providers.presets import CEREBRAS_BASE_URL, GROQ_BASE_URL
from tests.prompt.chat_server import ChatServer


def test_build_providers_keeps_order_and_applies_presets(http_client: httpx.AsyncClient) -> None:
    providers = build_providers(
        [
            {"kind": "cerebras", "model": "gpt-oss-120b"},
            {"kind": "groq"},
            {"kind": "openai_compatible", "base_url": "http://127.0.0.1:8000/v1/", "name": "vllm"},
        ],
        http_client,
    )
    assert [p.name for p in providers] == ["cerebras", "groq", "vllm"]
    cerebras, groq, vllm = providers
    assert isinstance(cerebras, CerebrasProvider) and cerebras.url == f"{CEREBRAS_BASE_URL}/chat/completions"
    assert cerebras.model == "gpt-oss-120b"
    assert isinstance(groq, GroqProvider) and groq.url == f"{GROQ_BASE_URL}/chat/completions"
    assert isinstance(vllm, OpenAICompatibleProvider) and vllm.url == "http://127.0.0.1:8000/v1/chat/completions"


def test_specs_accept_dataclass_like_models_too(http_client: httpx.AsyncClient) -> None:
    spec = ProviderSpec(kind="groq", name="groq-backup", api_key_env="OTHER_GROQ_KEY")
    [provider] = build_providers([spec], http_client, environ={})
    assert provider.name == "groq-backup"
    assert isinstance(provider, GroqProvider)
    with pytest.raises(LLMConfigError, match="OTHER_GROQ_KEY"):
        provider.check_configured()


def test_generic_spec_needs_base_url() -> None:
    with pytest.raises(ValidationError, match="base_url"):
        ProviderSpec.model_validate({"kind": "openai_compatible"})


@pytest.mark.parametrize(
    "spec",
    [{"kind": "openai"}, {"kind": "groq", "api_key": "sk-in-config"}, {"kind": "groq", "model": ""}],
)
def test_bad_specs_are_refused(spec: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        ProviderSpec.model_validate(spec)


def test_duplicate_names_are_refused(http_client: httpx.AsyncClient) -> None:
    with pytest.raises(ValueError, match="duplicate provider names: groq"):
        build_providers([{"kind": "groq"}, {"kind": "groq"}], http_client)


async def test_open_providers_share_one_client_and_close_it(chat_server: ChatServer) -> None:
    specs = [
        {"kind": "openai_compatible", "base_url": chat_server.base_url("a"), "name": "a", "model": "m"},
        {"kind": "openai_compatible", "base_url": chat_server.base_url("b"), "name": "b", "model": "m"},
    ]
    request = LLMRequest(messages=(LLMMessage("user", "hi"),))
    async with open_providers(specs, environ={}, trust_env=False) as providers:
        for provider in providers:
            await provider.complete(request)
    assert chat_server.routes_called() == ["a", "b"]
    # One pooled keep-alive connection carried both providers' requests: they share the client.
    assert len({r.peer for r in chat_server.received}) == 1
    with pytest.raises(RuntimeError, match="closed"):
        await providers[0].complete(request)
