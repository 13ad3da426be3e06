"""WebRTC media for the viewers of a session whose owner is not on WebRTC (the WebSocket's fMP4).

Such a session has no paced track to share: the feed keeps its own playout buffer, filled by a tee of
each segment the owner gets (from the first segment opened after the feed was made), and its own
``SharedMedia`` pacing it at the stream's fps, encoded once per tier for every WHEP viewer, with the
sound on the same clock. The owner's output decides what is delivered and what is taken back; the
feed only follows. The owner's WebSocket paces generation to its client's buffer, so the feed's
buffer stays near the look-ahead; a segment that would take it past ``max_buffered_frames`` (a
client reading far ahead) is left out for viewers rather than delay them.
"""

from __future__ import annotations

from gpu.audio import AudioFormat
from rtc_server.config import WebRTCConfig
from rtc_server.media.audio_track import AudioTimeline, PacedAudioTrack
from rtc_server.media.shared_media import SharedMedia
from rtc_server.media.track import PacedVideoTrack, PlayoutBuffer
from rtc_server.sink import SegmentOutput, TeeOutput
from rtc_server.transports.webrtc_sink import BufferedSegment

__all__ = ["PacedFeed"]


class PacedFeed:
    """The paced, shared WebRTC media of a non-WebRTC owner's session (see the module docstring)."""

    def __init__(
        self,
        *,
        fps: int,
        audio_format: AudioFormat | None,
        webrtc: WebRTCConfig,
        max_buffered_frames: int,
        label: str = "",
    ) -> None:
        self._fps = fps
        self._audio_format = audio_format
        self._max_buffered = max_buffered_frames
        self.buffer = PlayoutBuffer()
        timeline = AudioTimeline(audio_format, fps=fps) if audio_format is not None else None
        self.media = SharedMedia(
            PacedVideoTrack(self.buffer, fps=fps, audio=timeline),
            PacedAudioTrack(timeline) if timeline is not None else None,
            fps=fps,
            bitrate=webrtc.start_bitrate,
            min_bitrate=webrtc.min_bitrate,
            max_bitrate=webrtc.max_bitrate,
            label=label,
        )
        self.segments_left_out = 0

    def tee(self, owner: SegmentOutput) -> SegmentOutput:
        """The segment's output for the owner and (room permitting) the feed."""
        if self.media.closed:
            return owner
        if len(self.buffer) > self._max_buffered:
            self.segments_left_out += 1
            return owner
        return TeeOutput(owner, BufferedSegment(self.buffer, fps=self._fps, audio_format=self._audio_format))

    async def close(self) -> None:
        """Stop pacing and end every viewer's track (idempotent)."""
        self.buffer.close()
        await self.media.close()
