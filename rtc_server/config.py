"""Typed service configuration, loaded from YAML.

Every section is a pydantic model that forbids unknown keys, so a typo in a
config file is an error naming the key and the file instead of a silently
ignored setting.
"""

from __future__ import annotations

import ipaddress
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gpu.generator import MAX_FRAME_EDGE_PX, MAX_FRAMES_PER_SEGMENT, MAX_STEPS
from prompt import ProviderSpec
from rtc_server.protocol import MAX_CURATED_PROMPTS, MAX_PROMPT_CHARS, MAX_SEED

__all__ = [
    "AuthConfig",
    "ConfigError",
    "DefaultRequestConfig",
    "GeneratorConfig",
    "LimitsConfig",
    "PoolConfig",
    "SamplingConfig",
    "ServerConfig",
    "ServiceConfig",
    "StoreConfig",
    "StreamingConfig",
    "TurnConfig",
    "ViewersConfig",
    "WebRTCConfig",
    "WebSocketConfig",
    "load_config",
    "read_config_mapping",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Section):
    """Where the HTTP server listens and what it accepts."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0, description="Largest offer body accepted (bytes).")
    admin_token: str | None = Field(
        None,
        description="Bearer token of the operators: required by /v1/admin endpoints, /metrics and the detail of "
        "/status. Unset: those are refused (status shows counts only).",
    )
    allowed_origins: list[str] | None = Field(
        None,
        description="Web origins (scheme://host[:port]) whose pages may open sessions (offer CORS, WebSocket "
        "upgrade). Unset: the server's own origin only (and clients that send no Origin, i.e. not browsers); "
        '["*"]: any.',
    )
    max_message_bytes: int = Field(
        48 * 1024 * 1024, gt=0, description="Largest control message accepted (bytes); fits a 32 MiB image in base64."
    )
    web_client_dir: str | None = Field(None, description="Directory served at /; the packaged page when unset.")


class GeneratorConfig(_Section):
    """Which video backend generates segments, with its backend-specific options."""

    backend: str = "synthetic"
    options: dict[str, Any] = Field(default_factory=dict)


class PoolConfig(_Section):
    """How generation is scheduled onto workers."""

    backend: Literal["inprocess", "subprocess"] = "inprocess"
    max_parallel: int = Field(2, ge=1, description="inprocess: segments generated at once.")
    warmup: bool = True
    num_workers: int = Field(1, ge=1, description="subprocess: worker processes, one per GPU.")
    gpu_ids: list[int] | None = Field(None, description="subprocess: CUDA device of each worker; 0..n-1 when unset.")
    sessions_per_worker: int = Field(1, ge=1, description="subprocess: sessions one worker serves, round-robin.")
    segment_timeout_seconds: float = Field(120.0, gt=0, description="subprocess: a segment running longer kills its worker.")
    boot_timeout_seconds: float = Field(300.0, gt=0, description="subprocess: time to build and warm up a worker.")
    restart_delay_seconds: float = Field(1.0, ge=0)
    acquire_timeout_seconds: float = Field(
        30.0, gt=0, description="A session admitted but given no GPU worker this long gets error{gpu_unavailable}."
    )
    worker_options: dict[int, dict[str, Any]] = Field(
        default_factory=dict, description="subprocess: generator option overrides per worker index."
    )

    @model_validator(mode="after")
    def _check_gpu_ids(self) -> PoolConfig:
        if self.gpu_ids is not None and len(self.gpu_ids) != self.num_workers:
            raise ValueError(f"gpu_ids lists {len(self.gpu_ids)} devices for {self.num_workers} workers")
        return self


class SamplingConfig(_Section):
    """Per-segment generation parameters."""

    width: int = Field(512, ge=16, le=4096, multiple_of=2)
    height: int = Field(512, ge=16, le=4096, multiple_of=2)
    fps: int = Field(24, ge=1, le=120)
    num_frames: int = Field(24, ge=1, le=1024)
    num_inference_steps: int = Field(4, ge=1, le=1000)
    guidance_scale: float = Field(1.0, ge=0.0, allow_inf_nan=False)
    seed: int = Field(0, ge=0, le=MAX_SEED)


class DefaultRequestConfig(_Section):
    """What a session generates when the client does not say otherwise."""

    prompt: str = Field("a slow drift through a glowing nebula", min_length=1)
    negative_prompt: str | None = None
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)


class PromptConfig(_Section):
    """LLM prompt enhancement, auto-extension and rewrite; off while ``providers`` is empty."""

    providers: list[ProviderSpec] = Field(default_factory=list, description="Tried in this order.")
    model: str | None = None
    timeout_ms: int = Field(3000, gt=0, description="Per provider call.")
    deadline_ms: int = Field(5000, gt=0, description="Whole fallback chain; past it the raw prompt is used.")
    wait_ms: int = Field(
        250, ge=0, description="How long a segment waits for an LLM answer; later answers are used by a later segment."
    )
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int | None = Field(256, gt=0)
    system_prompt_dir: str | None = None
    history: int = Field(4, ge=1, le=32, description="Recent prompts given to auto-extension.")


class SafetyConfig(_Section):
    """The fastText safety filter every prompt passes before it reaches a GPU."""

    enabled: bool = False
    classifier_path: str | None = None
    block_threshold: float = Field(0.5, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _check_path(self) -> SafetyConfig:
        if self.enabled and not self.classifier_path:
            raise ValueError("safety enabled needs classifier_path (train one with python -m prompt.safety train)")
        return self


class ViewersConfig(_Section):
    """Viewers of a session (``session_info.watch_token``, ``GET /v1/sessions/{id}/watch``)."""

    enabled: bool = Field(True, description="Issue watch tokens and serve the watch endpoint; off: it answers 404.")
    max_per_session: int = Field(50, ge=1, description="Viewers of one session at once; one more gets 503.")
    max_queued_bytes: int = Field(
        8 * 1024 * 1024, ge=64 * 1024, description="Media waiting for one viewer; beyond it the viewer is dropped."
    )


class StreamingConfig(_Section):
    """Session limits and pacing."""

    session_timeout_seconds: int = Field(300, ge=1, description="Idle time before a session is closed.")
    generation_mode: Literal["continuous", "per_prompt"] = Field(
        "continuous",
        description="continuous: segments follow one another; per_prompt: one segment per segment_prompt_source, "
        "as the original system (a session may choose with session_init_v2.generation_mode).",
    )
    max_queued_prompts: int = Field(
        16, ge=1, description="per_prompt: prompts waiting for their segment; one more is answered with an error."
    )
    generation_segment_cap: int = Field(0, ge=0, description="Segments per session; 0 means no cap.")
    max_sessions: int = Field(8, ge=1, description="Sessions streaming at once (active slots).")
    max_queue: int = Field(16, ge=0, description="Sessions waiting for a slot; beyond it new sessions are rejected.")
    lookahead_segments: int = Field(1, ge=0, le=8)
    reaper_interval_seconds: float = Field(1.0, gt=0)
    session_log_dir: str | None = Field(None, description="One JSONL log per session here; off when unset.")
    init_image_dir: str | None = Field(None, description="Where initial images are kept; a private temp dir when unset.")
    max_init_image_bytes: int = Field(32 * 1024 * 1024, gt=0, description="Decoded size limit of initial images.")
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    frame_log_size: int = Field(
        2000, ge=0, description="Release times of this many recent frames per session, for latency probes; 0 = off."
    )
    viewers: ViewersConfig = Field(default_factory=ViewersConfig)
    recording_dir: str | None = Field(
        None,
        min_length=1,
        description="Record every session (its fMP4 packets remuxed, never re-encoded) into an MP4 here; "
        "off when unset (recording_updated is then refused).",
    )
    recording_retention_seconds: float = Field(
        24 * 3600, gt=0, allow_inf_nan=False, description="Finished recordings are deleted this long after they end."
    )


class TurnConfig(_Section):
    """A TURN server checking short-lived credentials (coturn's ``use-auth-secret``)."""

    urls: list[str] = Field(min_length=1, description="turn:/turns: URLs of the server, e.g. turn:turn.example.com:3478")
    secret_env: str = Field(
        min_length=1, description="Environment variable holding the shared secret (coturn's static-auth-secret)."
    )
    ttl_seconds: int = Field(3600, ge=60, le=7 * 24 * 3600, description="How long handed-out credentials work.")
    server_side: bool = Field(False, description="The server's own peer connections also gather relay candidates.")

    @model_validator(mode="after")
    def _check_urls(self) -> TurnConfig:
        for url in self.urls:
            if not url.startswith(("turn:", "turns:")):
                raise ValueError(f"turn.urls: {url!r} is not a turn: or turns: URL")
        return self


class WebRTCConfig(_Section):
    """ICE and bitrate settings for the WebRTC transport."""

    ice_servers: list[dict[str, Any]] = Field(
        default_factory=list, description="STUN/TURN servers of the server's own peer connections."
    )
    client_ice_servers: list[dict[str, Any]] | None = Field(
        None, description="STUN/TURN servers handed to browsers by /v1/webrtc/ice-servers; unset: ice_servers."
    )
    turn: TurnConfig | None = Field(None, description="TURN with short-lived credentials, handed out per request.")
    public_addresses: list[str] = Field(
        default_factory=list,
        description='1:1 NAT: announce these addresses with the host candidates\' ports. "PUBLIC" maps every local '
        'address, "PUBLIC/LOCAL" only LOCAL.',
    )
    announce_local_addresses: bool = Field(
        True,
        description="With public_addresses: also announce the local addresses (the public ones as srflx "
        "candidates); false: the host candidates carry the public addresses instead.",
    )
    udp_port_range: tuple[int, int] | None = Field(
        None, description="[min, max]: every ICE socket binds inside this UDP port range (inclusive)."
    )
    gather_timeout_seconds: float = Field(
        3.0, gt=0, le=30, description="Longest wait for STUN/TURN candidates while answering an offer."
    )
    ice_host_addresses: list[str] | None = Field(
        None, description="Restrict host ICE candidates to these addresses; all interfaces when unset."
    )
    min_bitrate: int = Field(250_000, gt=0, description="bits per second")
    max_bitrate: int = Field(4_000_000, gt=0, description="bits per second")
    start_bitrate: int = Field(1_500_000, gt=0, description="bits per second")
    peer_timeout_seconds: float = Field(
        5.0, gt=0, description="A peer that sends no RTCP for this long is considered gone."
    )
    connect_timeout_seconds: float = Field(
        8.0, gt=0, description="A peer that has not connected this long after its offer is dropped."
    )
    channel_queue_limit: int = Field(1024, ge=1, description="Events kept for a data channel that is not open yet.")

    @model_validator(mode="after")
    def _check_bitrates(self) -> WebRTCConfig:
        if not self.min_bitrate <= self.start_bitrate <= self.max_bitrate:
            raise ValueError("need min_bitrate <= start_bitrate <= max_bitrate")
        return self

    @model_validator(mode="after")
    def _check_addresses(self) -> WebRTCConfig:
        for entry in self.public_addresses:
            for part in entry.split("/", 1):
                try:
                    ipaddress.ip_address(part)
                except ValueError:
                    raise ValueError(f"public_addresses: {entry!r} is not ADDRESS or PUBLIC/LOCAL") from None
        if self.udp_port_range is not None:
            low, high = self.udp_port_range
            if not 1024 <= low <= high <= 65535:
                raise ValueError("udp_port_range: need 1024 <= min <= max <= 65535")
        return self


class WebSocketConfig(_Section):
    """The WebSocket/fMP4 fallback transport."""

    max_pending_segments: int = Field(
        3, ge=1, description="Encoded segments queued for a slow client before whole segments are skipped."
    )
    init_timeout_seconds: float = Field(10.0, gt=0, description="Time allowed for the first message.")
    heartbeat_seconds: float | None = Field(
        20.0,
        gt=0,
        description="Ping the client this often (a pong must come within half of it, or the peer is dead); keeps "
        "proxies with idle timeouts from cutting a paused session. null: no pings.",
    )
    send_buffer_bytes: int | None = Field(
        128 * 1024,
        ge=4096,
        description="Kernel send buffer per socket; small enough that a stalled reader is noticed in seconds.",
    )
    stalled_client_timeout_seconds: float = Field(
        30.0, gt=0, description="A client that accepts no data for this long is disconnected (close 1008)."
    )
    crf: int = Field(23, ge=1, le=51, description="x264 constant rate factor")
    preset: str = "ultrafast"
    profile: Literal["baseline", "main"] = "baseline"


class StoreConfig(_Section):
    """Where continuation state lives: in memory, or in Redis to survive restarts and share across replicas."""

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None
    key_prefix: str = "rtcvs:"
    inline_limit_bytes: int = Field(64 * 1024, ge=0, description="Payload parts larger than this go to the blob store.")
    snapshot_ttl_seconds: float = Field(3600.0, gt=0)
    state_ttl_seconds: float = Field(86400.0, gt=0, description="Live states expire if a server dies holding them.")

    @model_validator(mode="after")
    def _check_redis_url(self) -> StoreConfig:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("backend redis needs redis_url")
        return self


# Pillow refuses images above twice its MAX_IMAGE_PIXELS (89 478 485) and warns above it; staying
# below lets our own check give the clear message.
MAX_IMAGE_PIXELS_CAP = 8192 * 8192  # pixels
MAX_QUEUED_EVENT_BYTES_FLOOR = 64 * 1024  # bytes: one continuation snapshot held inline (store.inline_limit_bytes)


class LimitsConfig(_Section):
    """Server-side caps on what a client may ask for and on what one session or connection may hold.

    Client values beyond a cap are answered ``invalid_message`` naming the field and the cap. The
    config's own ``default_request`` must lie within them too.
    """

    max_inference_steps: int = Field(
        50,
        ge=1,
        le=MAX_STEPS,
        description="Denoising steps a client may ask for per segment. 50 is LTX-Video's full, non-distilled "
        "schedule; more costs minutes per segment without a visible gain (1000 got workers killed).",
    )
    guidance_scale_range: tuple[float, float] = Field(
        (0.0, 20.0),
        description="[min, max] classifier-free guidance a client may ask for. Video diffusion models burn out "
        "(saturated, flickering frames) well before 20; 0..1 turns guidance off.",
    )
    max_width: int = Field(
        1280,
        ge=16,
        le=MAX_FRAME_EDGE_PX,
        description="Frame width (px) of the config and of resumed continuation states. 1280 covers 720p "
        "landscape, the largest LTX-Video generates near real time.",
    )
    max_height: int = Field(
        1280,
        ge=16,
        le=MAX_FRAME_EDGE_PX,
        description="Frame height (px) of the config and of resumed continuation states. 1280 covers 720p "
        "portrait as max_width covers landscape.",
    )
    max_num_frames: int = Field(
        240,
        ge=1,
        le=MAX_FRAMES_PER_SEGMENT,
        description="New frames per segment. 240 is 10 s at 24 fps: a longer segment delays every prompt change "
        "as long, and with 9 conditioning frames it would pass LTX-Video's 257-frame training length.",
    )
    max_prompt_chars: int = Field(
        2000,
        ge=1,
        le=MAX_PROMPT_CHARS,
        description="Characters in a prompt, negative prompt or curated/seed prompt. LTX's text encoder reads "
        "256 tokens (about 1000-1500 characters of English); 2000 leaves room without paying LLM tokens for noise.",
    )
    max_curated_prompts: int = Field(
        64,
        ge=0,
        le=MAX_CURATED_PROMPTS,
        description="Curated prompts in session_init_v2 / seed_prompts_updated. The web client keeps a handful; "
        "64 x max_prompt_chars bounds a session's list to about 128 KB.",
    )
    max_image_pixels: int = Field(
        4096 * 4096,
        ge=1,
        le=MAX_IMAGE_PIXELS_CAP,
        description="Pixels (width x height) of an initial image, checked from its header before decoding. "
        "4096^2 admits 12 MP phone photos and the largest frame any backend makes; its decode stays under 64 MiB.",
    )
    messages_per_second: float = Field(
        20.0,
        gt=0,
        allow_inf_nan=False,
        description="Control messages per connection per second, sustained. A UI sends a few per user action; "
        "20/s never throttles a person yet caps a flood.",
    )
    message_burst: int = Field(
        40,
        ge=1,
        description="Control messages a connection may send at once above the sustained rate (token bucket "
        "size): a page restoring its settings sends about ten in a row.",
    )
    sessions_per_client: int = Field(
        4,
        ge=1,
        description="Sessions one client (token subject, else address) may hold or open at once: a person watches "
        "one or two; a JWT may lower it with a max_sessions claim.",
    )
    offers_per_minute: int = Field(
        30,
        ge=1,
        description="Offers (and WebSocket session starts) per client per minute: a page retrying after errors "
        "stays well under it; a script squatting slots does not.",
    )
    llm_calls_per_minute: int = Field(
        30,
        ge=1,
        description="LLM calls (enhance, auto-extend, rewrite) per session per minute. One every 2 s keeps "
        "auto-extension fresh for a story yet caps one session at about 1800 paid calls an hour.",
    )
    max_queued_event_bytes: int = Field(
        4 * 1024 * 1024,
        ge=MAX_QUEUED_EVENT_BYTES_FLOOR,
        description="Bytes of control events queued for one session's client. Events are ~100 B and a "
        "snapshot's inline payload at most store.inline_limit_bytes, so 4 MiB is tens of thousands of "
        "events: only a client that stopped reading reaches it.",
    )
    max_rss_bytes: int | None = Field(
        None,
        gt=0,
        description="Server resident memory above which new sessions are refused (session_rejected, as a full "
        "server). "
        "None = no bound: an in-process diffusers model alone holds gigabytes, so only a deployment knows its "
        "figure.",
    )

    @model_validator(mode="after")
    def _check_guidance_range(self) -> LimitsConfig:
        low, high = self.guidance_scale_range
        if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low <= high):
            raise ValueError(f"guidance_scale_range must be [min, max] with 0 <= min <= max, got [{low}, {high}]")
        return self


