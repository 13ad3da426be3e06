"""Malformed control messages for fuzzing the transports: the classes of issue 13 and random ones.

Every message the corpus yields is refused by the inbound path under the default limits (checked
as it is built), so each one must be answered with ``error{invalid_message}``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

from rtc_server.config import LimitsConfig
from rtc_server.inbound import parse_inbound
from rtc_server.protocol import InvalidMessage

MAX_BYTES = 48 * 1024 * 1024

VALID = (
    {"type": "segment_prompt_source", "prompt": "a red fox running through fresh snow", "seed": 3},
    {"type": "seed_prompts_updated", "seed_prompts": ["a lighthouse", "a paper boat"]},
    {"type": "generation_paused_updated", "paused": False},
    {"type": "enhancement_updated", "enabled": False},
    {"type": "rewrite_seed_prompts", "seed_prompt": "a fox", "count": 3},
)


@dataclass(frozen=True)
class Hostile:
    """One malformed message: text, or bytes meant to arrive as text that is not UTF-8."""

    payload: str | bytes
    kind: str


def _fixed() -> list[Hostile]:
    """The ones attackers reached for first: each ended a session or a request before."""
    return [
        Hostile("[" * 100_000 + "]" * 100_000, "nested_100k"),
        Hostile('{"type": "segment_prompt_source", "prompt": "x", "seed": ' + "9" * 5000 + "}", "int_5000_digits"),
        Hostile(json.dumps({"type": "warp_drive" + "x" * 300_000}), "unknown_type_300kb"),
        Hostile(b'{"type": "snapshot_state", "x": "\xff\xfe"}', "invalid_utf8"),
        Hostile('{"type": "segment_prompt_source", "prompt": "x", "guidance_scale": NaN}', "nan"),
        Hostile('{"type": "segment_prompt_source", "prompt": "x", "guidance_scale": Infinity}', "infinity"),
        Hostile('{"type": "segment_prompt_source", "prompt": "x", "seed": "12"}', "seed_string"),
        Hostile(json.dumps({"type": "segment_prompt_source", "prompt": "x", "seed": 2**70}), "seed_2_70"),
        Hostile(json.dumps({"type": "segment_prompt_source", "prompt": "x", "num_inference_steps": 1000}), "steps"),
        Hostile(json.dumps({"type": "segment_prompt_source", "prompt": "x" * 100_000}), "prompt_long"),
        Hostile(json.dumps({"type": "seed_prompts_updated", "seed_prompts": ["a"] * 10_000}), "many_prompts"),
        Hostile('{"type": "segment_prompt_source", "prompt": "\\ud800"}', "lone_surrogate"),
    ]


def _mutate(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        position = rng.randrange(len(chars) + 1)
        operation = rng.random()
        if operation < 0.4 and chars:
            del chars[min(position, len(chars) - 1)]
        elif operation < 0.8:
            chars.insert(position, rng.choice('{}[]",:\\ 0aZ-eE.'))
        elif chars:
            chars[min(position, len(chars) - 1)] = chr(rng.randrange(32, 0x2FF))
    return "".join(chars)


def _random(rng: random.Random) -> str:
    base = json.dumps(rng.choice(VALID))
    choice = rng.random()
    if choice < 0.5:
        return _mutate(rng, base)
    if choice < 0.65:
        return base[: rng.randrange(1, len(base))]  # cut short
    if choice < 0.8:
        value = json.loads(base)
        key = rng.choice(list(value))
        value[key] = rng.choice([None, [], {}, -1, 1.5, True, "", "x" * 5, [1, 2]])
        return json.dumps(value)
    if choice < 0.9:
        return json.dumps(rng.choice([[], 1, "s", None, {"no_type": 1}, {"type": 7}]))
    return "".join(chr(rng.randrange(1, 0x7FF)) for _ in range(rng.randint(1, 60)))


def corpus(count: int, *, seed: int = 13, limits: LimitsConfig | None = None) -> Iterator[Hostile]:
    """``count`` malformed messages: the fixed hostile ones first, then random ones, all refused."""
    limits = limits or LimitsConfig()
    rng = random.Random(seed)
    fixed = _fixed()
    made = 0
    while made < count:
        item = fixed[made] if made < len(fixed) else Hostile(_random(rng), "random")
        try:
            parse_inbound(item.payload, limits=limits, max_bytes=MAX_BYTES)
        except InvalidMessage:
            made += 1
            yield item
        else:
            if made < len(fixed):
                raise AssertionError(f"the hostile message {item.kind} was accepted")
