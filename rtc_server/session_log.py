"""One JSON-lines file per session, written by one background thread so the event loop never blocks.

``SessionLogger.event`` serialises the record and hands it to a queue; the logger's writer thread
appends it to ``<log_dir>/<session_id>.jsonl``, keeps that file open until the session's ``end``
event (its last line) or ``close()``, and logs a write failure once per session instead of raising.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TextIO, TypeAlias

__all__ = ["END_EVENT", "SessionLogger", "validate_session_id"]

logger = logging.getLogger(__name__)

END_EVENT = "end"
DEFAULT_MAX_OPEN_FILES = 256  # files; least recently used ones are closed beyond this
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_RESERVED_FIELDS = frozenset({"ts"})


def validate_session_id(session_id: object) -> str:
    """Return ``session_id`` if it is 1-64 of ``[A-Za-z0-9_-]`` (safe as a file name); else ValueError."""
    if not isinstance(session_id, str) or _SESSION_ID.fullmatch(session_id) is None:
        raise ValueError(f"session id {session_id!r} must be 1-64 characters of [A-Za-z0-9_-]")
    return session_id


@dataclass(frozen=True)
class _Line:
    session_id: str
    text: str
    last: bool


@dataclass(frozen=True)
class _Flush:
    done: threading.Event


@dataclass(frozen=True)
class _Stop:
    pass


_Item: TypeAlias = _Line | _Flush | _Stop


class SessionLogger:
    """Appends JSON events to ``<log_dir>/<session_id>.jsonl``; a cheap no-op when ``log_dir`` is None.

    ``close()`` (and ``flush()``) block until the writer catches up: from async code call them via
    ``asyncio.to_thread``. Lines still queued when the process exits without ``close()`` are lost.
    A session's ``end`` event closes its file; an event sent after it would reopen it for appending.
    """

    def __init__(self, log_dir: str | Path | None, *, max_open_files: int = DEFAULT_MAX_OPEN_FILES) -> None:
        if max_open_files < 1:
            raise ValueError(f"max_open_files must be positive, got {max_open_files}")
        self._log_dir = None if log_dir is None else Path(log_dir)
        self._max_open_files = max_open_files
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        # Guards _thread and _closed so that no line is queued behind the stop marker.
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def enabled(self) -> bool:
        """Whether events are written at all."""
        return self._log_dir is not None

    @property
    def log_dir(self) -> Path | None:
        """The directory holding the session files, or None when logging is off."""
        return self._log_dir

    def start(self) -> None:
        """Start the writer thread now rather than on the first event; a no-op when disabled."""
        with self._lock:
            if self._closed:
                raise RuntimeError("SessionLogger is closed")
            self._start_locked()

    def event(self, session_id: str, event: str, **fields: Any) -> None:
        """Queue one line ``{"ts", "session_id", "event", **fields}``; never blocks, never raises on I/O."""
        if self._log_dir is None:
            return
        validate_session_id(session_id)
        reserved = _RESERVED_FIELDS.intersection(fields)
        if reserved:
            raise ValueError(f"field names {sorted(reserved)} are reserved in session log records")
        record = {"ts": time.time(), "session_id": session_id, "event": event, **fields}
        try:
            text = json.dumps(record, default=str) + "\n"
        except (TypeError, ValueError) as exc:  # circular references, non-string keys
            logger.warning("session %s: dropped log event %r that cannot be serialised: %s", session_id, event, exc)
            return
        with self._lock:
            if self._closed:
                logger.debug("session %s: log event %r after close dropped", session_id, event)
                return
            self._start_locked()
            self._queue.put(_Line(session_id, text, last=event == END_EVENT))

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every event queued so far is written and flushed; False if ``timeout`` ran out."""
        with self._lock:
            if self._thread is None or self._closed:
                return True
            done = threading.Event()
            self._queue.put(_Flush(done))
        return done.wait(timeout)

    def close(self) -> None:
        """Write everything queued, close all files and stop the writer; idempotent and race-safe."""
        with self._lock:
            thread = self._thread
            if not self._closed:
                self._closed = True
                if thread is not None:
                    self._queue.put(_Stop())
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _start_locked(self) -> None:
        if self._thread is not None or self._log_dir is None:
            return
        writer = _Writer(self._log_dir, self._max_open_files)
        # Daemon so a logger that is never closed cannot hold the interpreter open at exit.
        self._thread = threading.Thread(target=self._run, args=(writer,), name="session-log-writer", daemon=True)
        self._thread.start()

    def _run(self, writer: _Writer) -> None:
        try:
            writer.run(self._queue)
        except Exception:
            logger.exception("session log writer failed; later session events are dropped")
        finally:
            writer.close_all()
            with self._lock:
                self._closed = True
            self._release_waiters()

    def _release_waiters(self) -> None:
        # After a crash nothing new can be queued (closed), so draining once frees every flush() waiter.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Flush):
                item.done.set()


class _Writer:
    """The writer thread's state: open files by session, and sessions whose failure was logged."""

    def __init__(self, log_dir: Path, max_open_files: int) -> None:
        self._log_dir = log_dir
        self._max_open_files = max_open_files
        self._files: OrderedDict[str, TextIO] = OrderedDict()
        self._dirty: set[str] = set()
        self._failed: set[str] = set()

    def run(self, items: queue.SimpleQueue[_Item]) -> None:
        """Write items until a stop marker; flush after each burst so lines reach disk promptly."""
        while True:
            item = items.get()
            while True:
                if isinstance(item, _Stop):
                    self._flush_dirty()
                    return
                if isinstance(item, _Line):
                    self._write(item)
                else:
                    self._flush_dirty()
                    item.done.set()
                try:
                    item = items.get_nowait()
                except queue.Empty:
                    break
            self._flush_dirty()

    def close_all(self) -> None:
        """Flush and close every open file."""
        for session_id in list(self._files):
            self._close(session_id)

    def _write(self, line: _Line) -> None:
        session_id = line.session_id
        try:
            file = self._open(session_id)
            file.write(line.text)
            self._dirty.add(session_id)
        except OSError as exc:
            self._failed_write(session_id, exc)
        if line.last:
            self._close(session_id)
            # The session is over: forget it so a long-running server does not accumulate ids.
            self._failed.discard(session_id)

    def _open(self, session_id: str) -> TextIO:
        file = self._files.get(session_id)
        if file is not None:
            self._files.move_to_end(session_id)
            return file
        self._log_dir.mkdir(parents=True, exist_ok=True)
        # Not a with-block: the file stays open across events until the session's end.
        file = open(self._log_dir / f"{session_id}.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._files[session_id] = file
        while len(self._files) > self._max_open_files:
            self._close(next(iter(self._files)))
        return file

    def _close(self, session_id: str) -> None:
        file = self._files.pop(session_id, None)
        self._dirty.discard(session_id)
        if file is None:
            return
        try:
            file.close()
        except OSError as exc:
            self._failed_write(session_id, exc)

    def _flush_dirty(self) -> None:
        for session_id in self._dirty:
            file = self._files.get(session_id)
            if file is None:
                continue
            try:
                file.flush()
            except OSError as exc:
                self._failed_write(session_id, exc)
        self._dirty.clear()

    def _failed_write(self, session_id: str, exc: OSError) -> None:
        if session_id in self._failed:
            return
        self._failed.add(session_id)
        logger.warning("session %s: cannot write session log in %s: %s", session_id, self._log_dir, exc)
