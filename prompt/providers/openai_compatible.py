"""An LLM provider for any OpenAI-compatible ``/chat/completions`` endpoint, on a shared httpx client.

Cerebras, Groq, vLLM and Ollama all speak this format. The client is injected and owned by the
caller (the server opens one per process and closes it at shutdown), so connections are reused
across calls and providers. httpx errors are translated here into :class:`LLMProviderError`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import httpx

from prompt.providers.base import (
    LLMConfigError,
    LLMProviderError,
    LLMRequest,
    LLMResponse,
    LLMTimeoutError,
)

__all__ = [
    "OpenAICompatibleProvider",
    "build_payload",
    "is_retryable_status",
    "parse_completion",
]

logger = logging.getLogger(__name__)

_ERROR_DETAIL_CHARS = 200  # how much of an error body goes into the exception message


def is_retryable_status(status: int) -> bool:
    """True for statuses another provider (or a later try) may get past: 408, 429 and 5xx."""
    return status in (408, 429) or status >= 500


def build_payload(request: LLMRequest, model: str) -> dict[str, Any]:
    """The JSON body of a chat-completions call for ``request`` on ``model``."""
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "temperature": request.temperature,
        "stream": False,
    }
    if request.max_tokens is not None:
        payload["max_tokens"] = request.max_tokens
    return payload


def parse_completion(body: Any) -> tuple[str, str | None]:
    """``(content, model)`` of the first choice of a chat-completions reply.

    Raises ValueError naming what is missing; the provider turns it into a retryable error
    (a malformed or empty reply is a server-side fault another provider may not have).
    """
    if not isinstance(body, dict):
        # ValueError, like every other malformed-reply case, so the caller has one type to catch.
        raise ValueError(f"reply is a JSON {type(body).__name__}, not an object")  # noqa: TRY004
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ValueError("reply has no choices")
    first = choices[0]
    message = first.get("message") if isinstance(first, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str) or not content.strip():
        raise ValueError("first choice has no message content")
    model = body.get("model")
    return content.strip(), model if isinstance(model, str) else None


def _error_detail(response: httpx.Response) -> str:
    """The error message of an OpenAI-style error body, else the start of the raw body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:_ERROR_DETAIL_CHARS]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:_ERROR_DETAIL_CHARS]
        if isinstance(error, str):
            return error[:_ERROR_DETAIL_CHARS]
    return response.text[:_ERROR_DETAIL_CHARS]


class OpenAICompatibleProvider:
    """Calls ``POST {base_url}/chat/completions`` with a bearer key.

    The key is ``api_key`` if given, else read from the environment variable ``api_key_env`` at
    each call (so a key set after start-up is picked up). With ``require_api_key`` a missing key is
    a non-retryable :class:`LLMConfigError` naming the variable; without it (a local vLLM or
    Ollama server) the call goes out with no Authorization header. ``model`` overrides the
    request's model.
    """

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        base_url: str,
        name: str = "openai_compatible",
        model: str | None = None,
        api_key: str | None = None,
        api_key_env: str | None = None,
        require_api_key: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if not base_url:
            raise ValueError(f"provider {name!r}: base_url must be non-empty")
        self._client = client
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._name = name
        self._model = model
        self._api_key = api_key
        self._api_key_env = api_key_env
        self._require_api_key = require_api_key
        self._environ = environ if environ is not None else os.environ

    @property
    def name(self) -> str:
        return self._name

    @property
    def url(self) -> str:
        """The chat-completions URL this provider posts to."""
        return self._url

    @property
    def model(self) -> str | None:
        return self._model

    def check_configured(self) -> None:
        """Raise :class:`LLMConfigError` now if a call would fail for want of a key.

        Lets the server warn at start-up rather than at the first prompt.
        """
        self._resolve_api_key()

    def _resolve_api_key(self) -> str | None:
        if self._api_key:
            return self._api_key
        if self._api_key_env:
            key = self._environ.get(self._api_key_env, "").strip()
            if key:
                return key
        if self._require_api_key:
            where = self._api_key_env or "api_key"
            raise LLMConfigError(
                f"{self._name}: API key missing: set the environment variable {where}", provider=self._name
            )
        return None

    def _headers(self) -> dict[str, str]:
        key = self._resolve_api_key()
        headers = {"Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Send ``request``; raise :class:`LLMProviderError` with the right ``retryable`` on failure."""
        model = self._model or request.model
        if not model:
            raise LLMConfigError(
                f"{self._name}: no model configured for the provider or the request", provider=self._name
            )
        headers = self._headers()
        payload = build_payload(request, model)
        timeout: Any = request.timeout_s if request.timeout_s is not None else httpx.USE_CLIENT_DEFAULT
        started = time.perf_counter()
        try:
            response = await self._client.post(self._url, json=payload, headers=headers, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise LLMTimeoutError(
                f"{self._name}: request timed out ({type(exc).__name__})", provider=self._name
            ) from exc
        except httpx.HTTPError as exc:
            # Connection refused, reset, DNS, protocol errors: the next provider may well work.
            raise LLMProviderError(
                f"{self._name}: transport error: {type(exc).__name__}: {exc}", retryable=True, provider=self._name
            ) from exc
        latency_ms = (time.perf_counter() - started) * 1000.0
        return self._read_response(response, model, latency_ms)

    def _read_response(self, response: httpx.Response, model: str, latency_ms: float) -> LLMResponse:
        status = response.status_code
        if not response.is_success:
            retryable = is_retryable_status(status)
            raise LLMProviderError(
                f"{self._name}: HTTP {status}: {_error_detail(response)}",
                retryable=retryable,
                provider=self._name,
                status=status,
            )
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LLMProviderError(
                f"{self._name}: reply is not JSON: {response.text[:_ERROR_DETAIL_CHARS]!r}",
                retryable=True,
                provider=self._name,
                status=status,
            ) from exc
        try:
            content, reply_model = parse_completion(body)
        except ValueError as exc:
            raise LLMProviderError(f"{self._name}: {exc}", retryable=True, provider=self._name, status=status) from exc
        logger.debug("%s: completion in %.0f ms", self._name, latency_ms)
        return LLMResponse(content=content, provider=self._name, model=reply_model or model, latency_ms=latency_ms)
