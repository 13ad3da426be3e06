"""The one inbound path: every hostile input is an InvalidMessage with a short reason, and quickly."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest

from rtc_server.config import LimitsConfig
from rtc_server.inbound import (
    MAX_JSON_DEPTH,
    MAX_JSON_STRUCTURE,
    MAX_STATE_COUNTER,
    loads_json,
    parse_inbound,
    validate_inbound,
    validate_session_init,
)
from rtc_server.protocol import (
    MAX_ERROR_CHARS,
    ClientMessage,
    InvalidMessage,
    SegmentPromptSource,
    SessionInitV2,
    parse_client_text,
)

LIMITS = LimitsConfig()
MAX_BYTES = 1024 * 1024
FAST_S = 0.5  # generous for a shared 2-core machine; the hostile inputs below parse in milliseconds


def refused(data: str | bytes, *, max_bytes: int = MAX_BYTES, limits: LimitsConfig = LIMITS) -> str:
    """The InvalidMessage text for ``data``, checked to be bounded and to come fast."""
    started = time.perf_counter()
    with pytest.raises(InvalidMessage) as info:
        parse_inbound(data, limits=limits, max_bytes=max_bytes)
    assert time.perf_counter() - started < FAST_S
    text = str(info.value)
    assert 0 < len(text) <= MAX_ERROR_CHARS
    return text


def accepted(data: str | bytes, *, limits: LimitsConfig = LIMITS) -> ClientMessage:
    return parse_inbound(data, limits=limits, max_bytes=MAX_BYTES)


def prompt_message(**fields: Any) -> str:
    return json.dumps({"type": "segment_prompt_source", "prompt": "a fox", **fields})


# The hostile classes of issue 13.


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        "[" * 100_000,
        '{"type": "snapshot_state", "x": ' + "[{" * 50_000 + "}]" * 50_000 + "}",
        "[1," * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1),
    ],
    ids=["arrays", "objects", "unclosed", "mixed-in-a-field", "with-commas"],
)
def test_json_nested_100_000_deep_is_refused_for_its_depth(text: str) -> None:
    assert refused(text) == f"JSON nested deeper than the limit of {MAX_JSON_DEPTH} levels"
    assert refused(text.encode()) == f"JSON nested deeper than the limit of {MAX_JSON_DEPTH} levels"


def test_nesting_at_the_depth_limit_is_accepted() -> None:
    nested: Any = 1
    for _ in range(MAX_JSON_DEPTH - 1):  # the message object itself is the first level
        nested = [nested]
    message = accepted(json.dumps({"type": "session_init_v2", "custom": nested}))
    assert isinstance(message, SessionInitV2)
    deeper = json.dumps({"type": "session_init_v2", "custom": [nested]})
    assert "nested deeper" in refused(deeper)


def test_brackets_and_quotes_inside_strings_do_not_count_as_nesting() -> None:
    prompt = '[{"\\' * 5_000 + ' a "quoted" fox \\'
    message = accepted(prompt_message(prompt=prompt[:1500]))
    assert isinstance(message, SegmentPromptSource)
    assert message.prompt == prompt[:1500]


def test_an_integer_with_5000_digits_is_refused_before_int() -> None:
    text = '{"type": "segment_prompt_source", "prompt": "x", "seed": ' + "9" * 5000 + "}"
    assert refused(text) == "integer of 5000 digits, more than the limit of 32"
    assert refused("-" + "1" * 5000) == "integer of 5000 digits, more than the limit of 32"


def test_an_unknown_type_padded_to_300_kb_is_quoted_short() -> None:
    text = refused(json.dumps({"type": "dance" + "x" * 300_000}))
    assert text == f"unknown message type {'dance' + 'x' * 35 + '...'!r}"


def test_invalid_utf8_bytes_are_refused() -> None:
    assert refused(b'{"type": "snapshot_state", "x": "\xff\xfe"}') == (
        "message is not valid UTF-8: invalid start byte at byte 33"
    )
    assert "not valid UTF-8" in refused(b'{"type": "snapshot_state", "x": "\xed\xa0\x80"}')  # an encoded surrogate


def test_a_str_with_lone_surrogates_is_refused() -> None:
    text = refused('{"type": "segment_prompt_source", "prompt": "a\ud800fox"}')
    assert text == "message is not valid Unicode: surrogates not allowed at character 46"


@pytest.mark.parametrize("escape", ["\\ud800", "\\uDFFF", "\\ud83dx", "\\ude00\\ud83d"])
def test_escaped_lone_surrogates_are_refused(escape: str) -> None:
    text = refused('{"type": "segment_prompt_source", "prompt": "a' + escape + '"}')
    assert text == "a string holds an unpaired surrogate escape (\\ud800-\\udfff)"
    assert "unpaired surrogate" in refused('{"type": "snapshot_state", "' + escape + '": 1}')


def test_an_escaped_surrogate_pair_is_a_character() -> None:
    message = accepted('{"type": "segment_prompt_source", "prompt": "fox \\ud83e\\udd8a"}')
    assert isinstance(message, SegmentPromptSource)
    assert message.prompt == "fox \U0001f98a"


@pytest.mark.parametrize(
    ("literal", "reason"),
    [
        ("NaN", "NaN is not allowed: numbers must be finite"),
        ("Infinity", "Infinity is not allowed: numbers must be finite"),
        ("-Infinity", "-Infinity is not allowed: numbers must be finite"),
        ("1e400", "number 1e400 is out of range"),
        ("-1.5e999", "number -1.5e999 is out of range"),
        ("0." + "1" * 100, "number of 102 characters, more than the limit of 64"),
    ],
)
def test_non_finite_numbers_are_refused(literal: str, reason: str) -> None:
    assert refused('{"type": "segment_prompt_source", "prompt": "x", "guidance_scale": ' + literal + "}") == reason
    assert refused('{"type": "snapshot_state", "anywhere": [' + literal + "]}") == reason


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"seed": "12"}, "seed: Input should be a valid integer"),
        ({"seed": 12.5}, "seed: Input should be a valid integer"),
        ({"seed": True}, "seed: Input should be a valid integer"),
        ({"seed": 2**70}, "seed: Input should be less than or equal to 4294967295"),
        ({"seed": 2**32}, "seed: Input should be less than or equal to 4294967295"),
        ({"num_inference_steps": "8"}, "num_inference_steps: Input should be a valid integer"),
        ({"guidance_scale": "3.5"}, "guidance_scale: Input should be a valid number"),
        ({"prompt": None}, "prompt: Input should be a valid string"),
        ({"source": "oracle"}, "source: Input should be"),
    ],
)
def test_wrong_types_are_refused_naming_the_field(fields: dict[str, Any], fragment: str) -> None:
    assert refused(prompt_message(**fields)).startswith(f"invalid segment_prompt_source: {fragment}")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
        ('{"a": [', "not valid JSON: Expecting value at line 1 column 8"),
        ('"just a string"', "a message must be a JSON object, got a string"),
        ("[1, 2]", "a message must be a JSON object, got an array"),
        ("null", "a message must be a JSON object, got null"),
        ('{"type": 5}', "a message needs a string field 'type'"),
        ("", "not valid JSON: Expecting value at line 1 column 1"),
        ("\ufeff{}", "not valid JSON: Unexpected UTF-8 BOM (decode using utf-8-sig) at line 1 column 1"),
    ],
)
def test_malformed_json_is_named(text: str, reason: str) -> None:
    assert refused(text) == reason


def test_oversize_messages_are_refused_before_decoding() -> None:
    assert refused(b"x" * 1001, max_bytes=1000) == "message of 1001 bytes exceeds the 1000 byte limit"
    assert refused("x" * 1001, max_bytes=1000) == "message of at least 1001 bytes exceeds the 1000 byte limit"
    # 400 characters of 3 bytes each: short as a str, 1200 bytes on the wire.
    assert refused("\u6f22" * 400, max_bytes=1000) == "message of 1200 bytes exceeds the 1000 byte limit"


def test_a_message_of_exactly_max_bytes_is_accepted() -> None:
    base = prompt_message(prompt="p")
    text = prompt_message(prompt="p" * (1000 - len(base) + 1))
    assert len(text.encode()) == 1000
    assert isinstance(parse_inbound(text, limits=LIMITS, max_bytes=1000), SegmentPromptSource)


def test_too_many_elements_are_refused_before_parsing() -> None:
    text = '{"type": "snapshot_state", "x": [' + "0," * MAX_JSON_STRUCTURE + "0]}"
    assert refused(text, max_bytes=10 * MAX_BYTES) == (
        f"message has {MAX_JSON_STRUCTURE + 5} brackets and commas, more than the limit of {MAX_JSON_STRUCTURE}"
    )


def test_non_text_input_is_refused() -> None:
    with pytest.raises(InvalidMessage, match="a message must be text, got int"):
        loads_json(42, max_bytes=10)  # type: ignore[arg-type]


def test_bytearray_and_memoryview_are_read_as_bytes() -> None:
    data = prompt_message().encode()
    assert isinstance(accepted(bytearray(data)), SegmentPromptSource)  # type: ignore[arg-type]
    assert isinstance(accepted(memoryview(data)), SegmentPromptSource)  # type: ignore[arg-type]


def test_legacy_parse_client_text_takes_the_hardened_path() -> None:
    with pytest.raises(InvalidMessage, match="nested deeper"):
        parse_client_text("[" * 100_000)
    with pytest.raises(InvalidMessage, match="5000 digits"):
        parse_client_text(b"1" * 5000)


# The configured limits.


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"num_inference_steps": 51}, "num_inference_steps 51 is over the limit of 50"),
        ({"guidance_scale": 20.5}, "guidance_scale 20.5 is outside the allowed range [0, 20]"),
        ({"prompt": "p" * 2001}, "prompt has 2001 characters, over the limit of 2000"),
        ({"negative_prompt": "n" * 2001}, "negative_prompt has 2001 characters, over the limit of 2000"),
    ],
)
def test_segment_prompt_values_beyond_the_limits_name_field_and_limit(fields: dict[str, Any], reason: str) -> None:
    assert refused(prompt_message(**fields)) == f"invalid segment_prompt_source: {reason}"


def test_segment_prompt_values_at_the_limits_are_accepted() -> None:
    message = accepted(
        prompt_message(prompt="p" * 2000, negative_prompt="n" * 2000, num_inference_steps=50, guidance_scale=20)
    )
    assert isinstance(message, SegmentPromptSource)
    assert (message.num_inference_steps, message.guidance_scale) == (50, 20.0)


def test_limits_come_from_the_config() -> None:
    tight = LimitsConfig(max_inference_steps=4, guidance_scale_range=(1.0, 2.0), max_prompt_chars=10)
    assert "num_inference_steps 5 is over the limit of 4" in refused(prompt_message(num_inference_steps=5), limits=tight)
    assert "outside the allowed range [1, 2]" in refused(prompt_message(guidance_scale=0.5), limits=tight)
    assert "prompt has 11 characters, over the limit of 10" in refused(prompt_message(prompt="p" * 11), limits=tight)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (
            {"type": "session_init_v2", "curated_prompts": ["a"] * 65},
            "invalid session_init_v2: curated_prompts has 65 prompts, over the limit of 64",
        ),
        (
            {"type": "session_init_v2", "curated_prompts": ["a", "b" * 2001]},
            "invalid session_init_v2: curated_prompts.1 has 2001 characters, over the limit of 2000",
        ),
        (
            {"type": "seed_prompts_updated", "seed_prompts": ["a"] * 65},
            "invalid seed_prompts_updated: seed_prompts has 65 prompts, over the limit of 64",
        ),
        (
            {"type": "seed_prompts_updated", "seed_prompts": ["c" * 2001]},
            "invalid seed_prompts_updated: seed_prompts.0 has 2001 characters, over the limit of 2000",
        ),
        (
            {"type": "rewrite_seed_prompts", "seed_prompt": "s" * 2001},
            "invalid rewrite_seed_prompts: seed_prompt has 2001 characters, over the limit of 2000",
        ),
    ],
)
def test_prompt_lists_and_rewrite_beyond_the_limits(raw: dict[str, Any], reason: str) -> None:
    assert refused(json.dumps(raw)) == reason


def _init_with_state(**payload: Any) -> str:
    state = {"kind": "synthetic.v1", "payload": {"segment_idx": 3, "frame_number": 72, **payload}}
    return json.dumps({"type": "session_init_v2", "continuation_state": state})


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"segment_idx": 2**31}, f"continuation_state.payload.segment_idx must be an int in 0..{MAX_STATE_COUNTER}"),
        ({"segment_idx": 2**70}, f"continuation_state.payload.segment_idx must be an int in 0..{MAX_STATE_COUNTER}"),
        ({"frame_number": -1}, f"continuation_state.payload.frame_number must be an int in 0..{MAX_STATE_COUNTER}"),
        ({"frame_number": "72"}, f"continuation_state.payload.frame_number must be an int in 0..{MAX_STATE_COUNTER}"),
        ({"segment_idx": True}, f"continuation_state.payload.segment_idx must be an int in 0..{MAX_STATE_COUNTER}"),
        ({"width": 4096}, "continuation_state.payload.width must be an int in 1..1280 (the server's frame limit)"),
        ({"height": 0}, "continuation_state.payload.height must be an int in 1..1280 (the server's frame limit)"),
    ],
)
def test_continuation_state_counters_and_sizes_are_bounded_at_the_door(payload: dict[str, Any], reason: str) -> None:
    assert refused(_init_with_state(**payload)) == f"invalid session_init_v2: {reason}"


def test_a_continuation_state_within_bounds_is_accepted() -> None:
    message = accepted(_init_with_state(segment_idx=MAX_STATE_COUNTER, width=1280, height=720))
    assert isinstance(message, SessionInitV2)
    assert message.continuation_state is not None


def test_messages_without_limited_fields_pass_validate_inbound() -> None:
    for raw in (
        {"type": "snapshot_state"},
        {"type": "enhancement_updated", "enabled": True},
        {"type": "generation_paused_updated", "paused": False},
    ):
        assert validate_inbound(raw, limits=LIMITS).type == raw["type"]


# The session_init of an offer body.


def test_session_init_in_an_offer_may_leave_out_its_type() -> None:
    message = validate_session_init({"curated_prompts": ["a"]}, limits=LIMITS)
    assert isinstance(message, SessionInitV2)
    assert message.curated_prompts == ["a"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ([], "session_init must be a JSON object"),
        ({"type": "snapshot_state"}, "session_init must be a session_init_v2 message, got snapshot_state"),
        ({"curated_prompts": ["a"] * 65}, "invalid session_init_v2: curated_prompts has 65 prompts"),
        ({"stream_mode": "smoke"}, "invalid session_init_v2: stream_mode"),
    ],
)
def test_a_bad_session_init_in_an_offer_is_refused(raw: Any, reason: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        validate_session_init(raw, limits=LIMITS)
    assert str(info.value).startswith(reason)


# Random mutations of valid messages: only InvalidMessage or a valid message comes out, fast.

VALID_MESSAGES: list[dict[str, Any]] = [
    {"type": "session_init_v2", "client_id": "c1", "curated_prompts": ["a fox", "a cat"], "single_clip_mode": False},
    {
        "type": "session_init_v2",
        "continuation_state": {
            "kind": "synthetic.v1",
            "payload": {"segment_idx": 2, "frame_number": 48, "shapes": [[0.5, 0.5, 0.01, -0.01]] * 3},
        },
    },
    {"type": "segment_prompt_source", "prompt": "neon city at night", "seed": 7, "num_inference_steps": 4},
    {"type": "segment_prompt_source", "prompt": "fox \U0001f98a", "guidance_scale": 3.5, "negative_prompt": "blur"},
    {"type": "seed_prompts_updated", "seed_prompts": ["one", "two", "three"]},
    {"type": "enhancement_updated", "enabled": True},
    {"type": "generation_paused_updated", "paused": False},
    {"type": "rewrite_seed_prompts", "seed_prompt": "a river", "count": 3},
    {"type": "snapshot_state"},
]
HOSTILE_VALUES: list[Any] = [
    None, True, -1, 0, 2**31, 2**70, 12.0, -0.0, "12", "", " ", "x" * 3000, [], {}, [[[]]], {"a": {"b": {}}},
    "\U0001f98a", ["a"] * 70,
]  # fmt: skip
HOSTILE_TEXT = [
    "[" * 40, "]" * 3, "{", "}", '"', "\\", "\\u", "\\ud800", "\\ud83d\\ude00", "NaN", "Infinity", "-", "1e999",
    "9" * 40, ",", ":", "null", "\x00", "\u2028", "'", "\ufeff",
]  # fmt: skip


def _mutate_value(rng: random.Random, message: dict[str, Any]) -> str:
    mutated = dict(message)
    key = rng.choice([*mutated, "type", "extra"])
    if rng.random() < 0.2:
        mutated.pop(key, None)
    else:
        mutated[key] = rng.choice(HOSTILE_VALUES)
    return json.dumps(mutated)


def _mutate_text(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(text) + 1)
        action = rng.random()
        if action < 0.35:
            text = text[:at] + rng.choice(HOSTILE_TEXT) + text[at:]
        elif action < 0.55:
            text = text[:at] + text[at + rng.randint(1, 8) :]
        elif action < 0.7:
            text = text[:at] + chr(rng.choice([rng.randrange(32, 127), rng.randrange(0xD800, 0xE000)])) + text[at:]
        elif action < 0.85:
            span = text[at : at + rng.randint(1, 20)]
            text = text[:at] + span * rng.randint(2, 50) + text[at:]
        else:
            text = text[:at]
    return text


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if buffer:
            buffer[rng.randrange(len(buffer))] = rng.randrange(256)
    return bytes(buffer)


def test_thousands_of_random_mutations_give_invalid_message_or_a_valid_message() -> None:
    rng = random.Random(13)
    outcomes = {"accepted": 0, "refused": 0}
    slowest = 0.0
    for _ in range(4000):
        text = json.dumps(rng.choice(VALID_MESSAGES))
        kind = rng.random()
        data: str | bytes
        if kind < 0.3:
            data = _mutate_value(rng, rng.choice(VALID_MESSAGES))
        elif kind < 0.8:
            data = _mutate_text(rng, text)
        else:
            data = _mutate_bytes(rng, text.encode())
        started = time.perf_counter()
        try:
            message = parse_inbound(data, limits=LIMITS, max_bytes=64 * 1024)
        except InvalidMessage as exc:
            assert 0 < len(str(exc)) <= MAX_ERROR_CHARS
            outcomes["refused"] += 1
        else:
            message.model_dump_json()  # whatever is accepted can be encoded again: no surrogates, no NaN
            outcomes["accepted"] += 1
        slowest = max(slowest, time.perf_counter() - started)
    assert outcomes["refused"] > 1000 and outcomes["accepted"] > 100, outcomes
    assert slowest < FAST_S
