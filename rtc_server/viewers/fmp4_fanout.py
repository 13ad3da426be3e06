"""One session's fMP4 viewers: its segments encoded once, the same bytes queued to every viewer.

Where the media comes from:

- the owner is on the WebSocket: its sink's own fMP4 (``WebSocketSink.media_tap``): the very bytes the
  owner gets, nothing encoded again;
- the owner is on WebRTC: one fMP4 encoder for all the session's viewers, fed from the segment's
  frames by a fan-out SegmentOutput (the owner's output and the hub's); it runs only while a viewer
  is there (made for the first segment one is waiting for, closed once the last has left).

A viewer starts at the next segment opened after it joined: ``ltx2_segment_start``, ``media_init``,
the init chunk, the fragments, ``media_segment_complete``, ``ltx2_segment_complete``; at the session's
end ``ltx2_stream_complete`` and close 1000. Each viewer has its own bounded queue and writer: one
that stops reading is dropped once its queue holds ``max_queued_bytes``, and nobody else waits for it.

Subscribers (``attach``: a session's recording) get every media item from the next segment on, as
viewers do, and keep the hub's own encoder running as viewers do; they are never dropped, keep getting
media after the session ends until the hub's encoding in flight is over (``settled``), and hear of a
segment taken back after its encoding began (``retracted``: its owner never showed it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Protocol

import numpy as np
from aiohttp import WSCloseCode, web

from rtc_server.media.fmp4 import Fmp4Encoder, Fmp4SegmentStream
from rtc_server.media.frame_feed import FrameFeed
from rtc_server.media.shared_media import SharedMedia
from rtc_server.protocol import (
    MediaInit,
    MediaSegmentComplete,
    ServerMessage,
    StreamComplete,
    StreamCompleteReason,
    serialize,
)
from rtc_server.sink import SegmentOutput, SessionSink, TeeOutput
from rtc_server.transports.websocket_sink import WebSocketSink
from rtc_server.viewers.paced_feed import PacedFeed
from rtc_server.viewers.watch_tokens import WatchToken

__all__ = ["MediaSubscriber", "WatchFull", "WatchHub", "Watcher"]

logger = logging.getLogger(__name__)

_END = object()  # queue marker: everything before it is sent, then the socket closes with 1000


class MediaSubscriber(Protocol):
    """Something that takes a session's media as the viewers get it (a recording)."""

    def media(self, segment_idx: int, item: str | bytes) -> None:
        """One item of a segment's media: ``media_init`` (text), the init chunk, fragments, ``media_segment_complete``."""
        ...

    def retracted(self, segment_idx: int) -> None:
        """The segment was taken back after its media began (its owner never showed it)."""
        ...


class WatchFull(Exception):
    """The session has ``max_per_session`` viewers already."""


class Watcher:
    """One viewer's socket: a bounded queue of text and binary frames and the task that writes them."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        *,
        max_queued_bytes: int,
        label: str,
        transport: asyncio.BaseTransport | None = None,
    ) -> None:
        self._ws = ws
        self._transport = transport
        self._max_bytes = max_queued_bytes
        self.label = label
        self.live_from: int | None = None  # the first segment it gets (None: waiting for the next one)
        self._queue: deque[str | bytes | object] = deque()
        self._queued_bytes = 0
        self._wakeup = asyncio.Event()
        self.dropped = False
        self._ending = False
        self._writer: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_forever(), name=f"watch-writer-{self.label}")

    def offer(self, item: str | bytes) -> None:
        """Queue ``item``; a viewer whose queue is full is dropped (its connection aborted)."""
        if self.dropped or self._ending:
            return
        self._queued_bytes += len(item)
        if self._queued_bytes > self._max_bytes:
            self.drop()
            return
        self._queue.append(item)
        self._wakeup.set()

    def end(self) -> None:
        """Send what is queued, then close with 1000."""
        if not self._ending:
            self._ending = True
            self._queue.append(_END)
            self._wakeup.set()

    def drop(self) -> None:
        """Give up on a viewer that stopped reading: not even a close frame would get through."""
        if self.dropped:
            return
        self.dropped = True
        logger.info("%s: %d bytes wait for a viewer that reads nothing; dropping it", self.label, self._queued_bytes)
        self._queue.clear()
        self._queued_bytes = 0
        if isinstance(self._transport, asyncio.Transport):
            self._transport.abort()
        if self._writer is not None:
            self._writer.cancel()

    async def close(self) -> None:
        """Stop the writer (idempotent)."""
        writer, self._writer = self._writer, None
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _write_forever(self) -> None:
        try:
            while True:
                while not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                item = self._queue.popleft()
                if item is _END:
                    await self._ws.close(code=WSCloseCode.OK)
                    return
                if isinstance(item, str):
                    await self._ws.send_str(item)
                elif isinstance(item, bytes):
                    await self._ws.send_bytes(item)
                self._queued_bytes -= len(item) if isinstance(item, str | bytes) else 0
        except (ConnectionError, RuntimeError) as exc:
            logger.info("%s: writer stopped: %s", self.label, exc)


class _HubSegment:
    """One segment encoded by the hub's own encoder as its frames arrive (a SegmentOutput)."""

    def __init__(self, hub: WatchHub, segment_idx: int, num_frames: int) -> None:
        self.hub = hub
        self.segment_idx = segment_idx
        self.num_frames = num_frames
        self._frames = FrameFeed()
        self._task: asyncio.Task[None] | None = None
        self._retracted = False

    @property
    def delivered(self) -> bool:
        return self._task is not None

    def put_frames(self, frames: np.ndarray, audio: np.ndarray | None = None) -> None:
        if self._retracted:
            return
        if self._task is None:
            self._task = self.hub.begin_encoding(self)
        self._frames.put(frames, audio)

    def end_frames(self) -> None:
        """No more frames (finished, or abandoned): the encoder ends the segment with what it has."""
        self._frames.end()

    async def finish(self) -> None:
        self.end_frames()

    def retract(self) -> bool:
        if self._task is not None:
            self.end_frames()  # its encoding had begun: end it with what it has
            self.hub.retracted(self.segment_idx)
            return False
        self._retracted = True
        return True

    def frames(self) -> FrameFeed:
        return self._frames


