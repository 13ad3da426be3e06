"""The one door every inbound control message and JSON body comes through.

Data channel messages, WebSocket text frames, the offer body and the ``session_init`` inside it all
take the same steps: size check, strict UTF-8 decode, a JSON parse hardened against hostile input,
validation against the protocol's models, then the configured ``limits``. Any failure is an
``InvalidMessage`` with a short message naming the problem (and the field and the limit where there is
one); nothing else escapes, and no step costs more than a few linear passes over the input.

Hardening, and why each bound is needed:

- nesting depth is measured before parsing, on a skeleton of the text (strings removed, only
  brackets and commas kept), with C-speed bytes operations: ``json`` recurses once per level, so a
  100 000-deep array would raise RecursionError mid-parse;
- the number of brackets and commas outside strings is capped: each one can become a Python object,
  and a 48 MiB message of ``[],`` would otherwise cost about 700 MB;
- integer literals longer than MAX_JSON_INT_DIGITS are refused before ``int()`` (5 000 digits raise
  ValueError under ``sys.set_int_max_str_digits``, and converting long ones is quadratic);
- NaN, Infinity and literals that overflow to infinity (``1e400``) are refused;
- lone surrogates are refused, raw (in a ``str``) or escaped (``"\\ud800"``): they cannot be encoded
  back to UTF-8 for logs, LLM calls or echoes.

Pure code: no I/O, no asyncio. Parsing a message near ``max_bytes`` (tens of MiB: an inline initial
image) takes a few hundred milliseconds; callers on an event loop parse messages over
INLINE_PARSE_MAX_BYTES in a thread.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from gpu.generator import MAX_STATE_COUNTER
from rtc_server.config import LimitsConfig
from rtc_server.protocol import (
    ClientMessage,
    InvalidMessage,
    RewriteSeedPrompts,
    SeedPromptsUpdated,
    SegmentPromptSource,
    SessionInitV2,
    parse_client_message,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "INLINE_PARSE_MAX_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_JSON_INT_DIGITS",
    "MAX_JSON_STRUCTURE",
    "MAX_STATE_COUNTER",
    "loads_json",
    "parse_inbound",
    "validate_inbound",
    "validate_session_init",
]

DEFAULT_MAX_MESSAGE_BYTES = 48 * 1024 * 1024  # bytes; server.max_message_bytes' default: a 32 MiB image in base64
# Messages above this take over a millisecond to parse (tens of MiB, an inline initial image, take a few
# hundred): callers on an event loop parse them in a thread.
INLINE_PARSE_MAX_BYTES = 256 * 1024
# Our deepest message (session_init_v2 > continuation_state > payload > shapes > slot) has 5 levels.
MAX_JSON_DEPTH = 32
# Brackets and commas outside strings. A legitimate message has a few hundred (64 shape slots of a
# synthetic state are about 400); 100 000 caps the Python objects one message can become at a few MB.
MAX_JSON_STRUCTURE = 100_000
# Digits of an integer literal: 2**64 has 20; 32 lets an over-range seed (2**70) reach the field check,
# which names the field and its range.
MAX_JSON_INT_DIGITS = 32
MAX_JSON_FLOAT_CHARS = 64  # a double needs at most 24 characters in its shortest form
# segment_idx / frame_number of a continuation state: a stream would need years of video to reach 2**31.
_STATE_COUNTERS = ("segment_idx", "frame_number")

# Every byte but the structural ones, deleted to make the skeleton; UTF-8 continuation bytes are all
# >= 0x80, so no multi-byte character can hide a bracket or a quote.
_NOT_STRUCTURAL = bytes(b for b in range(256) if b not in b'"[]{},')
# A string of the skeleton, ending at its closing quote or, unterminated, at the end: it always
# matches, so the scan is linear (possessive: no backtracking).
_SKELETON_STRING = re.compile(rb'"[^"]*+(?:"|\Z)')
_TOO_DEEP_RUN = re.compile(rb"[\[{]{%d}" % (MAX_JSON_DEPTH + 1))
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def loads_json(data: str | bytes, *, max_bytes: int) -> Any:
    """Parse one JSON document of at most ``max_bytes`` UTF-8 bytes, hardened as the module says.

    Raises InvalidMessage, and nothing else, for every input that is not one.
    """
    raw, text = _decode(data, max_bytes)
    _check_structure(raw)
    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except InvalidMessage:
        raise
    except json.JSONDecodeError as exc:
        raise InvalidMessage(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except (ValueError, RecursionError) as exc:  # the skeleton check should leave neither possible
        raise InvalidMessage(f"not valid JSON: {type(exc).__name__}") from exc
    if _SURROGATE_ESCAPE.search(raw) is not None:
        _check_strings_encode(value)
    return value


def parse_inbound(data: str | bytes, *, limits: LimitsConfig, max_bytes: int) -> ClientMessage:
    """Size check, decode, parse and validate one control message; InvalidMessage on any fault."""
    return validate_inbound(loads_json(data, max_bytes=max_bytes), limits=limits)


def validate_inbound(raw: Any, *, limits: LimitsConfig) -> ClientMessage:
    """Validate an already-decoded value as a client message, then against ``limits``.

    ``raw`` should come from ``loads_json`` (or be as bounded): validation walks it.
    """
    message = parse_client_message(raw)
    problem = _limit_problem(message, limits)
    if problem is not None:
        raise InvalidMessage(f"invalid {message.type}: {problem}")
    return message


def validate_session_init(raw: Any, *, limits: LimitsConfig) -> SessionInitV2:
    """The ``session_init`` of an offer body: a session_init_v2 whose ``type`` may be left out."""
    if not isinstance(raw, dict):
        raise InvalidMessage("session_init must be a JSON object")
    message = validate_inbound({**raw, "type": raw.get("type", "session_init_v2")}, limits=limits)
    if not isinstance(message, SessionInitV2):
        raise InvalidMessage(f"session_init must be a session_init_v2 message, got {message.type}")
    return message


# Decoding.


def _decode(data: str | bytes, max_bytes: int) -> tuple[bytes, str]:
    """The message as UTF-8 bytes and as text, or InvalidMessage when too large or not UTF-8."""
    if isinstance(data, str):
        # Characters never outnumber UTF-8 bytes: a long str is refused before it is encoded.
        if len(data) > max_bytes:
            raise _too_large(len(data), max_bytes, at_least=True)
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidMessage(f"message is not valid Unicode: {exc.reason} at character {exc.start}") from exc
        if len(raw) > max_bytes:
            raise _too_large(len(raw), max_bytes)
        return raw, data
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidMessage(f"a message must be text, got {type(data).__name__}")
    raw = bytes(data)
    if len(raw) > max_bytes:
        raise _too_large(len(raw), max_bytes)
    try:
        return raw, raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"message is not valid UTF-8: {exc.reason} at byte {exc.start}") from exc


def _too_large(size: int, max_bytes: int, *, at_least: bool = False) -> InvalidMessage:
    qualifier = "at least " if at_least else ""
    return InvalidMessage(f"message of {qualifier}{size} bytes exceeds the {max_bytes} byte limit")


# The skeleton: nesting depth and size bounded before json sees the text.


def _check_structure(raw: bytes) -> None:
    """InvalidMessage when ``raw`` nests deeper than MAX_JSON_DEPTH or has too many elements.

    Exact for valid JSON; for invalid JSON it bounds how deep ``json`` can get before its error.
    """
    skeleton = _skeleton(raw)
    brackets = skeleton.replace(b",", b"")
    if _TOO_DEEP_RUN.search(brackets) is not None:
        raise _too_deep()
    if len(skeleton) > MAX_JSON_STRUCTURE:
        raise InvalidMessage(
            f"message has {len(skeleton)} brackets and commas, more than the limit of {MAX_JSON_STRUCTURE}"
        )
    if _depth_bound(brackets) > MAX_JSON_DEPTH:
        raise _too_deep()


def _too_deep() -> InvalidMessage:
    return InvalidMessage(f"JSON nested deeper than the limit of {MAX_JSON_DEPTH} levels")


def _skeleton(raw: bytes) -> bytes:
    """The brackets and commas of ``raw`` that lie outside JSON strings, in order."""
    if b"\\" in raw:
        # Escapes pair left to right as json reads them: first the escaped backslashes, then the
        # escaped quotes; any backslash left escapes a character that is dropped below anyway.
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    return _SKELETON_STRING.sub(b"", raw.translate(None, _NOT_STRUCTURAL))


def _depth_bound(brackets: bytes) -> int:
    """An upper bound on the nesting depth of a bracket sequence; exact when it is balanced.

    Each pass removes every innermost pair, so a chain of k nested pairs needs k passes; an opening
    bracket no pass removes adds one level at most. Stops after MAX_JSON_DEPTH + 1 passes.
    """
    for passes in range(MAX_JSON_DEPTH + 1):
        reduced = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if reduced == brackets:
            return passes + brackets.count(b"[") + brackets.count(b"{")
        brackets = reduced
    return MAX_JSON_DEPTH + 1


# Literal hooks for json.loads.


def _parse_int(literal: str) -> int:
    digits = len(literal) - literal.startswith("-")
    if digits > MAX_JSON_INT_DIGITS:
        raise InvalidMessage(f"integer of {digits} digits, more than the limit of {MAX_JSON_INT_DIGITS}")
    return int(literal)


def _parse_float(literal: str) -> float:
    if len(literal) > MAX_JSON_FLOAT_CHARS:
        raise InvalidMessage(f"number of {len(literal)} characters, more than the limit of {MAX_JSON_FLOAT_CHARS}")
    value = float(literal)
    if not math.isfinite(value):
        raise InvalidMessage(f"number {literal} is out of range")
    return value


def _parse_constant(literal: str) -> float:
    raise InvalidMessage(f"{literal} is not allowed: numbers must be finite")


def _check_strings_encode(value: Any) -> None:
    """InvalidMessage when a string or key of ``value`` holds a lone surrogate (an unpaired ``\\udXXX``)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            texts: list[str] = [item]
        elif isinstance(item, dict):
            texts = list(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
            continue
        else:
            continue
        for text in texts:
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise InvalidMessage("a string holds an unpaired surrogate escape (\\ud800-\\udfff)") from exc


# The configured limits.


def _limit_problem(message: ClientMessage, limits: LimitsConfig) -> str | None:
    if isinstance(message, SegmentPromptSource):
        return _segment_prompt_problem(message, limits)
    if isinstance(message, SessionInitV2):
        return _prompt_list_problem("curated_prompts", message.curated_prompts, limits) or _state_problem(
            message, limits
        )
    if isinstance(message, SeedPromptsUpdated):
        return _prompt_list_problem("seed_prompts", message.seed_prompts, limits)
    if isinstance(message, RewriteSeedPrompts):
        return _text_problem("seed_prompt", message.seed_prompt, limits)
    return None


def _segment_prompt_problem(message: SegmentPromptSource, limits: LimitsConfig) -> str | None:
    problem = _text_problem("prompt", message.prompt, limits)
    if problem is None and message.negative_prompt is not None:
        problem = _text_problem("negative_prompt", message.negative_prompt, limits)
    if problem is not None:
        return problem
    steps = message.num_inference_steps
    if steps is not None and steps > limits.max_inference_steps:
        return f"num_inference_steps {steps} is over the limit of {limits.max_inference_steps}"
    low, high = limits.guidance_scale_range
    guidance = message.guidance_scale
    if guidance is not None and not low <= guidance <= high:
        return f"guidance_scale {guidance:g} is outside the allowed range [{low:g}, {high:g}]"
    return None


def _text_problem(field: str, text: str, limits: LimitsConfig) -> str | None:
    if len(text) > limits.max_prompt_chars:
        return f"{field} has {len(text)} characters, over the limit of {limits.max_prompt_chars}"
    return None


def _prompt_list_problem(field: str, prompts: list[str], limits: LimitsConfig) -> str | None:
    if len(prompts) > limits.max_curated_prompts:
        return f"{field} has {len(prompts)} prompts, over the limit of {limits.max_curated_prompts}"
    for index, prompt in enumerate(prompts):
        problem = _text_problem(f"{field}.{index}", prompt, limits)
        if problem is not None:
            return problem
    return None


def _state_problem(message: SessionInitV2, limits: LimitsConfig) -> str | None:
    """Bounds on the fields every generator's continuation state shares; the generator checks the rest."""
    state = message.continuation_state
    if state is None:
        return None
    payload = state.payload
    for key in _STATE_COUNTERS:
        value = payload.get(key)
        if value is not None and not _is_int_in(value, 0, MAX_STATE_COUNTER):
            return f"continuation_state.payload.{key} must be an int in 0..{MAX_STATE_COUNTER}"
    for key, limit in (("width", limits.max_width), ("height", limits.max_height)):
        value = payload.get(key)
        if value is not None and not _is_int_in(value, 1, limit):
            return f"continuation_state.payload.{key} must be an int in 1..{limit} (the server's frame limit)"
    return None


def _is_int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
