"""The JSON control protocol: every message of protocol.md as a pydantic model.

Client messages are parsed as a union discriminated on ``type``; server messages
are serialised without null fields. Pure code: no I/O.

The client models hold the checks that need no configuration: strict types where the
protocol's types are clear (no ``"12"`` for an int, no ``1`` for a bool, no NaN), and
absolute caps that no config may raise. The configured ``limits`` and the hardened
decoding of raw text live in ``rtc_server.inbound``, the one path every inbound message takes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

__all__ = [
    "MAX_CURATED_PROMPTS",
    "MAX_ERROR_CHARS",
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "ClientMessage",
    "ErrorCode",
    "InvalidMessage",
    "ServerMessage",
    "parse_client_message",
    "parse_client_text",
    "preview",
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
    "unauthorized",  # (new) missing or invalid credentials, or a web origin not allowed
    "ice_ports_exhausted",  # (new) no free UDP port in webrtc.udp_port_range for another WebRTC peer
]
MAX_PROMPT_CHARS = 4000  # longer prompts are refused, as the enhancer would refuse them
# Seeds are 0..2**32-1: every RNG a backend seeds (numpy, torch, a hash) takes them exactly, and a
# JavaScript client can hold them without rounding (2**53); negative seeds mean nothing anywhere.
MAX_SEED = 2**32 - 1
MAX_CURATED_PROMPTS = 256  # hard cap on a curated/seed prompt list; limits.max_curated_prompts is below it
MAX_LABEL_CHARS = 256  # client_id, preset, preset_label: identifiers, echoed in logs and ltx2_stream_start
MAX_STATE_KIND_CHARS = 64  # "synthetic.v1", "ltx.v1": a generator family and version
MAX_REWRITE_COUNT = 10  # alternatives one rewrite_seed_prompts may ask for
MAX_STEPS = 1000  # hard cap on num_inference_steps; limits.max_inference_steps is below it
MAX_ERROR_CHARS = 200  # an error message a client is sent
MAX_QUOTE_CHARS = 40  # what an error message quotes of the client's own input
PromptSource = Literal["curated", "enhanced", "user", "auto_extension"]
StreamCompleteReason = Literal["segment_cap", "stop_requested", "error"]

Prompt = Annotated[StrictStr, Field(min_length=1, max_length=MAX_PROMPT_CHARS, pattern=r"\S")]
PromptList = Annotated[
    list[Annotated[StrictStr, Field(max_length=MAX_PROMPT_CHARS)]], Field(max_length=MAX_CURATED_PROMPTS)
]
Label = Annotated[StrictStr, Field(max_length=MAX_LABEL_CHARS)]
Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]
# Strict: a JSON number, never "7" or true; ints are fine (7 is 7.0).
GuidanceScale = Annotated[float, Strict(), Field(ge=0.0, allow_inf_nan=False)]


def preview(text: str, limit: int = MAX_QUOTE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, marked with ``...`` when cut: how errors quote client input."""
    return text if len(text) <= limit else text[:limit] + "..."


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

    kind: StrictStr = Field(min_length=1, max_length=MAX_STATE_KIND_CHARS)
    payload: dict[str, Any]


SessionId = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
# A resume token is 43 URL-safe characters (32 random bytes); the bounds only keep junk out.
ResumeToken = Annotated[StrictStr, Field(min_length=16, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]


class ResumeSession(BaseModel):
    """(new) ``session_init_v2.resume_session``: continue that session from its stored state."""

    model_config = ConfigDict(extra="forbid")

    session_id: SessionId
    resume_token: ResumeToken


class SessionInitV2(_ClientModel):
    type: Literal["session_init_v2"] = "session_init_v2"
    model_config = ConfigDict(extra="allow")

    client_id: Label | None = None
    preset: Label | None = None
    preset_label: Label | None = None
    curated_prompts: PromptList = Field(default_factory=list)
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
    # (new) Continue a session whose server went away, from its stored state (protocol.md, Additions).
    resume_session: ResumeSession | None = None
    # (new) "per_prompt": one segment per segment_prompt_source, as the original system; "continuous":
    # segments follow one another. None: the server's streaming.generation_mode.
    generation_mode: Literal["continuous", "per_prompt"] | None = None

    @model_validator(mode="after")
    def _one_start_point(self) -> SessionInitV2:
        if self.resume_session is not None and self.continuation_state is not None:
            raise ValueError("resume_session and continuation_state cannot be sent together")
        return self


class SegmentPromptSource(_ClientModel):
    type: Literal["segment_prompt_source"] = "segment_prompt_source"

    prompt: Prompt
    negative_prompt: Annotated[StrictStr, Field(max_length=MAX_PROMPT_CHARS)] | None = None
    source: PromptSource = "user"
    seed: Seed | None = None
    num_inference_steps: Annotated[StrictInt, Field(ge=1, le=MAX_STEPS)] | None = None
    guidance_scale: GuidanceScale | None = None


class SeedPromptsUpdated(_ClientModel):
    type: Literal["seed_prompts_updated"] = "seed_prompts_updated"

    seed_prompts: PromptList = Field(default_factory=list)


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

    seed_prompt: Prompt
    count: Annotated[StrictInt, Field(ge=1, le=MAX_REWRITE_COUNT)] = 3


class RecordingUpdated(_ClientModel):
    """(new) Start (a new file) or stop recording this session; needs ``streaming.recording_dir``."""

    type: Literal["recording_updated"] = "recording_updated"

    enabled: StrictBool


ClientMessage: TypeAlias = Annotated[
    SessionInitV2
    | SegmentPromptSource
    | SeedPromptsUpdated
    | EnhancementUpdated
    | AutoExtensionUpdated
    | LoopGenerationUpdated
    | GenerationPausedUpdated
    | SnapshotState
    | RewriteSeedPrompts
    | RecordingUpdated,
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
        RecordingUpdated,
    )
)