class AuthConfig(_Section):
    """Who may open sessions. Without this section the server serves loopback only (DESIGN §9)."""

    mode: Literal["none", "token", "jwt"] = Field(
        description="none: anyone who reaches the port; token: bearer tokens from the environment; jwt: signed tokens."
    )
    token_envs: list[str] = Field(
        default_factory=list, description="token: names of environment variables, each holding one accepted token."
    )
    secret_env: str | None = Field(None, description="jwt (HS256): environment variable holding the shared secret.")
    public_key_path: str | None = Field(None, description="jwt (RS256): PEM file with the issuer's public key.")
    audience: str | None = Field(None, description="jwt: the aud claim required (recommended).")
    issuer: str | None = Field(None, description="jwt: the iss claim required, when set.")
    leeway_seconds: float = Field(30.0, ge=0, description="jwt: clock skew allowed on exp/nbf/iat.")

    @model_validator(mode="after")
    def _check_mode(self) -> AuthConfig:
        if self.mode == "token" and not self.token_envs:
            raise ValueError("auth.mode token needs auth.token_envs: the environment variables holding the tokens")
        if self.mode == "jwt" and (self.secret_env is None) == (self.public_key_path is None):
            raise ValueError("auth.mode jwt needs exactly one of auth.secret_env (HS256) or auth.public_key_path (RS256)")
        return self