class WatchHub:
    """The viewers of one session (see the module docstring)."""

    def __init__(self, *, token: WatchToken, max_viewers: int, max_queued_bytes: int, label: str = "") -> None:
        self.token = token
        self.max_viewers = max_viewers
        self.max_queued_bytes = max_queued_bytes
        self.label = label
        self.stream_id = uuid.uuid4().hex  # of the hub's own encoding (a WebSocket owner's bytes keep theirs)
        self._watchers: set[Watcher] = set()
        self._subscribers: set[MediaSubscriber] = set()
        self._reserved = 0
        self._closed = False
        self._encoder_factory: Callable[[], Fmp4Encoder] | None = None
        self._executor: Executor | None = None
        self._encoder: Fmp4Encoder | None = None
        self._encoding: asyncio.Task[None] | None = None  # the hub's newest segment being encoded
        self._segment: _HubSegment | None = None  # the newest segment fed to the hub's encoder
        self._tapped: WebSocketSink | None = None
        # The WebRTC owner's media, encoded once per tier (WHEP viewers subscribe to it); None otherwise.
        self.rtc_media: SharedMedia | None = None
        # WHEP viewers' own paced media when the owner is not on WebRTC (made by the WHEP service).
        self.paced_feed: PacedFeed | None = None
        self._close_listeners: list[Callable[[], None]] = []

    def __len__(self) -> int:
        return len(self._watchers)

    @property
    def reserved(self) -> int:
        """Places held beyond the fMP4 watchers: viewers connecting, and every WHEP viewer."""
        return self._reserved

    @property
    def closed(self) -> bool:
        return self._closed

    def use_encoder(self, factory: Callable[[], Fmp4Encoder], executor: Executor) -> None:
        """How the hub encodes when the owner's transport has no fMP4 of its own (WebRTC)."""
        self._encoder_factory, self._executor = factory, executor

    # -- viewers ------------------------------------------------------------------------------

    def reserve(self) -> None:
        """Hold a place for a viewer about to connect; WatchFull when there is none."""
        if len(self._watchers) + self._reserved >= self.max_viewers:
            raise WatchFull(f"this session has {self.max_viewers} viewers already")
        self._reserved += 1

    def add(self, watcher: Watcher) -> None:
        """The viewer whose place was reserved joins (it starts at the next segment)."""
        self._reserved -= 1
        if self._closed:
            watcher.end()
        else:
            self._watchers.add(watcher)
        watcher.start()

    def unreserve(self) -> None:
        self._reserved -= 1

    def remove(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)
        if not self._watchers and not self._subscribers:
            self._release_encoder()

    # -- subscribers --------------------------------------------------------------------------

    def attach(self, subscriber: MediaSubscriber) -> None:
        """``subscriber`` gets the media from the next segment on (even before any viewer joins)."""
        if not self._closed:
            self._subscribers.add(subscriber)

    def detach(self, subscriber: MediaSubscriber) -> None:
        """``subscriber`` gets nothing more."""
        self._subscribers.discard(subscriber)
        if not self._watchers and not self._subscribers:
            self._release_encoder()

    async def settled(self) -> None:
        """Return once the hub's own encoding in flight, if any, is over (its media delivered)."""
        while (task := self._encoding) is not None:
            await asyncio.wait({task})
            if self._encoding is task:  # its done callback has not run yet
                await asyncio.sleep(0)

    def retracted(self, segment_idx: int) -> None:
        for subscriber in list(self._subscribers):
            subscriber.retracted(segment_idx)

    # -- what the session feeds -----------------------------------------------------------------

    def open_segment(self, sink: SessionSink, segment_idx: int, *, num_frames: int) -> SegmentOutput:
        """The session opens a segment: the owner's output, fanned out to the viewers' encoder when
        viewers wait and the owner's transport does not make fMP4 itself, and teed to the paced feed
        of WHEP viewers when the owner is not on WebRTC."""
        output = self._open_fmp4_segment(sink, segment_idx, num_frames=num_frames)
        feed = self.paced_feed
        return feed.tee(output) if feed is not None and not self._closed else output

    def _open_fmp4_segment(self, sink: SessionSink, segment_idx: int, *, num_frames: int) -> SegmentOutput:
        owner = sink.open_segment(segment_idx, num_frames=num_frames)
        if isinstance(sink, WebSocketSink) and self._tapped is not sink:
            self._tapped = sink
            sink.media_tap = self.media
        waiting = self._live(segment_idx)
        if not waiting or self._tapped is sink or self._encoder_factory is None:
            return owner
        self._segment = _HubSegment(self, segment_idx, num_frames)
        return TeeOutput(owner, self._segment)

    def _live(self, segment_idx: int) -> bool:
        """Viewers waiting for a segment start with this one; True when any viewer is there."""
        for watcher in self._watchers:
            if watcher.live_from is None:
                watcher.live_from = segment_idx
        return bool(self._watchers or self._subscribers) and not self._closed

    def event(self, message: ServerMessage, segment_idx: int) -> None:
        """A segment's event (``ltx2_segment_start`` / ``_complete``) for the viewers watching it; while
        the hub's encoder is still at work it follows that media, as it does the owner's."""
        text = serialize(message)
        pending = self._encoding
        if pending is None:
            self.media(segment_idx, text)
        else:
            pending.add_done_callback(lambda _: self.media(segment_idx, text))

    def media(self, segment_idx: int, item: str | bytes) -> None:
        """One item of a segment's media (``media_init``, a chunk, ``media_segment_complete``)."""
        for subscriber in list(self._subscribers):
            subscriber.media(segment_idx, item)
        if self._closed:
            return
        for watcher in list(self._watchers):
            if watcher.live_from is not None and watcher.live_from <= segment_idx:
                watcher.offer(item)
            if watcher.dropped:
                self.remove(watcher)

    def on_close(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` when the session ends (WHEP viewers leave then; at once if it has); returns
        what forgets it (a viewer that left before the end)."""
        if self._closed:
            listener()
        else:
            self._close_listeners.append(listener)

        def forget() -> None:
            with contextlib.suppress(ValueError):
                self._close_listeners.remove(listener)

        return forget

    def close(self, reason: StreamCompleteReason) -> None:
        """The session ended: every viewer gets ``ltx2_stream_complete`` and close 1000 (idempotent)."""
        if self._closed:
            return
        self._closed = True
        listeners, self._close_listeners = self._close_listeners, []
        for listener in listeners:
            listener()
        text = serialize(StreamComplete(reason=reason))
        for watcher in self._watchers:
            watcher.offer(text)
            watcher.end()
        if self._segment is not None:
            self._segment.end_frames()  # a segment cut short: its encoding thread must not wait for more
        self._release_encoder()

    # -- the hub's own encoder --------------------------------------------------------------------

    def begin_encoding(self, segment: _HubSegment) -> asyncio.Task[None]:
        previous = self._encoding
        task = asyncio.create_task(self._encode(segment, previous), name=f"watch-encode-{self.label}-{segment.segment_idx}")
        self._encoding = task
        task.add_done_callback(self._encoded)
        return task

    def _encoded(self, task: asyncio.Task[None]) -> None:
        if self._encoding is task:
            self._encoding = None
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s: encoding for viewers failed", self.label, exc_info=task.exception())
        if not (self._watchers or self._subscribers) or self._closed:
            self._release_encoder()

    async def _encode(self, segment: _HubSegment, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:  # one encoder, one segment at a time
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(previous)
        factory, executor = self._encoder_factory, self._executor
        if self._closed or factory is None or executor is None:
            segment.end_frames()
            return
        loop = asyncio.get_running_loop()
        if self._encoder is None:
            self._encoder = await loop.run_in_executor(executor, factory)
        stream = self._encoder.encode_stream(segment.frames(), num_frames=segment.num_frames)
        idx = segment.segment_idx
        self.media(idx, serialize(MediaInit(segment_idx=idx, mime=stream.mime, stream_id=self.stream_id)))
        await loop.run_in_executor(executor, self._produce, loop, idx, stream)
        complete = MediaSegmentComplete(
            segment_idx=idx,
            stream_id=self.stream_id,
            chunks=stream.media_chunks,
            duration_ms=round(stream.duration_ms, 3),
            pts_base_ms=round(stream.pts_base_ms, 3),
        )
        self.media(idx, serialize(complete))

    def _produce(self, loop: asyncio.AbstractEventLoop, segment_idx: int, stream: Fmp4SegmentStream) -> None:
        # In the encoding thread, which owns the stream start to finish.
        with stream:
            for chunk in stream:
                loop.call_soon_threadsafe(self.media, segment_idx, chunk)

    def _release_encoder(self) -> None:
        if self._encoding is None and self._encoder is not None:
            encoder, self._encoder = self._encoder, None
            encoder.close()
