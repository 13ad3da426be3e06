"""Shared-memory slots for moving frames from a worker process to the server without pickling.

The server creates the slots (and owns them: it unlinks them at shutdown); a worker
attaches by name, writes a chunk of frames into a free slot (and the chunk's audio right
after them) and sends only the slot index and shapes over its pipe; the server copies
them out and hands the slot back.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

__all__ = ["FrameSlots", "SlotRef"]


_AUDIO_ALIGN = 16  # float32 audio starts at an aligned offset after the frames


@dataclass(frozen=True)
class SlotRef:
    """Where a chunk lies: slot index, the frames' shape (uint8), and its audio's shape (float32) if any."""

    index: int
    shape: tuple[int, ...]
    audio_shape: tuple[int, ...] | None = None


def _audio_offset(frame_bytes: int) -> int:
    return -(-frame_bytes // _AUDIO_ALIGN) * _AUDIO_ALIGN


class FrameSlots:
    """A fixed set of equally sized shared-memory blocks."""

    def __init__(self, blocks: list[shared_memory.SharedMemory], *, owner: bool) -> None:
        self._blocks = blocks
        self._owner = owner
        self._closed = False

    @classmethod
    def create(cls, *, count: int, slot_bytes: int) -> FrameSlots:
        """Allocate ``count`` blocks of ``slot_bytes`` (server side)."""
        blocks: list[shared_memory.SharedMemory] = []
        try:
            for _ in range(count):
                blocks.append(shared_memory.SharedMemory(create=True, size=max(1, slot_bytes)))
        except BaseException:
            for block in blocks:
                block.close()
                block.unlink()
            raise
        return cls(blocks, owner=True)

    @classmethod
    def attach(cls, names: list[str]) -> FrameSlots:
        """Open blocks created by another process (worker side)."""
        # Attaching registers the block with the resource tracker again, but spawned workers
        # share the server's tracker, so that is the same entry: the server's unlink clears it.
        return cls([shared_memory.SharedMemory(name=name) for name in names], owner=False)

    @property
    def names(self) -> list[str]:
        return [block.name for block in self._blocks]

    @property
    def count(self) -> int:
        return len(self._blocks)

    @property
    def slot_bytes(self) -> int:
        return self._blocks[0].size if self._blocks else 0

    def write(self, index: int, frames: np.ndarray, audio: np.ndarray | None = None) -> SlotRef:
        """Copy ``frames`` (uint8), and ``audio`` (float32) after them, into slot ``index``."""
        self._check_open()
        if frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8, got {frames.dtype}")
        if audio is not None and audio.dtype != np.float32:
            raise ValueError(f"audio must be float32, got {audio.dtype}")
        size = self._blocks[index].size
        offset = _audio_offset(frames.nbytes)
        needed = frames.nbytes if audio is None else offset + audio.nbytes
        if needed > size:
            raise ValueError(f"{needed} bytes of frames and audio do not fit a {size} byte slot")
        buf = self._blocks[index].buf
        np.ndarray(frames.shape, dtype=np.uint8, buffer=buf)[...] = frames
        if audio is None:
            return SlotRef(index=index, shape=tuple(frames.shape))
        np.ndarray(audio.shape, dtype=np.float32, buffer=buf, offset=offset)[...] = audio
        return SlotRef(index=index, shape=tuple(frames.shape), audio_shape=tuple(audio.shape))

    def read(self, ref: SlotRef) -> tuple[np.ndarray, np.ndarray | None]:
        """Private copies of the frames and audio in ``ref``'s slot (the slot may be reused right after)."""
        self._check_open()
        buf = self._blocks[ref.index].buf
        frames = np.ndarray(ref.shape, dtype=np.uint8, buffer=buf).copy()
        if ref.audio_shape is None:
            return frames, None
        offset = _audio_offset(frames.nbytes)
        return frames, np.ndarray(ref.audio_shape, dtype=np.float32, buffer=buf, offset=offset).copy()

    def _check_open(self) -> None:
        # A closed block's buffer is None, and numpy would then quietly allocate a fresh array.
        if self._closed:
            raise ValueError("frame slots are closed")

    def close(self) -> None:
        """Detach; the owner also unlinks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for block in self._blocks:
            block.close()
            if self._owner:
                with contextlib.suppress(FileNotFoundError):
                    block.unlink()
