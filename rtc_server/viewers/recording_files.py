"""The recordings directory (``streaming.recording_dir``): its files, their sidecars, their retention.

Per recording ``<session_id>-<n>`` (``n`` counting from 1 for each session id) there are:

- ``<session_id>-<n>.part.mp4``: the fragmented MP4 being written (playable as it is, should the
  server die), gone once finalised;
- ``<session_id>-<n>.mp4``: the finalised MP4;
- ``<session_id>-<n>.json``: the sidecar: session id, the SHA-256 of the owner's resume token (what
  downloads are checked against, the controller being gone by then), times, frames, duration, size,
  state (``recording``, ``ready``, ``failed``). Written whole to a temporary file, then renamed.

Sync code (file I/O): call it from a thread. One server process owns the directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Final, Literal, cast

__all__ = ["RecordingDir", "RecordingMeta", "RecordingState", "valid_session_id"]

logger = logging.getLogger(__name__)

RecordingState = Literal["recording", "ready", "failed"]
_STATES: Final = ("recording", "ready", "failed")
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # protocol.SessionId: never a path, never a glob
_FILE = re.compile(r"(?P<sid>[A-Za-z0-9_-]{1,64})-(?P<n>[0-9]{1,9})(?P<ext>\.json|\.mp4|\.part\.mp4)")
_SIDECAR_VERSION: Final = 1


def valid_session_id(session_id: str) -> bool:
    """Whether ``session_id`` can name recordings (letters, digits, ``_`` and ``-``; 64 at most)."""
    return _SESSION_ID.fullmatch(session_id) is not None


@dataclass(frozen=True, kw_only=True)
class RecordingMeta:
    """What a recording's sidecar says."""

    session_id: str
    number: int
    token_sha256: str  # of the owner's resume token when the recording began
    state: RecordingState
    started_at: float  # Unix time (s)
    ended_at: float | None = None
    frames: int = 0
    duration_s: float = 0.0
    bytes: int = 0  # of the finalised file (while recording: written so far)
    audio: bool | None = None  # known once finalised

    @property
    def stem(self) -> str:
        return f"{self.session_id}-{self.number}"

    @property
    def name(self) -> str:
        """The finalised file's name (what the download URL names)."""
        return f"{self.stem}.mp4"

    def to_json(self) -> str:
        return json.dumps({"version": _SIDECAR_VERSION, **asdict(self)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RecordingMeta:
        """ValueError for a sidecar that is not one."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != _SIDECAR_VERSION:
            raise ValueError("not a recording sidecar of this version")
        state = data.get("state")
        if state not in _STATES:
            raise ValueError(f"unknown state {state!r}")
        try:
            meta = cls(
                session_id=str(data["session_id"]),
                number=int(data["number"]),
                token_sha256=str(data["token_sha256"]),
                state=cast(RecordingState, state),
                started_at=float(data["started_at"]),
                ended_at=None if data.get("ended_at") is None else float(data["ended_at"]),
                frames=int(data.get("frames", 0)),
                duration_s=float(data.get("duration_s", 0.0)),
                bytes=int(data.get("bytes", 0)),
                audio=None if data.get("audio") is None else bool(data["audio"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"incomplete sidecar: {exc}") from exc
        if not valid_session_id(meta.session_id) or meta.number < 1:
            raise ValueError("bad session id or number")
        return meta


class RecordingDir:
    """The files of the recordings directory (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def create(self) -> None:
        """Make the directory (and its parents); OSError when it cannot be."""
        self.path.mkdir(parents=True, exist_ok=True)

    def part_path(self, meta: RecordingMeta) -> Path:
        return self.path / f"{meta.stem}.part.mp4"

    def final_path(self, meta: RecordingMeta) -> Path:
        return self.path / meta.name

    def sidecar_path(self, meta: RecordingMeta) -> Path:
        return self.path / f"{meta.stem}.json"

    def open_new(self, *, session_id: str, token_sha256: str, started_at: float) -> tuple[RecordingMeta, BinaryIO]:
        """Claim the session's next number (its sidecar, created exclusively) and open its part file."""
        if not valid_session_id(session_id):
            raise ValueError(f"session id {session_id[:80]!r} cannot name a recording")
        number = 1 + max(self._numbers(session_id), default=0)
        while True:
            meta = RecordingMeta(session_id=session_id, number=number, token_sha256=token_sha256, state="recording", started_at=started_at)
            try:
                fd = os.open(self.sidecar_path(meta), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                number += 1
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as sidecar:
                sidecar.write(meta.to_json())
            return meta, open(self.part_path(meta), "wb")  # the recorder owns and closes it

    def write_meta(self, meta: RecordingMeta) -> None:
        """Replace the sidecar of ``meta`` whole (a reader never sees half of one)."""
        target = self.sidecar_path(meta)
        temporary = target.with_name(f".{target.name}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as sidecar:
            sidecar.write(meta.to_json())
        os.replace(temporary, target)

    def recordings_of(self, session_id: str) -> list[RecordingMeta]:
        """The session's recordings, by number (unreadable sidecars left out)."""
        if not valid_session_id(session_id):
            return []
        metas = [meta for meta in self._sidecars(session_id) if meta.session_id == session_id]
        return sorted(metas, key=lambda meta: meta.number)

    def all_recordings(self) -> list[RecordingMeta]:
        return list(self._sidecars(None))

    def remove(self, meta: RecordingMeta) -> None:
        """Delete the recording's files (the sidecar last: a listing never shows a file that is gone)."""
        for path in (self.final_path(meta), self.part_path(meta), self.sidecar_path(meta)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def remove_strays(self, *, older_than: float, keep: set[str]) -> int:
        """Delete files of ours without a sidecar, last changed before ``older_than`` (Unix time), unless
        their stem is in ``keep``; returns how many."""
        removed = 0
        with os.scandir(self.path) as entries:
            names = [entry.name for entry in entries if entry.is_file()]
        stems = {match["sid"] + "-" + match["n"] for name in names if (match := _FILE.fullmatch(name)) and match["ext"] == ".json"}
        for name in names:
            match = _FILE.fullmatch(name)
            if match is None or match["ext"] == ".json":
                continue
            stem = f"{match['sid']}-{match['n']}"
            if stem in stems or stem in keep:
                continue
            path = self.path / name
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < older_than:
                    path.unlink()
                    removed += 1
        return removed

    def _numbers(self, session_id: str) -> list[int]:
        with os.scandir(self.path) as entries:
            matches = [_FILE.fullmatch(entry.name) for entry in entries]
        return [int(m["n"]) for m in matches if m is not None and m["sid"] == session_id]

    def _sidecars(self, session_id: str | None) -> list[RecordingMeta]:
        metas: list[RecordingMeta] = []
        with os.scandir(self.path) as entries:
            names = [entry.name for entry in entries]
        for name in names:
            match = _FILE.fullmatch(name)
            if match is None or match["ext"] != ".json" or (session_id is not None and match["sid"] != session_id):
                continue
            try:
                meta = RecordingMeta.from_json((self.path / name).read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue  # deleted meanwhile
            except (OSError, ValueError) as exc:
                logger.warning("recording sidecar %s cannot be read: %s", name, exc)
                continue
            if meta.stem == name.removesuffix(".json"):
                metas.append(meta)
        return metas
