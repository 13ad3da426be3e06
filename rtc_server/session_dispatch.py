"""What each client message does to a started session. Pure wiring: no I/O of its own."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from rtc_server import protocol as wire
from rtc_server.generation_policy import GenerationPolicy
from rtc_server.prompt_intake import PromptIntake
from rtc_server.segment_runner import SegmentRunner

__all__ = ["Handlers", "dispatch_table"]

Handlers = dict[type[Any], Callable[[Any], object]]


def dispatch_table(
    policy: GenerationPolicy,
    intake: PromptIntake,
    runner: SegmentRunner,
    *,
    spawn: Callable[[Coroutine[Any, Any, Any]], object],
    report_error: Callable[[wire.ErrorCode, str], None],
) -> Handlers:
    """Handlers by message type, once the session has started; ``spawn`` runs awaiting work on the side."""
    return {
        wire.SessionInitV2: lambda m: report_error("invalid_message", "session_init_v2 was already received"),
        wire.SegmentPromptSource: lambda m: spawn(intake.accept(m)),
        wire.SeedPromptsUpdated: lambda m: policy.set_curated(m.seed_prompts),
        wire.EnhancementUpdated: lambda m: setattr(policy, "enhancement", m.enabled),
        wire.AutoExtensionUpdated: lambda m: setattr(policy, "auto_extension", m.enabled),
        wire.LoopGenerationUpdated: lambda m: setattr(policy, "loop", m.enabled),
        wire.GenerationPausedUpdated: lambda m: setattr(policy, "paused", m.paused),
        wire.SnapshotState: lambda m: spawn(runner.send_snapshot()),
        wire.RewriteSeedPrompts: lambda m: spawn(intake.rewrite(m)),
    }
