"""Where a session starts from: its generation rules, its initial image on disk, and a resumed
continuation state.

The image and the state are checked before the session takes a GPU slot, so a bad one costs no GPU time.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpu.generator import ContinuationState, IncompatibleStateError
from gpu.pool import GpuPool
from rtc_server.config import SamplingConfig
from rtc_server.generation_policy import PolicySettings
from rtc_server.init_image import decode_init_image, persist_init_image
from rtc_server.protocol import SessionInitV2, StreamStart
from rtc_server.redact import redact_paths
from rtc_server.session_events import SessionEvents
from rtc_server.session_services import SessionServices, policy_settings
from rtc_server.store.base import InvalidStateError, SessionStore

if TYPE_CHECKING:  # session_failures maps this module's ResumeRefused
    from rtc_server.session_failures import SessionFailure

__all__ = [
    "ResumeRefused",
    "SessionRefused",
    "StartPoint",
    "describe_init",
    "generation_mode",
    "generation_settings",
    "resume_point",
    "store_initial_image",
    "stream_start",
]


class ResumeRefused(Exception):
    """A continuation_state that cannot be continued from."""


class SessionRefused(Exception):
    """A session that cannot start as asked; ``failure`` is what its client is told."""

    def __init__(self, failure: SessionFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


@dataclass(frozen=True)
class StartPoint:
    """The state the first segment continues from and that segment's index."""

    state: ContinuationState | None = None
    segment_idx: int = 0


def generation_mode(init: SessionInitV2, services: SessionServices) -> str:
    """``continuous`` or ``per_prompt``: the session's own choice, else the server's ``streaming.generation_mode``."""
    return init.generation_mode or services.streaming.generation_mode


def generation_settings(init: SessionInitV2, services: SessionServices) -> PolicySettings:
    """A session's generation rules (``policy_settings``) in its generation mode."""
    return replace(
        policy_settings(init, services),
        per_prompt=generation_mode(init, services) == "per_prompt",
        max_queued_prompts=services.streaming.max_queued_prompts,
    )


def describe_init(init: SessionInitV2) -> dict[str, Any]:
    """What the session log keeps of a session_init_v2 (no prompt texts, no image bytes)."""
    return {
        "client_id": init.client_id,
        "curated_prompts": len(init.curated_prompts),
        "loop_generation": init.loop_generation_enabled,
        "single_clip": init.single_clip_mode,
        "generation_mode": init.generation_mode,  # None: the server's
        "initial_image": init.initial_image is not None,
        "resume_kind": init.continuation_state.kind if init.continuation_state else None,
        # Which session it resumes, never the token (a secret of the client's).
        "resume_session": init.resume_session.session_id if init.resume_session else None,
    }


def stream_start(init: SessionInitV2, sampling: SamplingConfig) -> StreamStart:
    """The ``ltx2_stream_start`` a session opens with: its preset and the stream's geometry."""
    return StreamStart(
        preset=init.preset, width=sampling.width, height=sampling.height, fps=sampling.fps, num_frames=sampling.num_frames
    )


async def store_initial_image(
    init: SessionInitV2, *, max_bytes: int, max_pixels: int, directory: Path, events: SessionEvents
) -> Path | None:
    """Decode (whole: a corrupt image is refused here) and keep the init's ``initial_image`` in a
    private file; raises InitImageError."""
    if init.initial_image is None:
        return None
    image = await asyncio.to_thread(decode_init_image, init.initial_image, max_bytes=max_bytes, max_pixels=max_pixels)
    if image is None:
        return None
    path = await asyncio.to_thread(persist_init_image, image, directory)
    events.log("initial_image", name=image.display_name, mime=image.mime, bytes=len(image.data))
    return path


async def resume_point(
    init: SessionInitV2, *, session_id: str, store: SessionStore, pool: GpuPool, events: SessionEvents
) -> StartPoint:
    """Install the init's continuation_state for ``session_id``; with ``continuation_fallback: fresh``
    an unusable one is reported and the stream starts over, else ResumeRefused."""
    wire = init.continuation_state
    if wire is None:
        return StartPoint()
    try:
        return await _resume(ContinuationState(wire.kind, wire.payload), session_id, store, pool, events)
    except ResumeRefused as exc:
        if init.continuation_fallback != "fresh":
            raise
        events.error("invalid_message", redact_paths(f"{exc}; starting a fresh stream as asked"), retryable=False)
        return StartPoint()


async def _resume(
    wire_state: ContinuationState, session_id: str, store: SessionStore, pool: GpuPool, events: SessionEvents
) -> StartPoint:
    try:
        await store.hydrate(wire_state, session_id=session_id)
        state = await store.load(session_id)
        if state is None:
            raise ResumeRefused("continuation_state refused: it vanished from the store")
        await pool.check_state(state)
    except IncompatibleStateError as exc:
        await store.drop(session_id)
        raise ResumeRefused(f"continuation_state refused: {exc}") from exc
    except InvalidStateError as exc:
        raise ResumeRefused(f"continuation_state refused: {exc}") from exc
    resumed_idx = state.payload.get("segment_idx")
    segment_idx = resumed_idx if isinstance(resumed_idx, int) and resumed_idx >= 0 else 0
    events.log("resumed", kind=state.kind, segment_idx=segment_idx)
    return StartPoint(state, segment_idx)
