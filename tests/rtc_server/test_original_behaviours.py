"""Behaviours the original server's own test suite checks, restated against this project's API.

Each test names the original test it ports (fastvideo/tests/entrypoints/streaming/...).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from gpu.generator import ContinuationState
from gpu.pool import InProcessGpuPool
from gpu.synthetic import SyntheticGenerator
from prompt.safety import PromptSafetyFilter, SafetyDecision
from rtc_server.generation_policy import GenerationPolicy, Hold, PolicySettings
from rtc_server.metrics import ServiceMetrics
from rtc_server.prompt_pipeline import PromptPipeline
from rtc_server.protocol import (
    ContinuationStateSnapshot,
    ErrorMessage,
    GpuAssigned,
    MediaInit,
    MediaSegmentComplete,
    MediaSegmentSkipped,
    PromptReceived,
    PromptRejected,
    QueueStatus,
    RecordingState,
    RewriteSeedPromptsComplete,
    RewriteSeedPromptsStarted,
    SegmentComplete,
    SegmentStart,
    ServerMessage,
    SessionInfo,
    SessionInitV2,
    SessionTimeout,
    StepComplete,
    StreamComplete,
    StreamStart,
    parse_client_message,
    serialize,
)
from rtc_server.registry import SessionRegistry
from rtc_server.session import InvalidSessionTransition, Session, SessionState
from rtc_server.session_log import SessionLogger
from rtc_server.session_services import SessionServices
from rtc_server.store import InMemoryBlobStore, InMemorySessionStore
from rtc_server.store.base import SessionStore
from rtc_server.store.redis_store import open_redis_stores
from tests.conftest import make_config
from tests.rtc_server.test_registry import IdleSink

# --- session state machine (test_session.py) ------------------------------------------------------

_PATH_TO = {
    SessionState.INITIALIZING: [],
    SessionState.QUEUED: [SessionState.QUEUED],
    SessionState.GPU_BINDING: [SessionState.QUEUED, SessionState.GPU_BINDING],
    SessionState.ACTIVE: [SessionState.QUEUED, SessionState.GPU_BINDING, SessionState.ACTIVE],
    SessionState.COMPLETE: [SessionState.QUEUED, SessionState.GPU_BINDING, SessionState.ACTIVE, SessionState.COMPLETE],
    SessionState.ERROR: [SessionState.ERROR],
    SessionState.TIMEOUT: [SessionState.QUEUED, SessionState.TIMEOUT],
    SessionState.REJECTED: [SessionState.REJECTED],
}


def _session_in(state: SessionState, clock: list[float] | None = None) -> Session:
    session = Session() if clock is None else Session(clock=lambda: clock[0])
    for step in _PATH_TO[state]:
        session.transition(step)
    assert session.state is state
    return session


def test_active_self_loop_is_allowed_and_counts_as_activity() -> None:
    """test_active_self_loop_allowed: re-asserting ACTIVE is fine (and postpones the idle timeout)."""
    clock = [10.0]
    session = _session_in(SessionState.ACTIVE, clock)
    clock[0] = 25.0
    session.transition(SessionState.ACTIVE)
    assert session.state is SessionState.ACTIVE
    assert session.idle_for() == 0.0


@pytest.mark.parametrize("state", [s for s in SessionState if s is not SessionState.ACTIVE])
def test_every_other_self_loop_is_refused_naming_the_state(state: SessionState) -> None:
    """The original's table has ACTIVE -> ACTIVE as its only self-loop; terminal states have no edges at all."""
    session = _session_in(state)
    with pytest.raises(InvalidSessionTransition, match=f"{state.value} -> {state.value}"):
        session.transition(state)
    assert session.state is state


# --- segment cap (test_session.py::test_segment_cap) ----------------------------------------------


def _generate(policy: GenerationPolicy) -> None:
    assert policy.hold() is None
    policy.generated(policy.take())


@pytest.mark.parametrize("cap", [1, 5])
def test_segment_cap_is_reached_exactly_at_the_cap(cap: int) -> None:
    """segment_cap_reached(5) is True after 5 segments, and not one segment before."""
    policy = GenerationPolicy(PolicySettings(default_prompt="d", segment_cap=cap))
    for _ in range(cap - 1):
        _generate(policy)
    assert policy.hold() is None and policy.segments_done == cap - 1
    _generate(policy)
    assert policy.hold() is Hold.SEGMENT_CAP


def test_segment_cap_zero_means_no_cap() -> None:
    policy = GenerationPolicy(PolicySettings(default_prompt="d", segment_cap=0))
    for _ in range(20):
        _generate(policy)
    assert policy.hold() is None


# --- active sessions (test_session.py::test_active_sessions_filter) ------------------------------


@pytest.fixture
async def pool() -> AsyncIterator[InProcessGpuPool]:
    pool = InProcessGpuPool(SyntheticGenerator, warmup=False)
    await pool.start()
    yield pool
    await pool.shutdown()


