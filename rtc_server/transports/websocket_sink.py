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
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from aiohttp import WSCloseCode, web

from rtc_server.media.fmp4 import Fmp4Encoder, Fmp4SegmentStream
from rtc_server.media.frame_feed import FrameChunk, FrameFeed
from rtc_server.protocol import MediaInit, MediaSegmentComplete, MediaSegmentSkipped, ServerMessage, serialize
from rtc_server.sink import CloseReason

__all__ = ["StreamedSegment", "WebSocketSink", "close_code_for"]

logger = logging.getLogger(__name__)

_CLOSE_CODES: dict[CloseReason, int] = {
    CloseReason.NORMAL: WSCloseCode.OK,
    CloseReason.TIMEOUT: WSCloseCode.OK,
    CloseReason.ERROR: WSCloseCode.INTERNAL_ERROR,
    CloseReason.REJECTED: WSCloseCode.TRY_AGAIN_LATER,
    CloseReason.INVALID: WSCloseCode.UNSUPPORTED_DATA,
    # 1012 "service restart": this server is going away, the session is not over. A client resumes it
    # elsewhere (session_init_v2.resume_session); 1013 already means "full, try later".
    CloseReason.SHUTDOWN: WSCloseCode.SERVICE_RESTART,
    CloseReason.CLIENT_LEFT: WSCloseCode.OK,
}
MAX_PACING_SLEEP_S = 0.25  # re-check the pacing estimate at least this often
CLOSE_DRAIN_TIMEOUT_S = 2.0  # how long a closing session waits for queued data to leave


def close_code_for(reason: CloseReason) -> int:
    return int(_CLOSE_CODES[reason])


@dataclass(frozen=True)
class _SegmentSent:
    """Queue marker: every byte of one segment has been handed to the socket."""

    segment_idx: int
    frames: int


_Item = str | bytes | _SegmentSent


class StreamedSegment:
    """One segment encoded to fMP4 as its frames (and their audio) arrive (a SegmentOutput).

    Its media starts leaving with the first frame put, so it can be taken back only before that.
    """

    def __init__(self, sink: WebSocketSink, segment_idx: int, num_frames: int) -> None:
        self._sink = sink
        self._segment_idx = segment_idx
        self._num_frames = num_frames
        self._frames = FrameFeed()
        self._task: asyncio.Task[None] | None = None
        self._retracted = False

    @property
    def delivered(self) -> bool:
        return self._task is not None

    def put_frames(self, frames: np.ndarray, audio: np.ndarray | None = None) -> None:
        if self._retracted or self._sink.closed:
            return
        if self._task is None:
            self._task = self._sink.begin_stream(self)
        self._frames.put(frames, audio)

    async def finish(self) -> None:
        if self._task is None:
            return
        self._frames.end()
        await self._task

    def retract(self) -> bool:
        if self._task is not None:
            return False
        self._retracted = True
        return True

    def abandon(self) -> None:
        """End the frames early (the session is closing): the encoder stops waiting for more."""
        self._frames.end()

    def frames(self) -> FrameFeed:
        """The frames with their audio as they are put; ends at finish or abandon. Iterated in the
        encoder's thread (the encoder takes the pairs as they are, and ignores audio it has no track for)."""
        return self._frames

    @property
    def segment_idx(self) -> int:
        return self._segment_idx

    @property
    def num_frames(self) -> int:
        return self._num_frames


