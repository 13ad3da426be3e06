"""Where sessions' resume records live, owned by whoever holds the session's current resume token.

A record is opaque bytes here (``rtc_server.resume_record`` reads it) stored next to the hash of the
token that owns it. Every change is conditional on that owner, in one atomic step of the backend:

- ``put``: write the owner's record (create it when absent), refreshing its TTL; False when another
  token owns the session now (it was resumed elsewhere: the caller has lost it).
- ``claim``: hand the record to a new token if it is still exactly as read (owner and bytes:
  compare-and-swap), so of two connections resuming with the same token one wins, and a record its
  old server wrote once more meanwhile is read again rather than overwritten.
- ``delete``: drop the record if ``token_hash`` still owns it (a session that ended normally).

Backends: :class:`InMemoryResumeRecords` (one process) here, ``RedisResumeRecords`` in
``rtc_server.store.redis_resume`` (shared by replicas). Backend failures raise StoreError.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from dataclasses import dataclass

from rtc_server.store.base import StoreError, check_ttl

__all__ = ["InMemoryResumeRecords", "ResumeRecords", "StoredRecord"]


@dataclass(frozen=True)
class StoredRecord:
    """A record as stored: the hash of the token that owns it, and its bytes."""

    token_hash: str
    data: bytes


class ResumeRecords(abc.ABC):
    """Resume records by session id, each changed only by its owner (see the module docstring)."""

    @abc.abstractmethod
    async def get(self, session_id: str) -> StoredRecord | None:
        """The record, or None when there is none (never written, deleted, or expired)."""

    @abc.abstractmethod
    async def put(self, session_id: str, token_hash: str, data: bytes) -> bool:
        """Write the record if ``token_hash`` owns it or there is none; False when another token owns it."""

    @abc.abstractmethod
    async def claim(self, session_id: str, *, expected: StoredRecord, token_hash: str, data: bytes) -> bool:
        """Give the record to ``token_hash`` (with ``data``) if it is still ``expected``; False otherwise."""

    @abc.abstractmethod
    async def delete(self, session_id: str, token_hash: str) -> bool:
        """Drop the record if ``token_hash`` owns it; False otherwise."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the backend's resources; idempotent."""


@dataclass(frozen=True)
class _Held:
    record: StoredRecord
    expires_at: float | None


class InMemoryResumeRecords(ResumeRecords):
    """Records in a dict of one process (a client reconnecting to the same server); TTLs follow ``clock``."""

    def __init__(self, *, ttl_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        check_ttl(ttl_s)
        self._ttl_s = ttl_s
        self._clock = clock
        self._records: dict[str, _Held] = {}
        self._closed = False

    async def get(self, session_id: str) -> StoredRecord | None:
        held = self._live(session_id)
        return None if held is None else held.record

    async def put(self, session_id: str, token_hash: str, data: bytes) -> bool:
        held = self._live(session_id)
        if held is not None and held.record.token_hash != token_hash:
            return False
        self._hold(session_id, token_hash, data)
        return True

    async def claim(self, session_id: str, *, expected: StoredRecord, token_hash: str, data: bytes) -> bool:
        held = self._live(session_id)
        if held is None or held.record != expected:
            return False
        self._hold(session_id, token_hash, data)
        return True

    async def delete(self, session_id: str, token_hash: str) -> bool:
        held = self._live(session_id)
        if held is None or held.record.token_hash != token_hash:
            return False
        del self._records[session_id]
        return True

    async def close(self) -> None:
        self._closed = True
        self._records.clear()

    def _hold(self, session_id: str, token_hash: str, data: bytes) -> None:
        expires_at = None if self._ttl_s is None else self._clock() + self._ttl_s
        self._records[session_id] = _Held(StoredRecord(token_hash, bytes(data)), expires_at)

    def _live(self, session_id: str) -> _Held | None:
        if self._closed:
            raise StoreError("InMemoryResumeRecords is closed")
        now = self._clock()
        # Expired records are dropped as they are met; a process's sessions are few.
        for key in [k for k, held in self._records.items() if held.expires_at is not None and held.expires_at <= now]:
            del self._records[key]
        return self._records.get(session_id)
