"""The WebRTC side of a session: events to the ``control`` data channel, frames to the playout buffer.

A segment's frames enter the playout buffer chunk by chunk as they are made; the paced track
releases them at the stream's fps. Until its first frame is released, a segment can be taken
back whole (a newer prompt replaces it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

import numpy as np
from aiortc import RTCDataChannel

from gpu.audio import AudioFormat, split_by_frames
from rtc_server.media.track import PlayoutBuffer
from rtc_server.protocol import ServerMessage, serialize
from rtc_server.sink import CloseReason

__all__ = ["BufferedSegment", "WebRTCSink"]

logger = logging.getLogger(__name__)

CHANNEL_FLUSH_TIMEOUT_S = 1.0  # how long a closing session waits for queued control messages to leave
_FLUSH_POLL_S = 0.01
CHANNEL_SETTLE_S = 0.05  # grace after the channel buffer empties


class BufferedSegment:
    """One segment's frames in the playout buffer (a SegmentOutput), each with the audio it owns."""

    def __init__(self, buffer: PlayoutBuffer, *, fps: int = 24, audio_format: AudioFormat | None = None) -> None:
        self._buffer = buffer
        self._tag = buffer.new_tag()
        self._retracted = False
        self._fps = fps
        self._rate = audio_format.sample_rate if audio_format is not None else None
        self._put = 0  # frames of this segment put so far: where the next chunk's audio starts

    @property
    def delivered(self) -> bool:
        return self._buffer.released(self._tag)

    def put_frames(self, frames: np.ndarray, audio: np.ndarray | None = None) -> None:
        if self._retracted:
            return
        per_frame = None
        if audio is not None and self._rate is not None:
            per_frame = split_by_frames(audio, self._put, [1] * len(frames), self._fps, self._rate)
        self._buffer.put(self._tag, frames, per_frame)
        self._put += len(frames)

    async def finish(self) -> None:
        """Nothing to wait for: the frames are queued for the track."""

    def retract(self) -> bool:
        if self.delivered:
            return False
        self._retracted = True
        self._buffer.drop_from(self._tag)
        return True


class WebRTCSink:
    """Queues events until the control channel opens; look-ahead is measured in buffered frames."""

    def __init__(
        self,
        *,
        buffer: PlayoutBuffer,
        lookahead_frames: int,
        queue_limit: int,
        on_close: Callable[[CloseReason], Awaitable[None]],
        max_queued_event_bytes: int = 4 * 1024 * 1024,
        label: str = "",
        fps: int = 24,
        audio_format: AudioFormat | None = None,
    ) -> None:
        self._buffer = buffer
        self._fps = fps
        self._audio_format = audio_format
        self._max_event_bytes = max_queued_event_bytes
        self.on_backlog: Callable[[], None] | None = None  # the client reads nothing of the channel
        self._lookahead_frames = lookahead_frames
        self._pending: deque[str] = deque(maxlen=queue_limit)
        self._on_close: Callable[[CloseReason], Awaitable[None]] | None = on_close
        self.label = label
        self._channel: RTCDataChannel | None = None
        self._closed = False
        self._backlogged = False
        self._connected = asyncio.Event()

    @property
    def channel(self) -> RTCDataChannel | None:
        return self._channel

    def attach_channel(self, channel: RTCDataChannel) -> None:
        """Use ``channel`` for events; what was queued goes out as soon as it is open."""
        self._channel = channel
        if channel.readyState == "open":
            self._flush_pending()
        else:
            channel.on("open", self._flush_pending)

    def _flush_pending(self) -> None:
        channel = self._channel
        while self._pending and channel is not None and channel.readyState == "open":
            channel.send(self._pending.popleft())

    def send_event(self, message: ServerMessage) -> None:
        if self._closed or self._backlogged:
            return
        text = serialize(message)
        channel = self._channel
        if channel is not None and channel.readyState == "open" and not self._pending:
            if channel.bufferedAmount > self._max_event_bytes:
                # aiortc queues data-channel sends without bound while the peer's window is shut:
                # a client that stopped reading is ended, not fed more.
                self._backlog(channel.bufferedAmount)
                return
            channel.send(text)
            return
        if len(self._pending) == self._pending.maxlen:
            logger.warning("%s: control channel not open, dropping the oldest queued event", self.label)
        self._pending.append(text)

    def connected(self) -> None:
        """The peer's connection is up (called by the transport)."""
        self._connected.set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    def _backlog(self, queued: int) -> None:
        logger.info("%s: %d bytes of events wait for a client that reads nothing; dropping it", self.label, queued)
        self._backlogged = True  # nothing more is queued for it
        if self.on_backlog is not None:
            self.on_backlog()

    async def wait_for_room(self) -> None:
        await self._buffer.wait_for_room(self._lookahead_frames)

    def open_segment(self, segment_idx: int, *, num_frames: int) -> BufferedSegment:
        return BufferedSegment(self._buffer, fps=self._fps, audio_format=self._audio_format)

    async def drain(self) -> None:
        await self._buffer.wait_empty()

    async def close(self, reason: CloseReason) -> None:
        if self._closed:
            return
        if reason is not CloseReason.CLIENT_LEFT:
            await self._flush_channel()
        self._closed = True
        self._buffer.close()
        self._pending.clear()
        on_close, self._on_close = self._on_close, None
        self.on_backlog = None
        self._channel = None  # its listeners point back at the peer: let the whole session go at once
        if on_close is not None:
            await on_close(reason)

    async def _flush_channel(self) -> None:
        # aiortc queues data-channel sends inside SCTP; closing the peer at once would lose
        # the last events (stream_complete, session_timeout), so give them a moment to leave.
        channel = self._channel
        if channel is None or channel.readyState != "open":
            return
        deadline = time.monotonic() + CHANNEL_FLUSH_TIMEOUT_S
        while channel.bufferedAmount > 0 and time.monotonic() < deadline:
            await asyncio.sleep(_FLUSH_POLL_S)
        # bufferedAmount drops when SCTP hands the data to DTLS, not when it arrives.
        await asyncio.sleep(CHANNEL_SETTLE_S)
