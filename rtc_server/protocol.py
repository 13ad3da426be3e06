"""The JSON control protocol: every message of protocol.md as a pydantic model.

Client messages are parsed as a union discriminated on ``type``; server messages
are serialised without null fields. Pure code: no I/O.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, StrictBool, TypeAdapter, ValidationError

__all__ = [
    "ClientMessage",
    "ErrorCode",
    "InvalidMessage",
    "ServerMessage",
    "parse_client_message",
    "parse_client_text",
    "serialize",
]

ErrorCode = Literal[
    "session_rejected",
    "invalid_message",
    "preset_mismatch",
    "gpu_unavailable",
    "worker_failed",
    "upstream_timeout",
    "internal_error",
    "rate_limited",  # (new) a client asked for more than its share; retry later
]
MAX_PROMPT_CHARS = 4000  # longer prompts are refused, as the enhancer would refuse them
PromptSource = Literal["curated", "enhanced", "user", "auto_extension"]
StreamCompleteReason = Literal["segment_cap", "stop_requested", "error"]


class _ClientModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InitialImage(BaseModel):
    """An image to condition the first segment; validated fully when the session starts."""

    model_config = ConfigDict(extra="ignore")

    mime: str
    name: str | None = None
    data: str


class ContinuationStateModel(BaseModel):
    """A ``{kind, payload}`` continuation state on the wire."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1)
    payload: dict[str, Any]


class SessionInitV2(_ClientModel):
    type: Literal["session_init_v2"] = "session_init_v2"
    model_config = ConfigDict(extra="allow")

    client_id: str | None = None
    preset: str | None = None
    preset_label: str | None = None
    curated_prompts: list[str] = Field(default_factory=list)
    initial_image: Any = None
    enhancement_enabled: StrictBool = False
    auto_extension_enabled: StrictBool = False
    loop_generation_enabled: StrictBool = False
    single_clip_mode: StrictBool = False
    stream_mode: Literal["av_fmp4", "legacy_jpeg", "webrtc"] = "av_fmp4"
    continuation_state: ContinuationStateModel | None = None
    # (new) What to do when continuation_state cannot be used: "error" ends the session with an
    # error; "fresh" reports the error and starts a new stream instead.
    continuation_fallback: Literal["error", "fresh"] = "error"


class SegmentPromptSource(_ClientModel):
    type: Literal["segment_prompt_source"] = "segment_prompt_source"

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, pattern=r"\S")
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    source: PromptSource = "user"
    seed: int | None = None
    num_inference_steps: int | None = Field(None, ge=1, le=1000)
    guidance_scale: float | None = Field(None, ge=0.0)


class SeedPromptsUpdated(_ClientModel):
    type: Literal["seed_prompts_updated"] = "seed_prompts_updated"

    seed_prompts: list[str] = Field(default_factory=list)


class EnhancementUpdated(_ClientModel):
    type: Literal["enhancement_updated"] = "enhancement_updated"

    enabled: StrictBool


class AutoExtensionUpdated(_ClientModel):
    type: Literal["auto_extension_updated"] = "auto_extension_updated"

    enabled: StrictBool


class LoopGenerationUpdated(_ClientModel):
    type: Literal["loop_generation_updated"] = "loop_generation_updated"

    enabled: StrictBool


class GenerationPausedUpdated(_ClientModel):
    type: Literal["generation_paused_updated"] = "generation_paused_updated"

    paused: StrictBool


class SnapshotState(_ClientModel):
    type: Literal["snapshot_state"] = "snapshot_state"


class RewriteSeedPrompts(_ClientModel):
    type: Literal["rewrite_seed_prompts"] = "rewrite_seed_prompts"

    seed_prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, pattern=r"\S")
    count: int = Field(3, ge=1, le=10)


ClientMessage: TypeAlias = Annotated[
    SessionInitV2
    | SegmentPromptSource
    | SeedPromptsUpdated
    | EnhancementUpdated
    | AutoExtensionUpdated
    | LoopGenerationUpdated
    | GenerationPausedUpdated
    | SnapshotState
    | RewriteSeedPrompts,
    Field(discriminator="type"),
]

_CLIENT_ADAPTER: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)
CLIENT_MESSAGE_TYPES: frozenset[str] = frozenset(
    model.model_fields["type"].default
    for model in (
        SessionInitV2,
        SegmentPromptSource,
        SeedPromptsUpdated,
        EnhancementUpdated,
        AutoExtensionUpdated,
        LoopGenerationUpdated,
        GenerationPausedUpdated,
        SnapshotState,
        RewriteSeedPrompts,
    )
)


class InvalidMessage(ValueError):
    """A client message that is not valid JSON, has an unknown type, or bad fields."""


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        # The first location element is the union tag; the field path follows it.
        loc = [str(p) for p in error["loc"][1:]] or [str(p) for p in error["loc"]]
        parts.append(f"{'.'.join(loc) or 'message'}: {error['msg']}")
    return "; ".join(parts)


