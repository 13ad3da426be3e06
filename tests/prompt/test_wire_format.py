"""Pure parts of the OpenAI-compatible adapter: status mapping, request body, reply parsing."""

from __future__ import annotations

from typing import Any

import pytest

from prompt.providers import LLMMessage, LLMRequest, is_retryable_status
from prompt.providers.openai_compatible import build_payload, parse_completion


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 529])
def test_server_side_and_rate_limit_statuses_are_retryable(status: int) -> None:
    assert is_retryable_status(status)


@pytest.mark.parametrize("status", [301, 400, 401, 403, 404, 413, 422])
def test_client_errors_and_redirects_are_not_retryable(status: int) -> None:
    assert not is_retryable_status(status)


def test_payload_carries_model_messages_and_sampling() -> None:
    request = LLMRequest(messages=(LLMMessage("system", "s"), LLMMessage("user", "u")), temperature=0.5, max_tokens=99)
    assert build_payload(request, "m") == {
        "model": "m",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        "temperature": 0.5,
        "max_tokens": 99,
        "stream": False,
    }


def test_payload_leaves_out_max_tokens_when_unbounded() -> None:
    request = LLMRequest(messages=(LLMMessage("user", "u"),), max_tokens=None)
    assert "max_tokens" not in build_payload(request, "m")


def test_parse_takes_the_first_choice_and_the_model() -> None:
    body = {
        "model": "served-model",
        "choices": [{"message": {"content": " first "}}, {"message": {"content": "second"}}],
    }
    assert parse_completion(body) == ("first", "served-model")


def test_parse_tolerates_a_missing_model() -> None:
    assert parse_completion({"choices": [{"message": {"content": "x"}}]}) == ("x", None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "not an object"),
        ({}, "no choices"),
        ({"choices": []}, "no choices"),
        ({"choices": "nope"}, "no choices"),
        ({"choices": [{}]}, "no message content"),
        ({"choices": [{"message": {"content": None}}]}, "no message content"),
        ({"choices": [{"message": {"content": "   "}}]}, "no message content"),
    ],
)
def test_parse_rejects_malformed_replies(body: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_completion(body)
