"""One JSON-lines file per session, written by one background thread so the event loop never blocks.

The lines have the original system's shape (FastVideo's ``SessionLogEvent``), so its log tooling
reads them unchanged: exactly ``{"session_id", "event", "ts", "payload"}``, ``ts`` the wall-clock
time in seconds since the epoch (a float, taken when the event is logged) and ``payload`` an object
holding everything else the event carries. The file is ``<log_dir>/session-<session_id>.jsonl``.
Where the original logs the same thing under another name, the line carries the original's name
(``ORIGINAL_EVENT_NAMES``); this project's other events keep their own names.

``SessionLogger.event`` bounds and serialises the record and hands it to a queue; the logger's
writer thread appends it to the session's file, keeps that file open until the session's ``end``
event (its last line) or ``close()``, and logs a write failure once per session instead of raising.

Records carry what clients sent (prompts, invalid messages), so no record may grow with client
input: long strings are cut with a marker saying how long they were, long lists and dicts keep
their first items and say how many were left out, deep nesting is cut off, and a record's strings
share one overall budget. Session logs hold client prompts, so files are created 0600 and a
directory the logger creates 0700, whatever the umask.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Self, TextIO, TypeAlias

__all__ = [
    "END_EVENT",
    "ORIGINAL_EVENT_NAMES",
    "LogLimits",
    "SessionLogEvent",
    "SessionLogger",
    "log_file_name",
    "validate_session_id",
]

logger = logging.getLogger(__name__)

END_EVENT = "end"
DEFAULT_MAX_OPEN_FILES = 256  # files; least recently used ones are closed beyond this
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# What this project's callers log, by the name the original system gives the same event
# (FastVideo's dreamverse session controller). Events the original has no equivalent of keep ours.
ORIGINAL_EVENT_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "init": "ws_session_start",  # a session started (its init accepted)
        "segment": "segment_complete",  # a segment was generated and delivered
        "prompt_received": "append_prompt",  # a user prompt was accepted for the next segment
        "prompt_rejected": "prompt_blocked",  # the safety filter refused a prompt
        "rewrite_failed": "rewrite_exception",  # a seed-prompt rewrite raised
    }
)
FILE_MODE = 0o600  # session logs hold what clients sent: owner only
DIR_MODE = 0o700


def validate_session_id(session_id: object) -> str:
    """Return ``session_id`` if it is 1-64 of ``[A-Za-z0-9_-]`` (safe as a file name); else ValueError."""
    if not isinstance(session_id, str) or _SESSION_ID.fullmatch(session_id) is None:
        raise ValueError(f"session id {session_id!r} must be 1-64 characters of [A-Za-z0-9_-]")
    return session_id


def log_file_name(session_id: str) -> str:
    """The file a session's lines go to, as the original names it: ``session-<id>.jsonl``."""
    return f"session-{validate_session_id(session_id)}.jsonl"


@dataclass(frozen=True)
class SessionLogEvent:
    """One line of a session's file, as the original system defines it."""

    session_id: str
    event: str
    payload: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)  # seconds since the epoch


@dataclass(frozen=True, kw_only=True)
class LogLimits:
    """How much of a record's field values is written; what is cut says how much there was."""

    max_string_chars: int = 1024  # characters of one string
    max_items: int = 64  # items of one list or entries of one dict
    max_depth: int = 8  # levels of lists and dicts inside a field
    max_values: int = 1024  # values (strings, numbers, lists, dicts) in one record
    max_record_chars: int = 16384  # characters of all the strings in one record together
    max_int_bits: int = 128  # bits; larger ints are written as their size

    def __post_init__(self) -> None:
        for name in ("max_string_chars", "max_items", "max_depth", "max_values", "max_record_chars", "max_int_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LogLimits.{name} must be a positive int, got {value!r}")