class InvalidMessage(ValueError):
    """A client message that is not valid JSON, has an unknown type, or bad fields.

    The message is what the client is told: at most MAX_ERROR_CHARS characters, whatever it is given.
    """

    def __init__(self, message: str) -> None:
        super().__init__(preview(message, MAX_ERROR_CHARS - 3))


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:3]:
        # The first location element is the union tag; the field path follows it. Keys of extra
        # fields are the client's own text, so each is quoted short.
        loc = [preview(str(p), 24) for p in error["loc"][1:]] or [preview(str(p), 24) for p in error["loc"]]
        parts.append(f"{'.'.join(loc) or 'message'}: {preview(error['msg'], 80)}")
    return "; ".join(parts)


def parse_client_message(raw: Any) -> ClientMessage:
    """Validate a decoded JSON value as a client message; raise InvalidMessage with a readable reason.

    Checks types and the absolute caps only; ``rtc_server.inbound.validate_inbound`` adds the
    configured limits.
    """
    if not isinstance(raw, dict):
        raise InvalidMessage(f"a message must be a JSON object, got {_json_type(raw)}")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise InvalidMessage("a message needs a string field 'type'")
    if kind not in CLIENT_MESSAGE_TYPES:
        raise InvalidMessage(f"unknown message type {preview(kind)!r}")
    try:
        return _CLIENT_ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise InvalidMessage(f"invalid {kind}: {_describe(exc)}") from exc


def parse_client_text(text: str | bytes) -> ClientMessage:
    """Decode and validate one text frame (hardened JSON, absolute caps, no configured limits).

    Prefer ``rtc_server.inbound.parse_inbound``, which also applies the size limit and the config's limits.
    """
    # inbound builds on this module, so it is imported where it is used.
    from rtc_server.inbound import DEFAULT_MAX_MESSAGE_BYTES, loads_json

    return parse_client_message(loads_json(text, max_bytes=DEFAULT_MAX_MESSAGE_BYTES))


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if value is None:
        return "null"
    return type(value).__name__


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


class SessionInfo(_ServerModel):
    """(new) Sent once, right after ``gpu_assigned``: how to resume this session on any replica, and
    (``watch_token``, when viewers are enabled) how to let viewers watch it. Both are secrets of this
    client's; a resumed session gets new ones (the old resume token is spent, old watch links end)."""

    type: Literal["session_info"] = "session_info"
    session_id: str
    resume_token: str
    watch_token: str | None = None


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


class RecordingState(_ServerModel):
    """(new) ``recording_updated{enabled}`` echoed back: whether this session is being recorded now. Sent
    in answer to every ``recording_updated`` and, when the server records every session, once after
    ``ltx2_stream_start``."""

    type: Literal["recording_updated"] = "recording_updated"
    enabled: bool


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
    | SessionInfo
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
    | RecordingState
    | RewriteSeedPromptsStarted
    | RewriteSeedPromptsComplete
)


def serialize(message: ServerMessage) -> str:
    """JSON text of a server message, leaving out null fields."""
    return message.model_dump_json(exclude_none=True)


def error_payload(code: ErrorCode, message: str, *, retryable: bool = False) -> dict[str, Any]:
    """The ``{error: {code, message, retryable}}`` body of an HTTP error response."""
    return {"error": {"code": code, "message": message, "retryable": retryable}}
