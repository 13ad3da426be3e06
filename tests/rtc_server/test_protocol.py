import json
from typing import Any

import pytest

from rtc_server.protocol import (
    MAX_ERROR_CHARS,
    MAX_SEED,
    ErrorMessage,
    InvalidMessage,
    PromptReceived,
    SegmentPromptSource,
    SessionInitV2,
    StreamStart,
    parse_client_message,
    parse_client_text,
    preview,
    serialize,
)


def test_session_init_defaults_and_extra_fields_are_kept() -> None:
    message = parse_client_message({"type": "session_init_v2", "custom": 1})
    assert isinstance(message, SessionInitV2)
    assert message.curated_prompts == []
    assert message.stream_mode == "av_fmp4"
    assert message.model_extra == {"custom": 1}


def test_segment_prompt_source_defaults_to_user() -> None:
    message = parse_client_text('{"type": "segment_prompt_source", "prompt": "a fox"}')
    assert isinstance(message, SegmentPromptSource)
    assert message.source == "user"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"prompt": "x"}', "'type'"),
        ('{"type": "dance"}', "unknown message type 'dance'"),
        ('{"type": "segment_prompt_source"}', "prompt"),
        ('{"type": "segment_prompt_source", "prompt": ""}', "prompt"),
        ('{"type": "generation_paused_updated", "paused": "yes"}', "paused"),
        ('{"type": "enhancement_updated"}', "enabled"),
        ('{"type": "session_init_v2", "stream_mode": "smoke"}', "stream_mode"),
        ('{"type": "session_init_v2", "continuation_state": {"kind": "x"}}', "payload"),
    ],
)
def test_bad_client_messages_raise_invalid_message_with_reason(text: str, fragment: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        parse_client_text(text)
    assert fragment in str(info.value)


def test_server_messages_leave_out_nulls() -> None:
    text = serialize(StreamStart(width=512, height=512, fps=24, num_frames=24))
    assert json.loads(text) == {"type": "ltx2_stream_start", "width": 512, "height": 512, "fps": 24, "num_frames": 24}
    ack = json.loads(serialize(PromptReceived(prompt="a", prompt_used="a", source="user")))
    assert "segment_idx" not in ack


def test_error_message_shape() -> None:
    payload = json.loads(serialize(ErrorMessage(code="invalid_message", message="bad", retryable=False)))
    assert payload == {"type": "error", "code": "invalid_message", "message": "bad", "retryable": False}


# Strict types where the protocol's types are clear.


def _prompt(**fields: Any) -> dict[str, Any]:
    return {"type": "segment_prompt_source", "prompt": "a fox", **fields}


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"seed": "12"}, "seed: Input should be a valid integer"),
        ({"seed": 12.0}, "seed: Input should be a valid integer"),
        ({"seed": True}, "seed: Input should be a valid integer"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({"seed": 2**70}, "seed: Input should be less than or equal to 4294967295"),
        ({"num_inference_steps": "4"}, "num_inference_steps: Input should be a valid integer"),
        ({"num_inference_steps": 4.0}, "num_inference_steps: Input should be a valid integer"),
        ({"num_inference_steps": 1001}, "num_inference_steps: Input should be less than or equal to 1000"),
        ({"guidance_scale": "3"}, "guidance_scale: Input should be a valid number"),
        ({"guidance_scale": False}, "guidance_scale: Input should be a valid number"),
        ({"guidance_scale": float("nan")}, "guidance_scale: Input should be a finite number"),
        ({"guidance_scale": float("inf")}, "guidance_scale: Input should be a finite number"),
        ({"guidance_scale": -0.5}, "guidance_scale: Input should be greater than or equal to 0"),
        ({"prompt": 7}, "prompt: Input should be a valid string"),
        ({"negative_prompt": ["a"]}, "negative_prompt: Input should be a valid string"),
    ],
)
def test_sampling_fields_are_strict(fields: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        parse_client_message(_prompt(**fields))
    assert str(info.value) == f"invalid segment_prompt_source: {fragment}"


def test_seed_range_ends_are_accepted_and_ints_are_fine_for_guidance() -> None:
    for seed in (0, MAX_SEED):
        message = parse_client_message(_prompt(seed=seed, guidance_scale=7))
        assert isinstance(message, SegmentPromptSource)
        assert (message.seed, message.guidance_scale) == (seed, 7.0)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"type": "rewrite_seed_prompts", "seed_prompt": "x", "count": "3"}, "count: Input should be a valid integer"),
        ({"type": "rewrite_seed_prompts", "seed_prompt": "x", "count": 11}, "count: Input should be less than"),
        ({"type": "seed_prompts_updated", "seed_prompts": ["a", 2]}, "seed_prompts.1: Input should be a valid string"),
        ({"type": "seed_prompts_updated", "seed_prompts": "abc"}, "seed_prompts: Input should be a valid list"),
        ({"type": "session_init_v2", "curated_prompts": ["x"] * 257}, "curated_prompts: List should have at most 256"),
        ({"type": "session_init_v2", "single_clip_mode": 1}, "single_clip_mode: Input should be a valid boolean"),
        ({"type": "session_init_v2", "preset": "p" * 257}, "preset: String should have at most 256 characters"),
        ({"type": "session_init_v2", "continuation_state": {"kind": "k" * 65, "payload": {}}}, "continuation_state.kind"),
        ({"type": "enhancement_updated", "enabled": "true"}, "enabled: Input should be a valid boolean"),
    ],
)
def test_other_client_fields_are_strict_and_capped(raw: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        parse_client_message(raw)
    assert fragment in str(info.value)


def test_errors_quote_client_text_short() -> None:
    with pytest.raises(InvalidMessage) as unknown:
        parse_client_message({"type": "x" * 300_000})
    assert str(unknown.value) == f"unknown message type {'x' * 40 + '...'!r}"
    huge_key = {"kind": "k", "payload": {}, "z" * 300_000: 1}
    with pytest.raises(InvalidMessage) as extra:
        parse_client_message({"type": "session_init_v2", "continuation_state": huge_key})
    assert len(str(extra.value)) <= MAX_ERROR_CHARS
    assert "continuation_state.zzzz" in str(extra.value)


def test_invalid_message_text_is_bounded_whatever_it_is_given() -> None:
    assert len(str(InvalidMessage("y" * 10_000))) == MAX_ERROR_CHARS
    assert str(InvalidMessage("short")) == "short"
    assert preview("abc", 2) == "ab..." and preview("abc") == "abc"