class ServiceConfig(_Section):
    """The whole service configuration."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    pool: PoolConfig = Field(default_factory=PoolConfig)
    default_request: DefaultRequestConfig = Field(default_factory=DefaultRequestConfig)
    streaming: StreamingConfig = Field(default_factory=StreamingConfig)
    webrtc: WebRTCConfig = Field(default_factory=WebRTCConfig)
    websocket: WebSocketConfig = Field(default_factory=WebSocketConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    auth: AuthConfig | None = Field(
        None, description="Absent: loopback only; a server bound elsewhere without it refuses to start."
    )

    @model_validator(mode="after")
    def _check_defaults_within_limits(self) -> ServiceConfig:
        # The server must not itself ask for what it refuses from a client.
        problems = _default_request_problems(self.default_request, self.limits)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _default_request_problems(request: DefaultRequestConfig, limits: LimitsConfig) -> list[str]:
    """Each way ``request`` exceeds ``limits``, naming both keys; empty when it fits."""
    sampling = request.sampling
    checks = [
        ("sampling.num_inference_steps", sampling.num_inference_steps, "max_inference_steps", limits.max_inference_steps),
        ("sampling.width", sampling.width, "max_width", limits.max_width),
        ("sampling.height", sampling.height, "max_height", limits.max_height),
        ("sampling.num_frames", sampling.num_frames, "max_num_frames", limits.max_num_frames),
        ("prompt length", len(request.prompt), "max_prompt_chars", limits.max_prompt_chars),
        (
            "negative_prompt length",
            len(request.negative_prompt or ""),
            "max_prompt_chars",
            limits.max_prompt_chars,
        ),
    ]
    problems = [
        f"default_request.{key} {value} exceeds limits.{limit_key} {limit}"
        for key, value, limit_key, limit in checks
        if value > limit
    ]
    low, high = limits.guidance_scale_range
    if not low <= sampling.guidance_scale <= high:
        problems.append(
            f"default_request.sampling.guidance_scale {sampling.guidance_scale} lies outside "
            f"limits.guidance_scale_range [{low}, {high}]"
        )
    return problems


class ConfigError(ValueError):
    """A config file that cannot be read or does not validate; the message names the file and key."""


def _format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "<root>"
        lines.append(f"  {key}: {error['msg']}")
    return "\n".join(lines)


def read_config_mapping(path: Path) -> dict[str, Any]:
    """A YAML config file's top-level mapping (an empty file: {}); ConfigError naming the file otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path) -> ServiceConfig:
    """Read and validate a YAML config file; raise ConfigError naming the file and the bad key."""
    path = Path(path)
    raw = read_config_mapping(path)
    try:
        return ServiceConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(path, exc)) from exc
