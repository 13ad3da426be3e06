"""The fMP4 encoder a session's stream gets, from the service config: one place, so the owner's
WebSocket and the session's viewers encode alike."""

from __future__ import annotations

from gpu.audio import AudioFormat
from rtc_server.config import ServiceConfig
from rtc_server.media.fmp4 import Fmp4Encoder

__all__ = ["stream_fmp4_encoder"]


def stream_fmp4_encoder(config: ServiceConfig, audio_format: AudioFormat | None) -> Fmp4Encoder:
    """An encoder at the configured size, rate and x264 settings; with an AAC track when the pool's
    backend makes sound (its format is known once the pool has started, before any session gets frames)."""
    sampling = config.default_request.sampling
    settings = config.websocket
    return Fmp4Encoder(
        width=sampling.width,
        height=sampling.height,
        fps=sampling.fps,
        crf=settings.crf,
        preset=settings.preset,
        profile=settings.profile,
        audio_format=audio_format,
    )
