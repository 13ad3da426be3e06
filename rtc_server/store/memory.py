"""In-process session and blob stores: one server process, lost when it stops."""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass

from rtc_server.store.base import (
    DEFAULT_INLINE_LIMIT_BYTES,
    DEFAULT_MIME,
    DEFAULT_SNAPSHOT_TTL_S,
    JSON_MIME,
    BlobBackedSessionStore,
    BlobNotFoundError,
    BlobStore,
    StateRecord,
    StoreError,
    check_ttl,
    new_id,
)

__all__ = ["InMemoryBlobStore", "InMemorySessionStore"]


@dataclass(frozen=True)
class _Entry:
    data: bytes
    mime: str
    expires_at: float | None


class _ExpiringDict:
    """A dict whose entries may expire; expired ones are purged lazily through a heap of deadlines."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._deadlines: list[tuple[float, str]] = []

    def put(self, key: str, entry: _Entry) -> _Entry | None:
        self.purge()
        previous = self._entries.get(key)
        self._entries[key] = entry
        if entry.expires_at is not None:
            heapq.heappush(self._deadlines, (entry.expires_at, key))
        return previous

    def get(self, key: str) -> _Entry | None:
        self.purge()
        return self._entries.get(key)

    def pop(self, key: str) -> _Entry | None:
        self.purge()
        return self._entries.pop(key, None)

    def __len__(self) -> int:
        self.purge()
        return len(self._entries)

    def keys(self) -> list[str]:
        self.purge()
        return list(self._entries)

    def deadline(self, ttl_s: float | None) -> float | None:
        return None if ttl_s is None else self._clock() + ttl_s

    def purge(self) -> None:
        now = self._clock()
        while self._deadlines and self._deadlines[0][0] <= now:
            expires_at, key = heapq.heappop(self._deadlines)
            entry = self._entries.get(key)
            # A stale deadline (entry replaced or dropped since) leaves the current entry alone.
            if entry is not None and entry.expires_at == expires_at:
                del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()
        self._deadlines.clear()


class InMemoryBlobStore(BlobStore):
    """Blobs in a dict, for tests and a single process; TTLs follow the injectable ``clock`` (seconds)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._items = _ExpiringDict(clock)
        self._closed = False

    async def put(self, data: bytes, *, mime: str = DEFAULT_MIME, ttl_s: float | None = None) -> str:
        self._check_open()
        check_ttl(ttl_s)
        blob_id = new_id()
        self._items.put(blob_id, _Entry(bytes(data), mime, self._items.deadline(ttl_s)))
        return blob_id

    async def get(self, blob_id: str) -> bytes:
        self._check_open()
        entry = self._items.get(blob_id)
        if entry is None:
            raise BlobNotFoundError(f"blob {blob_id!r} not found or expired")
        return entry.data

    async def drop(self, blob_id: str) -> None:
        self._check_open()
        self._items.pop(blob_id)

    async def count(self) -> int:
        self._check_open()
        return len(self._items)

    async def close(self) -> None:
        self._closed = True
        self._items.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("InMemoryBlobStore is closed")


class InMemorySessionStore(BlobBackedSessionStore):
    """Live states in a dict over any :class:`BlobStore`; it does not close ``blobs``.

    Records are kept as JSON, so callers never share mutable payloads with the store. With
    ``state_ttl_s`` set, states expire by ``clock`` (blob TTLs follow the blob store's own clock).
    """

    def __init__(
        self,
        blobs: BlobStore,
        *,
        inline_limit_bytes: int = DEFAULT_INLINE_LIMIT_BYTES,
        snapshot_ttl_s: float = DEFAULT_SNAPSHOT_TTL_S,
        state_ttl_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            blobs, inline_limit_bytes=inline_limit_bytes, snapshot_ttl_s=snapshot_ttl_s, state_ttl_s=state_ttl_s
        )
        self._records = _ExpiringDict(clock)

    async def _swap_record(self, session_id: str, record: StateRecord) -> StateRecord | None:
        entry = _Entry(record.to_json(), JSON_MIME, self._records.deadline(self._state_ttl_s))
        return self._decode(session_id, self._records.put(session_id, entry))

    async def _get_record(self, session_id: str) -> StateRecord | None:
        return self._decode(session_id, self._records.get(session_id))

    async def _pop_record(self, session_id: str) -> StateRecord | None:
        return self._decode(session_id, self._records.pop(session_id))

    async def _count_records(self) -> int:
        return len(self._records)

    async def _record_ids(self) -> list[str]:
        return self._records.keys()

    async def _aclose(self) -> None:
        self._records.clear()

    @staticmethod
    def _decode(session_id: str, entry: _Entry | None) -> StateRecord | None:
        if entry is None:
            return None
        return StateRecord.from_json(entry.data, where=f"session {session_id}")