def parse_client_message(raw: Any) -> ClientMessage:
    """Validate a decoded JSON value as a client message; raise InvalidMessage with a readable reason."""
    if not isinstance(raw, dict):
        raise InvalidMessage(f"a message must be a JSON object, got {type(raw).__name__}")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise InvalidMessage("a message needs a string field 'type'")
    if kind not in CLIENT_MESSAGE_TYPES:
        raise InvalidMessage(f"unknown message type {kind!r}")
    try:
        return _CLIENT_ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise InvalidMessage(f"invalid {kind}: {_describe(exc)}") from exc


def parse_client_text(text: str | bytes) -> ClientMessage:
    """Decode and validate one text frame."""
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidMessage(f"not valid JSON: {exc}") from exc
    return parse_client_message(raw)


class _ServerModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QueueStatus(_ServerModel):
    type: Literal["queue_status"] = "queue_status"
    position: int
    queue_depth: int


class GpuAssigned(_ServerModel):
    type: Literal["gpu_assigned"] = "gpu_assigned"
    gpu_id: int
    session_timeout: int


class StreamStart(_ServerModel):
    type: Literal["ltx2_stream_start"] = "ltx2_stream_start"
    preset: str | None = None
    width: int
    height: int
    fps: int
    num_frames: int


class SegmentStart(_ServerModel):
    type: Literal["ltx2_segment_start"] = "ltx2_segment_start"
    segment_idx: int
    prompt: str
    total_steps: int


class StepComplete(_ServerModel):
    type: Literal["step_complete"] = "step_complete"
    segment_idx: int
    step: int
    total_steps: int
    stage: str = "denoise"


class MediaInit(_ServerModel):
    type: Literal["media_init"] = "media_init"
    segment_idx: int
    mime: str
    stream_id: str
    mode: Literal["av_fmp4"] = "av_fmp4"


class MediaSegmentComplete(_ServerModel):
    type: Literal["media_segment_complete"] = "media_segment_complete"
    segment_idx: int
    stream_id: str
    chunks: int
    duration_ms: float | None = None
    pts_base_ms: float | None = None


class MediaSegmentSkipped(_ServerModel):
    """(new) A segment the server did not send because the client fell behind; media stays gap-free."""

    type: Literal["media_segment_skipped"] = "media_segment_skipped"
    segment_idx: int
    stream_id: str | None = None


class SegmentComplete(_ServerModel):
    type: Literal["ltx2_segment_complete"] = "ltx2_segment_complete"
    segment_idx: int
    generation_time_ms: float
    e2e_latency_ms: float | None = None


class StreamComplete(_ServerModel):
    type: Literal["ltx2_stream_complete"] = "ltx2_stream_complete"
    reason: StreamCompleteReason


class SessionTimeout(_ServerModel):
    type: Literal["session_timeout"] = "session_timeout"
    timeout_seconds: int


class ContinuationStateSnapshot(_ServerModel):
    type: Literal["continuation_state_snapshot"] = "continuation_state_snapshot"
    state: dict[str, Any]


class ErrorMessage(_ServerModel):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    retryable: bool = False


class PromptReceived(_ServerModel):
    type: Literal["prompt_received"] = "prompt_received"
    prompt: str
    prompt_used: str
    source: PromptSource
    enhanced: bool = False
    segment_idx: int | None = None


class PromptRejected(_ServerModel):
    type: Literal["prompt_rejected"] = "prompt_rejected"
    prompt: str
    reason: str
    label: str | None = None
    score: float | None = None


class RewriteSeedPromptsStarted(_ServerModel):
    type: Literal["rewrite_seed_prompts_started"] = "rewrite_seed_prompts_started"
    seed_prompt: str


class RewriteSeedPromptsComplete(_ServerModel):
    type: Literal["rewrite_seed_prompts_complete"] = "rewrite_seed_prompts_complete"
    seed_prompt: str
    alternatives: list[str]
    provider: str | None = None
    model: str | None = None
    latency_ms: float | None = None
    fallback_used: bool | None = None


ServerMessage: TypeAlias = (
    QueueStatus
    | GpuAssigned
    | StreamStart
    | SegmentStart
    | StepComplete
    | MediaInit
    | MediaSegmentComplete
    | MediaSegmentSkipped
    | SegmentComplete
    | StreamComplete
    | SessionTimeout
    | ContinuationStateSnapshot
    | ErrorMessage
    | PromptReceived
    | PromptRejected
    | RewriteSeedPromptsStarted
    | RewriteSeedPromptsComplete
)


def serialize(message: ServerMessage) -> str:
    """JSON text of a server message, leaving out null fields."""
    return message.model_dump_json(exclude_none=True)


def error_payload(code: ErrorCode, message: str, *, retryable: bool = False) -> dict[str, Any]:
    """The ``{error: {code, message, retryable}}`` body of an HTTP error response."""
    return {"error": {"code": code, "message": message, "retryable": retryable}}
