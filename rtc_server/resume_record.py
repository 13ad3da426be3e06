"""A session's resumable record: what another server needs to continue its stream. Pure code, no I/O.

The record holds the session id, a hash of its resume token (never the token: whoever can read the
store must not be able to resume someone's session), the index of the next segment, the generation
policy's state (curated prompts and cursor, last prompt, history, a pending user prompt, the toggles)
and the init options that outlive a connection (preset, client id). The continuation state itself is
not in it: the session store keeps it under the same session id, which a resumed session keeps.

Tokens are 32 random bytes from ``secrets`` in URL-safe base64 (43 characters); the record keeps
their SHA-256 (a token is random, so a fast hash is enough) and checks a presented token in
constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

from rtc_server.generation_policy import PolicyPosition, PolicyState
from rtc_server.prompt_schedule import PromptChoice, PromptOrigin

__all__ = [
    "RECORD_VERSION",
    "RESUME_TOKEN_BYTES",
    "CorruptRecordError",
    "ResumeRecord",
    "hash_resume_token",
    "new_resume_token",
    "token_matches",
]

RECORD_VERSION = 1  # bumped when the layout changes; a server refuses records of a version it does not know
RESUME_TOKEN_BYTES = 32  # 256 bits: unguessable, and the SHA-256 of it reveals nothing usable


class CorruptRecordError(ValueError):
    """A stored record that cannot be read (another version, or damaged)."""


def new_resume_token() -> str:
    """A fresh resume token: 32 random bytes, URL-safe base64 without padding."""
    return secrets.token_urlsafe(RESUME_TOKEN_BYTES)


def hash_resume_token(token: str) -> str:
    """What a record keeps of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(token: str, token_hash: str) -> bool:
    """Whether ``token`` is the one ``token_hash`` was made from, compared in constant time."""
    return hmac.compare_digest(hash_resume_token(token).encode("ascii"), token_hash.encode("ascii", "replace"))


@dataclass(frozen=True, kw_only=True)
class ResumeRecord:
    """One session's resumable record (see the module docstring)."""

    session_id: str
    token_hash: str
    next_segment_idx: int
    policy: PolicyState
    preset: str | None = None
    preset_label: str | None = None
    client_id: str | None = None
    written_at: float = 0.0  # wall-clock seconds, for operators

    def to_json(self) -> bytes:
        """The record as stored (the token hash travels beside it, see ``ResumeRecords``)."""
        body = {
            "v": RECORD_VERSION,
            "session_id": self.session_id,
            "next_segment_idx": self.next_segment_idx,
            "policy": _policy_to_json(self.policy),
            "preset": self.preset,
            "preset_label": self.preset_label,
            "client_id": self.client_id,
            "written_at": self.written_at,
        }
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, *, token_hash: str) -> ResumeRecord:
        """Read a stored record; CorruptRecordError when it is not one this server can continue."""
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict) or raw.get("v") != RECORD_VERSION:
                raise CorruptRecordError(f"resume record version {raw.get('v') if isinstance(raw, dict) else None!r}")
            return cls(
                session_id=_str(raw["session_id"]),
                token_hash=token_hash,
                next_segment_idx=_count(raw["next_segment_idx"]),
                policy=_policy_from_json(raw["policy"]),
                preset=_opt_str(raw.get("preset")),
                preset_label=_opt_str(raw.get("preset_label")),
                client_id=_opt_str(raw.get("client_id")),
                written_at=float(raw.get("written_at", 0.0)),
            )
        except CorruptRecordError:
            raise
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise CorruptRecordError(f"resume record unreadable: {exc}") from exc


# --- (de)serialisation of the policy state ----------------------------------------------------


def _choice_to_json(choice: PromptChoice | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    return {
        "text": choice.text,
        "origin": choice.origin.value,
        "negative_prompt": choice.negative_prompt,
        "seed": choice.seed,
        "num_inference_steps": choice.num_inference_steps,
        "guidance_scale": choice.guidance_scale,
        "checked": choice.checked,
    }


def _choice_from_json(raw: Any) -> PromptChoice | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise TypeError("a prompt choice must be an object")
    steps, seed, guidance = raw.get("num_inference_steps"), raw.get("seed"), raw.get("guidance_scale")
    return PromptChoice(
        text=_str(raw["text"]),
        origin=PromptOrigin(raw["origin"]),
        negative_prompt=_opt_str(raw.get("negative_prompt")),
        seed=None if seed is None else _count(seed),
        num_inference_steps=None if steps is None else _count(steps),
        guidance_scale=None if guidance is None else float(guidance),
        checked=_bool(raw.get("checked", False)),
    )


def _policy_to_json(state: PolicyState) -> dict[str, Any]:
    position = state.position
    return {
        "curated": list(state.curated),
        "cursor": position.cursor,
        "last": _choice_to_json(position.last),
        "recent": list(position.recent),
        "segments_done": position.segments_done,
        "awaiting_user": position.awaiting_user,
        "pending": _choice_to_json(state.pending),
        "queued": [_choice_to_json(choice) for choice in state.queued],  # per_prompt: every prompt still to make
        "loop": state.loop,
        "auto_extension": state.auto_extension,
        "enhancement": state.enhancement,
        "single_clip": state.single_clip,
        "paused": state.paused,
    }


def _policy_from_json(raw: Any) -> PolicyState:
    if not isinstance(raw, dict):
        raise TypeError("the policy state must be an object")
    position = PolicyPosition(
        cursor=_count(raw["cursor"]),
        last=_choice_from_json(raw.get("last")),
        recent=tuple(_str(text) for text in raw.get("recent", [])),
        segments_done=_count(raw["segments_done"]),
        awaiting_user=_bool(raw.get("awaiting_user", False)),
    )
    return PolicyState(
        position=position,
        curated=tuple(_str(text) for text in raw.get("curated", [])),
        pending=_choice_from_json(raw.get("pending")),
        queued=tuple(choice for choice in map(_choice_from_json, _list(raw.get("queued", []))) if choice is not None),
        loop=_bool(raw["loop"]),
        auto_extension=_bool(raw["auto_extension"]),
        enhancement=_bool(raw["enhancement"]),
        single_clip=_bool(raw["single_clip"]),
        paused=_bool(raw["paused"]),
    )


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean, got {type(value).__name__}")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a non-negative int, got {value!r}")
    return value