class _Bounder:
    """Copies one record's fields, cutting them to the limits; a circular structure is a ValueError."""

    def __init__(self, limits: LogLimits) -> None:
        self._limits = limits
        self._chars_left = limits.max_record_chars
        self._values_left = limits.max_values
        self._walking: set[int] = set()  # ids of the containers being copied, to catch cycles

    def payload(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        # The payload's keys are the caller's field names (code, not client input): written whole.
        return {name: self._value(value, depth=0) for name, value in payload.items()}

    def _value(self, value: Any, *, depth: int) -> Any:
        self._values_left -= 1
        if value is None or isinstance(value, bool | float):
            return value
        if isinstance(value, int):
            bits = value.bit_length()
            return value if bits <= self._limits.max_int_bits else f"<int of {bits} bits>"
        if isinstance(value, str):
            return self._string(value)
        if isinstance(value, dict | list | tuple):
            if depth >= self._limits.max_depth:
                return f"<{type(value).__name__} nested deeper than {self._limits.max_depth} levels>"
            if id(value) in self._walking:
                raise ValueError("circular reference")
            self._walking.add(id(value))
            try:
                return self._dict(value, depth) if isinstance(value, dict) else self._list(value, depth)
            finally:
                self._walking.discard(id(value))
        return self._string(str(value))  # as json's default=str would write it

    def _string(self, text: str) -> str:
        limit = max(0, min(self._limits.max_string_chars, self._chars_left))
        if len(text) <= limit:
            self._chars_left -= len(text)
            return text
        self._chars_left -= limit
        return f"{text[:limit]}...<cut: {len(text)} chars>"

    def _list(self, items: list[Any] | tuple[Any, ...], depth: int) -> list[Any]:
        copied: list[Any] = []
        for index, item in enumerate(items):
            if index >= self._limits.max_items or self._values_left <= 0:
                copied.append(f"<cut: {len(items) - index} more items>")
                break
            copied.append(self._value(item, depth=depth + 1))
        return copied

    def _dict(self, entries: dict[Any, Any], depth: int) -> dict[Any, Any]:
        copied: dict[Any, Any] = {}
        for index, (key, item) in enumerate(entries.items()):
            if index >= self._limits.max_items or self._values_left <= 0:
                copied["<cut>"] = f"{len(entries) - index} more entries"
                break
            # Non-string keys go through as they are: json.dumps writes numbers, refuses the rest.
            copied[self._string(key) if isinstance(key, str) else key] = self._value(item, depth=depth + 1)
        return copied


def _make_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, each 0700 whatever the umask; existing ones are left alone."""
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # made by someone else meanwhile: not ours to change
        os.chmod(directory, DIR_MODE)  # mkdir's mode is narrowed by the umask


def _open_private(path: Path) -> TextIO:
    """Open ``path`` for appending, created 0600 (an existing file is narrowed to 0600); never via a symlink."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # the umask may have narrowed it, or the file predates this logger
        return os.fdopen(fd, "a", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


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
    """Appends JSON events to ``<log_dir>/session-<session_id>.jsonl``; a cheap no-op when ``log_dir`` is None.

    ``close()`` (and ``flush()``) block until the writer catches up: from async code call them via
    ``asyncio.to_thread``. Lines still queued when the process exits without ``close()`` are lost.
    A session's ``end`` event closes its file; an event sent after it would reopen it for appending.
    Payload values are cut to ``limits`` (see :class:`LogLimits`) before they are serialised.
    """

    def __init__(
        self,
        log_dir: str | Path | None,
        *,
        max_open_files: int = DEFAULT_MAX_OPEN_FILES,
        limits: LogLimits | None = None,
    ) -> None:
        if max_open_files < 1:
            raise ValueError(f"max_open_files must be positive, got {max_open_files}")
        self._log_dir = None if log_dir is None else Path(log_dir)
        self._max_open_files = max_open_files
        self._limits = limits if limits is not None else LogLimits()
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

    def event(self, session_id: str, event: str, **payload: Any) -> None:
        """Queue one line ``{"session_id", "event", "ts", "payload"}`` with ``payload`` cut to the
        limits and ``event`` renamed to the original's name where it has one; never blocks, never
        raises on I/O."""
        if self._log_dir is None:
            return
        self.log(SessionLogEvent(session_id, event, payload))

    def log(self, record: SessionLogEvent) -> None:
        """Queue ``record`` as one line (the original's ``SessionLogger.log``); see :meth:`event`."""
        if self._log_dir is None:
            return
        session_id = validate_session_id(record.session_id)
        name = ORIGINAL_EVENT_NAMES.get(record.event, record.event)
        try:
            payload = _Bounder(self._limits).payload(record.payload)
            line = {"session_id": session_id, "event": name, "ts": float(record.ts), "payload": payload}
            text = json.dumps(line, default=str) + "\n"
        except (TypeError, ValueError) as exc:  # circular references, non-string keys
            logger.warning("session %s: dropped log event %r that cannot be serialised: %s", session_id, name, exc)
            return
        with self._lock:
            if self._closed:
                logger.debug("session %s: log event %r after close dropped", session_id, name)
                return
            self._start_locked()
            self._queue.put(_Line(session_id, text, last=record.event == END_EVENT))

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
        _make_dirs(self._log_dir)
        # Not a with-block: the file stays open across events until the session's end.
        file = _open_private(self._log_dir / log_file_name(session_id))
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
