"""Session recording: a session's fMP4 packets remuxed, never re-encoded, into one MP4 per recording.

With ``streaming.recording_dir`` every session is recorded from its start; its owner turns recording
off and on again with ``recording_updated{enabled}`` (each time on: a new file). Where the media comes
from: the session's WatchHub (rtc_server.viewers.fmp4_fanout), whose subscriber a recording is. For
an owner on the WebSocket those are the very bytes the owner gets; for an owner on WebRTC, the hub's
own fMP4 encoding, which runs while a recording (or a viewer) is there.

One recording (:class:`Recorder`):

1. It starts at the next segment (``media_init``). Its first media opens
   ``<dir>/<session_id>-<n>.part.mp4`` (``n``: the session's next number) and its sidecar; the first
   init chunk and then every fragment are appended as they come, by a writer task, in a thread. Every
   segment of one session has the same init (same encoder settings): it is written once. A fragmented
   MP4 plays as it is, should the server die before the end.
2. It stops: between segments at once, else at the end of the segment in flight; at the session's end
   once the hub's encoding in flight is over (its media goes in first).
3. It is finalised (in a thread, ``rtc_server.media.mp4_remux``): stream copy into
   ``<session_id>-<n>.mp4`` with the index at the front, the video laid end to end from 0 (a
   segment cut short leaves no hole), segments taken back after their media began (their owner never
   showed them) left out; the sidecar says ``ready`` with the frames and duration; the part file goes.
   A recording that got no frame leaves nothing behind.

Finished recordings are deleted ``recording_retention_seconds`` after they end (a sweep at start and
then periodically). Recordings a previous run of the server left unfinished are finalised at start.
The service finalises every recording before the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Final

from gpu.audio import AudioFormat
from rtc_server.config import ServiceConfig
from rtc_server.media.fmp4 import Fmp4Encoder
from rtc_server.media.mp4_remux import EmptyRecording, RemuxError, remux_recording
from rtc_server.media.stream_encoder import stream_fmp4_encoder
from rtc_server.viewers.fmp4_fanout import WatchHub
from rtc_server.viewers.recording_files import RecordingDir, RecordingMeta

__all__ = ["MAX_PENDING_BYTES", "Recorder", "RecordingService", "SessionRecording"]

logger = logging.getLogger(__name__)

MAX_PENDING_BYTES: Final = 64 * 1024 * 1024  # media waiting for the disk; beyond it the recording ends there
SETTLE_TIMEOUT_S: Final = 10.0  # at a session's end, longest wait for the hub's encoding in flight
CLEANUP_INTERVAL_MAX_S: Final = 600.0  # retention sweeps at least this often (more often for short retention)
FILE_THREADS: Final = 4  # writes and remuxes of all recordings
_INIT_BOX: Final = b"ftyp"  # an init chunk (ftyp+moov) starts with it

# Who owns the recording when its file opens: the session's id and the SHA-256 of its resume token.
Owner = Callable[[], tuple[str, str | None]]


@dataclass
class _Segment:
    """One segment's place in the part file: its fragments' bytes ``[start, end)``."""

    idx: int
    start: int
    end: int
    frames: int = 0
    complete: bool = False
    dropped: bool = False  # taken back after its media began


class Recorder:
    """One recording of one session: a subscriber of its WatchHub (see the module docstring)."""

    def __init__(
        self,
        *,
        hub: WatchHub,
        files: RecordingDir,
        executor: Executor,
        fps: int,
        owner: Owner,
        on_stopped: Callable[[Recorder], None],
        label: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._hub = hub
        self._files = files
        self._executor = executor
        self._fps = fps
        self._owner = owner
        self._on_stopped = on_stopped
        self.label = label
        self._clock = clock
        self.meta: RecordingMeta | None = None  # once its file is open
        self._file: BinaryIO | None = None
        self._init: bytes | None = None
        self._segments: list[_Segment] = []
        self._current: _Segment | None = None  # the segment whose media is arriving
        self._offset = 0  # bytes handed to the writer: the part file's size once written
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._stopping = False  # stop at the end of the segment in flight
        self._stopped = False  # takes no more media
        self._finishing: asyncio.Future[RecordingMeta | None] | None = None
        self._warned_init = False

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def frames(self) -> int:
        """Frames of the segments recorded whole so far."""
        return sum(s.frames for s in self._segments if s.complete and not s.dropped)

    def live_meta(self) -> RecordingMeta | None:
        """The sidecar's view with the counts so far (None before the file opened)."""
        if self.meta is None or self.meta.state != "recording":
            return self.meta
        frames = self.frames
        return replace(self.meta, frames=frames, duration_s=round(frames / self._fps, 3), bytes=self._offset)

    # -- MediaSubscriber --------------------------------------------------------------------------

    def media(self, segment_idx: int, item: str | bytes) -> None:
        if self._stopped:
            return
        if isinstance(item, str):
            self._on_text(segment_idx, item)
        else:
            self._on_bytes(segment_idx, item)

    def retracted(self, segment_idx: int) -> None:
        for segment in reversed(self._segments):
            if segment.idx == segment_idx and not segment.dropped:
                segment.dropped = True
                logger.info("%s: segment %d was taken back; it is left out", self.label, segment_idx)
                return

    def _on_text(self, segment_idx: int, text: str) -> None:
        kind, message = _message(text)
        if kind == "media_init":
            if self._stopping:
                self._stop()
                return
            self._current = _Segment(segment_idx, start=self._offset, end=self._offset)
            self._segments.append(self._current)
        elif kind == "media_segment_complete":
            segment = self._current
            if segment is None or segment.idx != segment_idx:
                return
            duration_ms = message.get("duration_ms")
            if isinstance(duration_ms, int | float):
                segment.frames = round(duration_ms * self._fps / 1000.0)
            segment.complete = True
            self._current = None
            if self._stopping:
                self._stop()

    def _on_bytes(self, segment_idx: int, data: bytes) -> None:
        segment = self._current
        if segment is None or segment.idx != segment_idx or segment.dropped:
            return
        if data[4:8] == _INIT_BOX:
            if self._init is None:
                self._init = data
                self._append(data)
                segment.start = segment.end = self._offset
            elif data != self._init and not self._warned_init:
                self._warned_init = True
                logger.warning("%s: a segment's init differs from the first; the recording keeps the first", self.label)
            return
        if self._init is not None:
            self._append(data)
            segment.end = self._offset

    # -- stopping ---------------------------------------------------------------------------------

    def stop(self, *, now: bool) -> None:
        """Take no more media: ``now``, or (between segments: at once) after the segment in flight."""
        if now or self._current is None:
            self._stop()
        else:
            self._stopping = True

    def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._current = None
        self._hub.detach(self)
        self._wakeup.set()
        self._on_stopped(self)

    # -- writing ----------------------------------------------------------------------------------

    def _append(self, data: bytes) -> None:
        if self._pending_bytes + len(data) > MAX_PENDING_BYTES:
            logger.warning("%s: %d bytes wait for the disk; the recording ends here", self.label, self._pending_bytes)
            self._stop()
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        self._offset += len(data)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_forever(), name=f"recording-writer-{self.label}")
        self._wakeup.set()

    async def _write_forever(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            session_id, token_hash = self._owner()
            opened = partial(self._files.open_new, session_id=session_id, token_sha256=token_hash or "", started_at=self._clock())
            meta, file = await loop.run_in_executor(self._executor, opened)
            self.meta, self._file = meta, file
            logger.info("%s: recording to %s", self.label, self._files.part_path(meta).name)
            while True:
                if not self._pending:
                    if self._stopped:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                batch = b"".join(self._pending)
                self._pending.clear()
                self._pending_bytes = 0
                await loop.run_in_executor(self._executor, file.write, batch)
        except (OSError, ValueError) as exc:
            logger.error("%s: writing the recording failed: %s", self.label, exc)
            self._pending.clear()
            self._stop()

    # -- finalising -------------------------------------------------------------------------------

    async def finish(self) -> RecordingMeta | None:
        """Once stopped: write what waits, then finalise (once; later callers get the same answer).
        None when nothing was recorded (or it could not be kept)."""
        if self._finishing is None:
            self._finishing = asyncio.ensure_future(self._finish())
        return await asyncio.shield(self._finishing)

    async def _finish(self) -> RecordingMeta | None:
        if not self._stopped:
            raise RuntimeError(f"{self.label}: finish before stop")
        if self._writer is not None:
            await self._writer
        meta, file = self.meta, self._file
        if meta is None or file is None:
            return None
        self._file = None
        dropped = [(s.start, s.end) for s in self._segments if s.dropped and s.end > s.start]
        loop = asyncio.get_running_loop()
        self.meta = await loop.run_in_executor(
            self._executor, partial(finalise, self._files, meta, file=file, dropped=dropped, clock=self._clock)
        )
        return self.meta


def finalise(
    files: RecordingDir,
    meta: RecordingMeta,
    *,
    file: BinaryIO | None = None,
    dropped: list[tuple[int, int]] | None = None,
    clock: Callable[[], float] = time.time,
) -> RecordingMeta | None:
    """Remux the part file of ``meta`` into its MP4 and mark it ready (sync: run in a thread).

    No frame to keep: its files are deleted (None). The remux failing: the sidecar says ``failed``
    and the part file stays until the retention sweep."""
    if file is not None:
        file.close()
    part, final = files.part_path(meta), files.final_path(meta)
    try:
        if not part.exists() or part.stat().st_size == 0:
            raise EmptyRecording(f"{part.name} is empty")
        result = remux_recording(part, final, dropped=dropped or ())
    except EmptyRecording:
        files.remove(meta)
        return None
    except RemuxError as exc:
        with contextlib.suppress(FileNotFoundError):
            final.unlink()
        logger.error("recording %s cannot be finalised: %s", meta.name, exc)
        failed = replace(meta, state="failed", ended_at=clock())
        files.write_meta(failed)
        return failed
    ready = replace(
        meta,
        state="ready",
        ended_at=clock(),
        frames=result.frames,
        duration_s=round(result.duration_s, 3),
        bytes=final.stat().st_size,
        audio=result.audio,
    )
    files.write_meta(ready)
    part.unlink()
    logger.info("recording %s: %d frames, %.2f s, %d bytes", ready.name, ready.frames, ready.duration_s, ready.bytes)
    return ready


def _message(text: str) -> tuple[str | None, dict[str, object]]:
    try:
        message = json.loads(text)
    except ValueError:
        return None, {}
    if not isinstance(message, dict):
        return None, {}
    kind = message.get("type")
    return (kind if isinstance(kind, str) else None), message


class SessionRecording:
    """One session's recording switch: on from the session's start, off and on again with
    ``recording_updated`` (each time on: a new file, from the next segment). One recording at a time."""

    def __init__(self, *, service: RecordingService, hub: WatchHub, owner: Owner, label: str) -> None:
        self._service = service
        self._hub = hub
        self._owner = owner
        self._label = label
        self._recorder: Recorder | None = None
        self._closed = False
        self.set_enabled(True)

    @property
    def enabled(self) -> bool:
        return self._recorder is not None and not self._recorder.stopped

    def set_enabled(self, enabled: bool) -> None:
        """On: a new recording unless one is running. Off: the running one ends after the segment in flight."""
        if self._closed:
            return
        if enabled and not self.enabled:
            self._recorder = self._service.record(self._hub, owner=self._owner, label=self._label)
        elif not enabled and self._recorder is not None:
            recorder, self._recorder = self._recorder, None
            recorder.stop(now=False)

    def close(self) -> None:
        """The session ended (its transport is closed): finalise the running recording (idempotent)."""
        if self._closed:
            return
        self._closed = True
        recorder, self._recorder = self._recorder, None
        if recorder is not None:
            self._service.end(recorder, self._hub)


class RecordingService:
    """The server's recordings: their directory, threads, retention, and every recording running."""

    def __init__(
        self,
        *,
        config: ServiceConfig,
        audio_format: Callable[[], AudioFormat | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        streaming = config.streaming
        self._config = config
        self._audio_format = audio_format
        self._clock = clock
        self._dir = RecordingDir(Path(streaming.recording_dir)) if streaming.recording_dir else None
        self._retention_s = streaming.recording_retention_seconds
        self._fps = config.default_request.sampling.fps
        self._encoders = ThreadPoolExecutor(max_workers=streaming.max_sessions, thread_name_prefix="record-fmp4")
        self._io = ThreadPoolExecutor(max_workers=FILE_THREADS, thread_name_prefix="record-io")
        self._active: set[Recorder] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # recordings being stopped and finalised
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        """Whether the server records (``streaming.recording_dir`` is set)."""
        return self._dir is not None

    async def start(self) -> None:
        """Make the directory (OSError: the server does not start); recover and sweep in the background."""
        if self._dir is None:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._io, self._dir.create)
        # Read now, before any session records: what a previous run left unfinished.
        metas = await loop.run_in_executor(self._io, self._dir.all_recordings)
        orphans = [meta for meta in metas if meta.state == "recording"]
        self._sweeper = asyncio.create_task(self._sweep_forever(orphans), name="recording-sweeper")

    async def close(self) -> None:
        """Finalise every recording (each waits for its writes and remux), then stop the threads."""
        for recorder in list(self._active):
            recorder.stop(now=True)
        while self._tasks:
            task = next(iter(self._tasks))
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({task})
            self._tasks.discard(task)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await asyncio.to_thread(self._encoders.shutdown, wait=True, cancel_futures=True)
        await asyncio.to_thread(self._io.shutdown, wait=True)

    # -- sessions ---------------------------------------------------------------------------------

    def session(self, hub: WatchHub, *, owner: Owner, label: str) -> SessionRecording | None:
        """A session's recording switch, recording from now; None when the server does not record."""
        if self._dir is None:
            return None
        return SessionRecording(service=self, hub=hub, owner=owner, label=label)

    def record(self, hub: WatchHub, *, owner: Owner, label: str) -> Recorder:
        """A new recording of the session ``hub`` belongs to, from its next segment."""
        assert self._dir is not None
        hub.use_encoder(self._make_encoder, self._encoders)  # a WebRTC owner's media: the hub encodes it
        recorder = Recorder(
            hub=hub,
            files=self._dir,
            executor=self._io,
            fps=self._fps,
            owner=owner,
            on_stopped=self._stopped,
            label=label,
            clock=self._clock,
        )
        self._active.add(recorder)
        hub.attach(recorder)
        return recorder

    def end(self, recorder: Recorder, hub: WatchHub) -> None:
        """The session ended: the hub's encoding in flight goes into the recording, then it is finalised."""
        self._spawn(self._end(recorder, hub), f"recording-end-{recorder.label}")

    async def _end(self, recorder: Recorder, hub: WatchHub) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hub.settled(), SETTLE_TIMEOUT_S)
        recorder.stop(now=True)

    def _stopped(self, recorder: Recorder) -> None:
        self._spawn(self._finish(recorder), f"recording-finish-{recorder.label}")

    async def _finish(self, recorder: Recorder) -> None:
        try:
            await recorder.finish()
        finally:
            self._active.discard(recorder)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s failed", task.get_name(), exc_info=task.exception())

    def _make_encoder(self) -> Fmp4Encoder:
        return stream_fmp4_encoder(self._config, self._audio_format())

    # -- the files --------------------------------------------------------------------------------

    async def recordings_of(self, session_id: str) -> list[RecordingMeta]:
        """The session's recordings, those running with their counts so far."""
        if self._dir is None:
            return []
        metas = await asyncio.get_running_loop().run_in_executor(self._io, self._dir.recordings_of, session_id)
        live = {m.stem: m for r in self._active if (m := r.live_meta()) is not None}
        return [live.get(meta.stem, meta) if meta.state == "recording" else meta for meta in metas]

    def file_of(self, meta: RecordingMeta) -> Path:
        """Where the finalised file of ``meta`` is."""
        assert self._dir is not None
        return self._dir.final_path(meta)

    async def sweep(self) -> int:
        """Delete the recordings ended more than the retention ago (and stray files as old); how many."""
        if self._dir is None:
            return 0
        cutoff = self._clock() - self._retention_s
        active = {r.meta.stem for r in self._active if r.meta is not None}
        return await asyncio.get_running_loop().run_in_executor(self._io, _sweep, self._dir, cutoff, active)

    async def _sweep_forever(self, orphans: list[RecordingMeta]) -> None:
        interval = min(self._retention_s / 4, CLEANUP_INTERVAL_MAX_S)
        loop = asyncio.get_running_loop()
        assert self._dir is not None
        for meta in orphans:
            try:
                await loop.run_in_executor(self._io, partial(finalise, self._dir, meta, clock=self._clock))
            except OSError as exc:
                logger.error("recording %s left by an earlier run cannot be finalised: %s", meta.name, exc)
        while True:
            try:
                removed = await self.sweep()
                if removed:
                    logger.info("recordings: %d past their retention deleted", removed)
            except OSError as exc:
                logger.warning("recordings: the retention sweep failed: %s", exc)
            await asyncio.sleep(interval)


def _sweep(files: RecordingDir, cutoff: float, active: set[str]) -> int:
    removed = 0
    for meta in files.all_recordings():
        ended = meta.ended_at if meta.ended_at is not None else meta.started_at
        if meta.state != "recording" and ended < cutoff:
            files.remove(meta)
            removed += 1
    return removed + files.remove_strays(older_than=cutoff, keep=active)
