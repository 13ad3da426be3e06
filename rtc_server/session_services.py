"""What a SessionController is given: the server's shared objects and its admission slot."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from gpu.pool import GpuPool
from rtc_server.admission import PositionCallback
from rtc_server.config import DefaultRequestConfig, LimitsConfig, StreamingConfig
from rtc_server.generation_policy import PolicySettings
from rtc_server.metrics import ServiceMetrics
from rtc_server.prompt_pipeline import PromptPipeline
from rtc_server.protocol import SessionInitV2
from rtc_server.session_log import SessionLogger
from rtc_server.store.base import SessionStore
from rtc_server.store.resume_records import InMemoryResumeRecords, ResumeRecords

if TYPE_CHECKING:
    from rtc_server.viewers.recording import RecordingService

__all__ = ["Admission", "SessionDirectory", "SessionServices", "policy_settings"]


@dataclass(frozen=True, kw_only=True)
class SessionServices:
    """What every session of a server shares."""

    pool: GpuPool
    store: SessionStore
    log: SessionLogger
    metrics: ServiceMetrics
    prompts: PromptPipeline
    streaming: StreamingConfig
    defaults: DefaultRequestConfig
    limits: LimitsConfig
    image_dir: Path
    records: ResumeRecords = field(default_factory=InMemoryResumeRecords)  # sessions' resume records
    recordings: RecordingService | None = None  # sessions' recordings (streaming.recording_dir)


class Admission(Protocol):
    """The registry's active slots and their FIFO queue, as a session sees them."""

    @property
    def depth(self) -> int:
        """Sessions waiting for a slot."""
        ...

    def try_enter(self, session_id: str) -> bool: ...

    async def wait(self, session_id: str, on_position: PositionCallback) -> None: ...

    def leave(self, session_id: str) -> None: ...


class SessionDirectory(Protocol):
    """The registry's live sessions by id, as a session resuming under an earlier id sees them."""

    async def hand_over(self, session_id: str) -> bool:
        """End the live session ``session_id`` on this server, if any (its client reconnected); True if one was."""
        ...

    def rename(self, old_id: str, session_id: str) -> None:
        """The live session ``old_id`` now goes by ``session_id`` (it resumed that session)."""
        ...


def policy_settings(init: SessionInitV2, services: SessionServices) -> PolicySettings:
    """A session's generation rules: what its client asked for, within the server's limits."""
    streaming = services.streaming
    return PolicySettings(
        default_prompt=services.defaults.prompt,
        curated=init.curated_prompts,
        loop=init.loop_generation_enabled,
        auto_extension=init.auto_extension_enabled,
        enhancement=init.enhancement_enabled,
        single_clip=init.single_clip_mode,
        segment_cap=streaming.generation_segment_cap,
        history_size=streaming.prompt.history,
        can_enhance=services.prompts.can_enhance,
    )