def _registry(pool: InProcessGpuPool) -> SessionRegistry:
    config = make_config(streaming={"max_sessions": 4, "max_queue": 2})
    services = SessionServices(
        pool=pool,
        store=InMemorySessionStore(InMemoryBlobStore()),
        log=SessionLogger(None),
        metrics=ServiceMetrics(),
        prompts=PromptPipeline(enhancer=None, safety=None, deadline_s=1.0),
        streaming=config.streaming,
        defaults=config.default_request,
        limits=config.limits,
        image_dir=Path("/nonexistent"),
    )
    return SessionRegistry(config=config, services=services, clock=lambda: 0.0)


async def test_only_sessions_holding_a_streaming_slot_count_as_active(pool: InProcessGpuPool) -> None:
    """The registry has no list of active sessions; its equivalent is the count of sessions holding
    a streaming slot (``active``, and ``sessions_active`` of the live counts behind /metrics)."""
    registry = _registry(pool)
    streaming = registry.open(transport="webrtc", sink=IdleSink(), client="addr:127.0.0.1")
    initialising = registry.open(transport="webrtc", sink=IdleSink(), client="addr:127.0.0.2")
    streaming.session.transition(SessionState.GPU_BINDING)
    assert registry.try_enter(streaming.session.id)
    streaming.session.transition(SessionState.ACTIVE)
    assert len(registry) == 2
    assert registry.active == 1 and registry.live_counts().sessions_active == 1
    assert initialising.session.state is SessionState.INITIALIZING
    registry.leave(streaming.session.id)
    assert registry.active == 0
    await registry.close()


# --- protocol (test_protocol.py) ----------------------------------------------------------------

FULL_INIT: dict[str, Any] = {
    "type": "session_init_v2",
    "client_id": "client-1",
    "preset": "ltx2_two_stage",
    "preset_label": "2x refine",
    "curated_prompts": ["a fox", "a deer"],
    "initial_image": {"mime": "image/png", "name": "fox.png", "data": "iVBORw0KGgo="},
    "enhancement_enabled": True,
    "auto_extension_enabled": True,
    "loop_generation_enabled": True,
    "single_clip_mode": True,
    "stream_mode": "av_fmp4",
    "continuation_state": {"kind": "ltx2.v1", "payload": {"schema_version": 1, "segment_index": 2}},
    "continuation_fallback": "fresh",
    "generation_mode": "per_prompt",
}


def test_a_fully_populated_session_init_v2_parses_and_round_trips() -> None:
    """test_session_init_v2_full, with every field of this project's session_init_v2 set."""
    parsed = parse_client_message(FULL_INIT)
    assert isinstance(parsed, SessionInitV2)
    assert parsed.curated_prompts == ["a fox", "a deer"]
    assert parsed.continuation_state is not None and parsed.continuation_state.kind == "ltx2.v1"
    assert parsed.continuation_state.payload == {"schema_version": 1, "segment_index": 2}
    dumped = parsed.model_dump(mode="json", exclude_none=True)
    assert dumped == FULL_INIT
    assert parse_client_message(json.loads(json.dumps(dumped))) == parsed


def test_a_fully_populated_resuming_session_init_v2_round_trips() -> None:
    """resume_session excludes continuation_state, so it is the one field the full init above cannot carry."""
    raw = {k: v for k, v in FULL_INIT.items() if k != "continuation_state"}
    raw["resume_session"] = {"session_id": "abc123", "resume_token": "t" * 43}
    parsed = parse_client_message(raw)
    assert isinstance(parsed, SessionInitV2) and parsed.resume_session is not None
    assert parsed.model_dump(mode="json", exclude_none=True) == raw


# One message of each server type, with only required fields: (message, its type on the wire).
SERVER_MESSAGES: list[tuple[ServerMessage, str]] = [
    (QueueStatus(position=1, queue_depth=2), "queue_status"),
    (GpuAssigned(gpu_id=0, session_timeout=300), "gpu_assigned"),
    (SessionInfo(session_id="s1", resume_token="t" * 43), "session_info"),
    (StreamStart(width=768, height=512, fps=24, num_frames=121), "ltx2_stream_start"),
    (SegmentStart(segment_idx=0, prompt="a fox", total_steps=8), "ltx2_segment_start"),
    (StepComplete(segment_idx=0, step=1, total_steps=8), "step_complete"),
    (MediaInit(segment_idx=0, mime='video/mp4; codecs="avc1.42E01E"', stream_id="s1"), "media_init"),
    (MediaSegmentComplete(segment_idx=0, stream_id="s1", chunks=3), "media_segment_complete"),
    (MediaSegmentSkipped(segment_idx=1), "media_segment_skipped"),
    (SegmentComplete(segment_idx=0, generation_time_ms=812.5), "ltx2_segment_complete"),
    (StreamComplete(reason="segment_cap"), "ltx2_stream_complete"),
    (SessionTimeout(timeout_seconds=300), "session_timeout"),
    (ContinuationStateSnapshot(state={"kind": "ltx2.v1", "payload": {}}), "continuation_state_snapshot"),
    (ErrorMessage(code="invalid_message", message="bad"), "error"),
    (PromptReceived(prompt="a fox", prompt_used="a fox", source="user"), "prompt_received"),
    (PromptRejected(prompt="x", reason="unsafe"), "prompt_rejected"),
    (RecordingState(enabled=True), "recording_updated"),
    (RewriteSeedPromptsStarted(seed_prompt="a fox"), "rewrite_seed_prompts_started"),
    (RewriteSeedPromptsComplete(seed_prompt="a fox", alternatives=["a red fox"]), "rewrite_seed_prompts_complete"),
]