class WebSocketSink:
    """Sends events and fMP4 segments over one WebSocket, in protocol order."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        *,
        encoder_factory: Callable[[], Fmp4Encoder],
        executor: Executor,
        lookahead_segments: int,
        max_pending_segments: int,
        stalled_client_timeout_s: float = 30.0,
        max_queued_event_bytes: int = 4 * 1024 * 1024,
        transport: asyncio.Transport | None = None,
        on_segment_sent: Callable[[int], None] | None = None,
        on_encoded: Callable[[float], None] | None = None,
        label: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ws = ws
        self._encoder_factory = encoder_factory
        # Encoding threads wait for frames while they are generated: they get their own pool, so
        # they can never starve the default executor (aiortc's encoders, file I/O, the safety filter).
        self._executor = executor
        self._encoder: Fmp4Encoder | None = None
        self._lookahead_segments = lookahead_segments
        self._max_pending = max_pending_segments
        self._stall_timeout_s = stalled_client_timeout_s
        self._transport = transport
        self.on_segment_sent = on_segment_sent
        self.on_encoded = on_encoded
        self._bytes_written = 0  # payload bytes handed to the transport
        self._max_event_bytes = max_queued_event_bytes
        self._event_bytes = 0  # text frames queued or parked, not yet handed to the socket
        self._overflowed = False
        self._watchdog: asyncio.Task[None] | None = None
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
        self._paced_end_ms = 0.0  # media the client would have by now, counting skipped segments
        self._segment_ms = 0.0
        self._open_segment = False
        self._parked: list[str] = []  # events held back while a segment's media is being queued
        self._current: StreamedSegment | None = None  # the segment whose frames are arriving
        self.segments_sent = 0
        self.segments_skipped = 0
        # Each item of each segment's media (media_init, chunks, media_segment_complete) as it is
        # queued for the client, with the segment's index: what the session's viewers get (rtc_server.viewers).
        self.media_tap: Callable[[int, str | bytes], None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def begin_stream(self, segment: StreamedSegment) -> asyncio.Task[None]:
        """Start sending ``segment``'s media; events sent meanwhile wait until it is all queued."""
        self._open_segment = True
        self._current = segment
        task = asyncio.create_task(
            self._send_stream(segment.segment_idx, segment.num_frames, segment.frames()),
            name=f"ws-segment-{self.label}-{segment.segment_idx}",
        )
        task.add_done_callback(lambda _: self._forget(segment))
        return task

    def _forget(self, segment: StreamedSegment) -> None:
        if self._current is segment:
            self._current = None
            self._idle.set()  # a drain waiting for the segment looks again
        self._release_encoder()

    def _release_encoder(self) -> None:
        """Once closed and no segment is being encoded, free the encoder now: its AAC track holds a
        resampler thread per core, which would otherwise wait for a garbage collection."""
        if self._closed and self._current is None and self._encoder is not None:
            encoder, self._encoder = self._encoder, None
            encoder.close()

    def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_forever(), name=f"ws-writer-{self.label}")
        if self._watchdog is None and self._transport is not None:
            self._watchdog = asyncio.create_task(self._watch_progress(), name=f"ws-watchdog-{self.label}")

    # -- SessionSink ----------------------------------------------------

    def send_event(self, message: ServerMessage) -> None:
        # A segment's media goes out contiguously (media_init, init, fragments, complete);
        # events that arrive meanwhile follow it.
        text = serialize(message)
        if self._open_segment:
            self._parked.append(text)
            self._count_event_bytes(len(text))
        else:
            self._enqueue(text)

    async def wait_connected(self) -> None:
        """A socket is connected from the start."""

    async def wait_for_room(self) -> None:
        """Wait until the client's estimated buffer holds at most ``lookahead_segments`` segments."""
        while not self._closed:
            segment_ms = self._segment_ms
            ahead_ms = self._buffered_ahead_ms()
            excess_ms = ahead_ms - self._lookahead_segments * segment_ms
            if segment_ms == 0 or excess_ms <= 0:
                return
            await asyncio.sleep(min(excess_ms / 1000.0, MAX_PACING_SLEEP_S))

    def open_segment(self, segment_idx: int, *, num_frames: int) -> StreamedSegment:
        return StreamedSegment(self, segment_idx, num_frames)

    async def _send_stream(self, segment_idx: int, num_frames: int, frames: Iterable[FrameChunk]) -> None:
        """Encode one segment as its frames arrive and queue its media, contiguous, in protocol order."""
        try:
            if self._pending_segments >= self._max_pending:
                self._skip(segment_idx)
                return
            loop = asyncio.get_running_loop()
            if self._encoder is None:
                self._encoder = await loop.run_in_executor(self._executor, self._encoder_factory)
            stream = self._encoder.encode_stream(frames, num_frames=num_frames)
            if self._anchor is None:
                self._anchor = self._clock()
            # Paced by the segment's declared length: its frames are still being made.
            self._segment_ms = num_frames * 1000.0 / self._encoder.fps
            self._paced_end_ms += self._segment_ms
            self._pending_segments += 1
            self._emit(segment_idx, serialize(MediaInit(segment_idx=segment_idx, mime=stream.mime, stream_id=self.stream_id)))
            encode_s = await loop.run_in_executor(self._executor, self._produce, loop, segment_idx, stream)
            if self.on_encoded is not None:
                self.on_encoded(encode_s)
            self._emit(
                segment_idx,
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
            self._enqueue(_SegmentSent(segment_idx, stream.num_frames))
        finally:
            self._open_segment = False
            parked, self._parked = self._parked, []
            self._count_event_bytes(-sum(len(text) for text in parked))
            for text in parked:
                self._enqueue(text)

    def _emit(self, segment_idx: int, item: str | bytes) -> None:
        self._enqueue(item)
        if self.media_tap is not None:
            self.media_tap(segment_idx, item)

    def _produce(self, loop: asyncio.AbstractEventLoop, segment_idx: int, stream: Fmp4SegmentStream) -> float:
        # Runs in a worker thread, which owns the stream start to finish (a cancelled session
        # cannot close it mid-frame). Fragments go out as the encoder makes them, each as soon
        # as its frame has been generated and encoded.
        started = time.perf_counter()
        with stream:
            for chunk in stream:
                if self._closed:
                    break
                loop.call_soon_threadsafe(self._emit, segment_idx, chunk)
        return time.perf_counter() - started

    def _skip(self, segment_idx: int) -> None:
        # The client is not reading: skip the whole segment rather than grow memory. The
        # encoder timeline does not advance, so the client's media stays gap-free.
        self.segments_skipped += 1
        self._paced_end_ms += self._segment_ms  # keep generating at the stream's pace, not faster
        logger.info("%s: client behind by %d segments, skipping segment %d", self.label, self._pending_segments, segment_idx)
        self._enqueue(serialize(MediaSegmentSkipped(segment_idx=segment_idx, stream_id=self.stream_id)))

    async def drain(self) -> None:
        """Wait until the segment being sent and everything queued has been handed to the socket."""
        while (self._queue or self._current is not None) and not self._closed:
            self._idle.clear()
            await self._idle.wait()

    async def close(self, reason: CloseReason) -> None:
        if self._closed:
            return
        if self._current is not None:
            self._current.abandon()  # no more frames are coming: let its encoder finish now
        if reason is not CloseReason.CLIENT_LEFT:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drain(), CLOSE_DRAIN_TIMEOUT_S)
        self._closed = True
        self._release_encoder()  # else the segment being encoded releases it when it ends
        self._wakeup.set()
        for task in (self._watchdog, self._writer):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not self._ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._ws.close(code=close_code_for(reason))

    # -- internals -------------------------------------------------------

    def _buffered_ahead_ms(self) -> float:
        if self._anchor is None:
            return 0.0
        played_ms = (self._clock() - self._anchor) * 1000.0
        if played_ms > self._paced_end_ms:
            # The client ran dry (paused stream, slow generation) and waits at the end of its
            # buffer; playback resumes from there, so move the anchor with it.
            self._anchor = self._clock() - self._paced_end_ms / 1000.0
            played_ms = self._paced_end_ms
        return self._paced_end_ms - played_ms

    async def _watch_progress(self) -> None:
        """Drop a client that has accepted no data for the stall timeout while data waits for it."""
        assert self._transport is not None
        transport = self._transport
        flushed = 0
        last_progress = self._clock()
        while not transport.is_closing():
            await asyncio.sleep(min(1.0, self._stall_timeout_s / 4))
            waiting = transport.get_write_buffer_size()
            now_flushed = self._bytes_written - waiting
            if waiting == 0 or now_flushed > flushed:
                flushed, last_progress = now_flushed, self._clock()
            elif self._clock() - last_progress > self._stall_timeout_s:
                logger.info("%s: client accepted nothing for %.0fs, disconnecting", self.label, self._stall_timeout_s)
                # Not even a close frame would get through: drop the TCP connection, so the
                # read loop ends and the session is released.
                transport.abort()
                return

    def _count_event_bytes(self, change: int) -> None:
        self._event_bytes += change
        if self._event_bytes > self._max_event_bytes and not self._overflowed:
            # Events pile up only when the client has stopped reading (media is bounded by
            # skipping segments): end it now rather than hold more of its backlog.
            self._overflowed = True
            logger.info("%s: %d bytes of events wait for a client that reads nothing; dropping it", self.label, self._event_bytes)
            self._queue.clear()
            self._parked.clear()
            self._event_bytes = 0
            if self._transport is not None:
                self._transport.abort()

    def _enqueue(self, item: _Item) -> None:
        if self._closed or self._overflowed:
            return
        if isinstance(item, str):
            self._count_event_bytes(len(item))
            if self._overflowed:
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
                    self._bytes_written += len(item)
                    self._event_bytes -= len(item)
                elif isinstance(item, bytes):
                    await self._ws.send_bytes(item)
                    self._bytes_written += len(item)
                else:
                    self._pending_segments -= 1
                    self.segments_sent += 1
                    if self.on_segment_sent is not None:
                        self.on_segment_sent(item.frames)
                if self._queue and self._queue[0] is item:  # an overflow may have emptied it meanwhile
                    self._queue.popleft()
        except (ConnectionError, RuntimeError) as exc:
            # The socket went away under us; the read loop sees the close and ends the session.
            logger.info("%s: writer stopped: %s", self.label, exc)
        finally:
            self._idle.set()
