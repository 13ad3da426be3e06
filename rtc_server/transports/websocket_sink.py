"""The WebSocket side of a session: JSON events as text frames, each segment as fMP4 binary frames.

One writer task sends everything in order. Look-ahead is measured against an
estimate of the client's playback position; a client that stops reading is
bounded by ``max_pending_segments``: beyond it whole segments are skipped and
the client is told with ``media_segment_skipped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from aiohttp import WSCloseCode, web

from rtc_server.media.fmp4 import Fmp4Encoder
from rtc_server.protocol import MediaInit, MediaSegmentComplete, MediaSegmentSkipped, ServerMessage, serialize
from rtc_server.sink import CloseReason

__all__ = ["WebSocketSink", "close_code_for"]

logger = logging.getLogger(__name__)

_CLOSE_CODES: dict[CloseReason, int] = {
    CloseReason.NORMAL: WSCloseCode.OK,
    CloseReason.TIMEOUT: WSCloseCode.OK,
    CloseReason.ERROR: WSCloseCode.INTERNAL_ERROR,
    CloseReason.REJECTED: WSCloseCode.TRY_AGAIN_LATER,
    CloseReason.INVALID: WSCloseCode.UNSUPPORTED_DATA,
    CloseReason.SHUTDOWN: WSCloseCode.GOING_AWAY,
    CloseReason.CLIENT_LEFT: WSCloseCode.OK,
}
MAX_PACING_SLEEP_S = 0.25  # re-check the pacing estimate at least this often


def close_code_for(reason: CloseReason) -> int:
    return int(_CLOSE_CODES[reason])


@dataclass(frozen=True)
class _SegmentSent:
    """Queue marker: every byte of one segment has been handed to the socket."""

    segment_idx: int


_Item = str | bytes | _SegmentSent


class WebSocketSink:
    """Sends events and fMP4 segments over one WebSocket, in protocol order."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        *,
        encoder_factory: Callable[[], Fmp4Encoder],
        lookahead_segments: int,
        max_pending_segments: int,
        label: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ws = ws
        self._encoder_factory = encoder_factory
        self._encoder: Fmp4Encoder | None = None
        self._lookahead_segments = lookahead_segments
        self._max_pending = max_pending_segments
        self.label = label
        self._clock = clock
        self.stream_id = uuid.uuid4().hex
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._pending_segments = 0
        self._closed = False
        self._writer: asyncio.Task[None] | None = None
        self._anchor: float | None = None  # wall time at which the client's playback was at media time 0
        self._media_end_ms = 0.0
        self._segment_ms = 0.0
        self.segments_sent = 0
        self.segments_skipped = 0

    def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_forever(), name=f"ws-writer-{self.label}")

    # -- SessionSink ----------------------------------------------------

    def send_event(self, message: ServerMessage) -> None:
        self._enqueue(serialize(message))

    async def wait_for_room(self) -> None:
        """Wait until the client's estimated buffer holds at most ``lookahead_segments`` segments."""
        while not self._closed:
            segment_ms = self._segment_ms
            ahead_ms = self._buffered_ahead_ms()
            excess_ms = ahead_ms - self._lookahead_segments * segment_ms
            if segment_ms == 0 or excess_ms <= 0:
                return
            await asyncio.sleep(min(excess_ms / 1000.0, MAX_PACING_SLEEP_S))

    async def send_segment(self, segment_idx: int, frames: np.ndarray) -> None:
        if self._closed:
            return
        if self._pending_segments >= self._max_pending:
            # The client is not reading: skip the whole segment rather than grow memory.
            # The encoder timeline does not advance, so the client's media stays gap-free.
            self.segments_skipped += 1
            logger.info("%s: client behind by %d segments, skipping segment %d", self.label, self._pending_segments, segment_idx)
            self._enqueue(serialize(MediaSegmentSkipped(segment_idx=segment_idx, stream_id=self.stream_id)))
            return
        loop = asyncio.get_running_loop()
        if self._encoder is None:
            self._encoder = await loop.run_in_executor(None, self._encoder_factory)
        stream = self._encoder.encode_segment_iter(frames)
        if self._anchor is None:
            self._anchor = self._clock()
        self._media_end_ms = stream.pts_base_ms + stream.duration_ms
        self._segment_ms = stream.duration_ms
        self._pending_segments += 1
        self._enqueue(serialize(MediaInit(segment_idx=segment_idx, mime=stream.mime, stream_id=self.stream_id)))

        def produce() -> None:
            # Runs in a worker thread. Fragments go out as the encoder makes them, so a segment's
            # first bytes leave after one frame's encoding rather than the whole segment's. The
            # thread owns the stream start to finish: a cancelled session cannot close it mid-frame.
            with stream:
                for chunk in stream:
                    if self._closed:
                        return
                    loop.call_soon_threadsafe(self._enqueue, chunk)

        await loop.run_in_executor(None, produce)
        self._enqueue(
            serialize(
                MediaSegmentComplete(
                    segment_idx=segment_idx,
                    stream_id=self.stream_id,
                    chunks=stream.media_chunks,
                    duration_ms=round(stream.duration_ms, 3),
                    pts_base_ms=round(stream.pts_base_ms, 3),
                )
            )
        )
        self._enqueue(_SegmentSent(segment_idx))

    async def drain(self) -> None:
        while self._queue and not self._closed:
            self._idle.clear()
            await self._idle.wait()

    async def close(self, reason: CloseReason) -> None:
        if self._closed:
            return
        if reason is not CloseReason.CLIENT_LEFT:
            await self.drain()
        self._closed = True
        self._wakeup.set()
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if not self._ws.closed:
            await self._ws.close(code=close_code_for(reason))

    # -- internals -------------------------------------------------------

    def _buffered_ahead_ms(self) -> float:
        if self._anchor is None:
            return 0.0
        played_ms = (self._clock() - self._anchor) * 1000.0
        if played_ms > self._media_end_ms:
            # The client ran dry (paused stream, slow generation) and waits at the end of its
            # buffer; playback resumes from there, so move the anchor with it.
            self._anchor = self._clock() - self._media_end_ms / 1000.0
            played_ms = self._media_end_ms
        return self._media_end_ms - played_ms

    def _enqueue(self, item: _Item) -> None:
        if self._closed:
            return
        self._queue.append(item)
        self._idle.clear()
        self._wakeup.set()

    async def _write_forever(self) -> None:
        try:
            while True:
                while not self._queue:
                    self._idle.set()
                    self._wakeup.clear()
                    await self._wakeup.wait()
                item = self._queue[0]
                if isinstance(item, str):
                    await self._ws.send_str(item)
                elif isinstance(item, bytes):
                    await self._ws.send_bytes(item)
                else:
                    self._pending_segments -= 1
                    self.segments_sent += 1
                self._queue.popleft()
        except (ConnectionResetError, RuntimeError) as exc:
            # The socket went away under us; the read loop sees the close and ends the session.
            logger.info("%s: writer stopped: %s", self.label, exc)
        finally:
            self._idle.set()