def test_the_list_covers_every_server_message_type() -> None:
    assert {type(message) for message, _ in SERVER_MESSAGES} == set(ServerMessage.__args__)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("message", "wire_type"), SERVER_MESSAGES, ids=[t for _, t in SERVER_MESSAGES])
def test_each_server_message_serialises_with_its_type_and_without_nulls(message: ServerMessage, wire_type: str) -> None:
    """test_queue_status, test_gpu_assigned, ... test_continuation_state_snapshot, one per type."""
    body = json.loads(serialize(message))
    assert body["type"] == wire_type
    assert None not in body.values()
    nullable = {name for name, value in message.model_dump().items() if value is None}
    assert nullable.isdisjoint(body)
    assert set(body) == set(message.model_dump(exclude_none=True))


def test_optional_fields_appear_once_set() -> None:
    message = PromptRejected(prompt="x", reason="unsafe", label="unsafe", score=0.97)
    assert json.loads(serialize(message)) == {
        "type": "prompt_rejected",
        "prompt": "x",
        "reason": "unsafe",
        "label": "unsafe",
        "score": 0.97,
    }


# --- safety (test_auxiliaries.py::test_allow_when_classifier_flags_safe) ---------------------------


class _LabelModel:
    """A classifier answering fixed scores per label, most likely first, as fastText does."""

    def __init__(self, scores: dict[str, float]) -> None:
        self._scores = sorted(scores.items(), key=lambda item: -item[1])

    def predict(self, text: str, k: int = 1, threshold: float = 0.0) -> tuple[Sequence[str], Any]:
        return tuple(f"__label__{label}" for label, _ in self._scores), [score for _, score in self._scores]


@pytest.mark.parametrize(
    "scores",
    [
        {"safe": 0.99, "unsafe": 0.01},
        {"violence": 0.97, "unsafe": 0.02, "safe": 0.01},
        {"nsfw": 0.9, "safe": 0.09, "unsafe": 0.01},
    ],
    ids=["safe", "violence", "nsfw"],
)
def test_a_label_other_than_unsafe_at_a_high_score_allows_the_prompt(scores: dict[str, float]) -> None:
    safety = PromptSafetyFilter(classifier_path="m", loader=lambda _path: _LabelModel(scores))
    result = safety.classify("a red fox in the snow")
    assert result.decision is SafetyDecision.ALLOW
    assert result.unsafe_score == pytest.approx(scores["unsafe"])


def test_only_the_unsafe_label_blocks_whatever_comes_first() -> None:
    safety = PromptSafetyFilter(classifier_path="m", loader=lambda _path: _LabelModel({"unsafe": 0.95, "safe": 0.05}))
    result = safety.classify("please")
    assert result.decision is SafetyDecision.BLOCK and result.unsafe_score == pytest.approx(0.95)


# --- store iteration and length (test_session_store.py::test_iter_yields_session_ids, test_len) ---------


@pytest.fixture(params=["memory", "redis"])
async def session_store(request: pytest.FixtureRequest) -> AsyncIterator[SessionStore]:
    if request.param == "memory":
        blobs = InMemoryBlobStore()
        sessions: SessionStore = InMemorySessionStore(blobs)
    else:
        sessions, blobs = await open_redis_stores(request.getfixturevalue("fresh_redis_url"))
    yield sessions
    await sessions.close()
    await blobs.close()


async def test_the_store_lists_its_session_ids_and_counts_them(session_store: SessionStore) -> None:
    state = ContinuationState("ltx2.v1", {})
    assert await session_store.count() == 0 and await session_store.session_ids() == []
    await session_store.store("b", state)
    await session_store.store("a", state)
    await session_store.store("a", state)  # a replaced state is still one session
    assert await session_store.session_ids() == ["a", "b"]
    assert await session_store.count() == 2
    hydrated = await session_store.hydrate(state)
    await session_store.drop("b")
    assert await session_store.session_ids() == sorted(["a", hydrated])
    assert await session_store.count() == 2
