"""Continuation-state stores: live per-session states, exportable snapshots, and the blobs behind them.

A state's small top-level payload parts stay inline; a part whose JSON encoding is larger than
``inline_limit_bytes`` goes to a :class:`BlobStore` and the payload holds ``{"$blob": "<id>"}`` in
its place. Live states own their blobs (dropped with the state); a snapshot copies them to new blobs
that expire after ``snapshot_ttl_s``, so an exported state outlives the session it came from.

Exceptions::

    StoreError (RuntimeError)              the backend failed (cause kept with ``from exc``)
    ├── BlobNotFoundError (KeyError)       no such blob, or it expired
    └── InvalidStateError (ValueError)     a malformed blob reference, or one to a missing blob

The externalisation rules are pure functions (:func:`plan_externalisation`, :func:`find_blob_refs`,
:func:`decode_part`); :class:`BlobBackedSessionStore` holds the contract once, and each backend only
supplies record storage. Backends: ``rtc_server.store.memory`` (one process) and
``rtc_server.store.redis_store`` (shared by replicas).
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gpu.generator import ContinuationState

__all__ = [
    "BLOB_REF_KEY",
    "DEFAULT_INLINE_LIMIT_BYTES",
    "DEFAULT_MIME",
    "DEFAULT_SNAPSHOT_TTL_S",
    "JSON_MIME",
    "LIVE_BLOB_GRACE_S",
    "BlobBackedSessionStore",
    "BlobNotFoundError",
    "BlobStore",
    "CloseOnce",
    "InvalidStateError",
    "SessionStore",
    "StateRecord",
    "StoreError",
    "check_ttl",
    "decode_part",
    "encode_json",
    "find_blob_refs",
    "make_blob_ref",
    "new_id",
    "plan_externalisation",
]

logger = logging.getLogger(__name__)

BLOB_REF_KEY = "$blob"
JSON_MIME = "application/json"
DEFAULT_MIME = "application/octet-stream"
DEFAULT_INLINE_LIMIT_BYTES = 64 * 1024  # 64 KiB of JSON per top-level payload part
DEFAULT_SNAPSHOT_TTL_S = 3600.0  # 1 hour for an exported state to be sent back
# Live blobs outlive their state record by this much when states expire, so a load racing the
# record's expiry never finds the record but not its blobs.
LIVE_BLOB_GRACE_S = 60.0

# Ids our stores make are uuid4 hex; accept any short key-safe token so other stores can plug in.
_BLOB_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")


class StoreError(RuntimeError):
    """A state or blob store failed; the backend's exception is the cause."""


class BlobNotFoundError(StoreError, KeyError):
    """No blob with this id, or it expired."""

    def __str__(self) -> str:
        # KeyError.__str__ repr()s its argument; keep the plain message.
        return str(self.args[0]) if self.args else ""


class InvalidStateError(StoreError, ValueError):
    """A state whose blob references are malformed or point at missing or expired blobs."""


def new_id() -> str:
    """A new random id (uuid4 hex) for a blob or a session."""
    return uuid.uuid4().hex


def check_ttl(ttl_s: float | None) -> None:
    if ttl_s is not None and not ttl_s > 0:
        raise ValueError(f"ttl_s must be positive or None, got {ttl_s!r}")


# --- pure externalisation rules -----------------------------------------------------------------


def encode_json(value: Any, *, what: str) -> bytes:
    """Compact UTF-8 JSON for ``value``; InvalidStateError naming ``what`` if it is not JSON."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidStateError(f"{what} is not JSON-serialisable: {exc}") from exc


def make_blob_ref(blob_id: str) -> dict[str, str]:
    """The payload placeholder for a part stored as blob ``blob_id``."""
    return {BLOB_REF_KEY: blob_id}


def _blob_ref(key: str, value: Any) -> str | None:
    """The blob id if ``value`` is a reference, None if it is plain data; raises if malformed."""
    if not isinstance(value, dict) or BLOB_REF_KEY not in value:
        return None
    blob_id = value[BLOB_REF_KEY]
    if len(value) != 1:
        raise InvalidStateError(f"payload key {key!r}: a blob reference must hold only {BLOB_REF_KEY!r}")
    if not isinstance(blob_id, str) or not _BLOB_ID_RE.fullmatch(blob_id):
        raise InvalidStateError(f"payload key {key!r}: malformed blob id {blob_id!r}")
    return blob_id


def find_blob_refs(payload: dict[str, Any]) -> dict[str, str]:
    """Top-level payload keys that are blob references, mapped to their blob ids."""
    refs: dict[str, str] = {}
    for key, value in payload.items():
        if not isinstance(key, str):
            raise InvalidStateError(f"payload key {key!r} is not a string")
        blob_id = _blob_ref(key, value)
        if blob_id is not None:
            refs[key] = blob_id
    return refs


def plan_externalisation(
    payload: dict[str, Any], inline_limit_bytes: int
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Split a resolved payload into its inline parts and the JSON bytes of parts too large to inline."""
    inline: dict[str, Any] = {}
    large: dict[str, bytes] = {}
    for key, value in payload.items():
        if not isinstance(key, str):
            raise InvalidStateError(f"payload key {key!r} is not a string")
        if _blob_ref(key, value) is not None:
            raise InvalidStateError(f"payload key {key!r} is a blob reference where data was expected")
        encoded = encode_json(value, what=f"payload key {key!r}")
        if len(encoded) > inline_limit_bytes:
            large[key] = encoded
        else:
            inline[key] = value
    return inline, large


def decode_part(key: str, blob_id: str, data: bytes) -> Any:
    """The payload part stored in blob ``blob_id`` for ``key``; raises if it is not valid data."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidStateError(f"payload key {key!r}: blob {blob_id!r} does not hold JSON") from exc
    if _blob_ref(key, value) is not None:
        # A part must resolve to data; a reference to a reference would resolve differently on reload.
        raise InvalidStateError(f"payload key {key!r}: blob {blob_id!r} holds another blob reference")
    return value


@dataclass(frozen=True)
class StateRecord:
    """A stored live state: its payload with blob references, and the blob ids it owns."""

    kind: str
    payload: dict[str, Any]
    blobs: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        return encode_json(
            {"kind": self.kind, "payload": self.payload, "blobs": list(self.blobs)}, what="state record"
        )

    @classmethod
    def from_json(cls, data: bytes, *, where: str) -> StateRecord:
        """Decode a stored record; StoreError naming ``where`` if it is corrupt."""
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(f"{where}: corrupt state record") from exc
        if (
            not isinstance(raw, dict)
            or not isinstance(raw.get("kind"), str)
            or not isinstance(raw.get("payload"), dict)
            or not isinstance(raw.get("blobs"), list)
            or not all(isinstance(blob_id, str) for blob_id in raw["blobs"])
        ):
            raise StoreError(f"{where}: corrupt state record")
        return cls(kind=raw["kind"], payload=raw["payload"], blobs=tuple(raw["blobs"]))


# --- the contracts -------------------------------------------------------------------------------


class BlobStore(abc.ABC):
    """Opaque byte blobs by random id, each with an optional time to live."""

    @abc.abstractmethod
    async def put(self, data: bytes, *, mime: str = DEFAULT_MIME, ttl_s: float | None = None) -> str:
        """Store ``data`` under a new random id (uuid4 hex) and return the id."""

    @abc.abstractmethod
    async def get(self, blob_id: str) -> bytes:
        """The blob's bytes; BlobNotFoundError if it is absent or expired."""

    @abc.abstractmethod
    async def drop(self, blob_id: str) -> None:
        """Forget a blob; a missing one is a no-op."""

    @abc.abstractmethod
    async def count(self) -> int:
        """How many live (unexpired) blobs the store holds."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the store's resources; idempotent."""


class SessionStore(abc.ABC):
    """Each session's live continuation state, plus export (snapshot) and import (hydrate)."""

    @abc.abstractmethod
    async def store(self, session_id: str, state: ContinuationState) -> None:
        """Persist the session's live state, replacing any prior one and dropping the prior one's blobs."""

    @abc.abstractmethod
    async def load(self, session_id: str) -> ContinuationState | None:
        """The live state with blob references resolved back into the payload, or None."""

    @abc.abstractmethod
    async def snapshot(self, session_id: str) -> ContinuationState | None:
        """An exportable copy whose large parts sit in new blobs expiring after ``snapshot_ttl_s``."""

    @abc.abstractmethod
    async def hydrate(self, state: ContinuationState, *, session_id: str | None = None) -> str:
        """Install an exported state as a session's live state (a new session when None); returns its id."""

    @abc.abstractmethod
    async def drop(self, session_id: str) -> None:
        """Forget the live state and drop its blobs; a missing one is a no-op."""

    @abc.abstractmethod
    async def count(self) -> int:
        """How many live session states the store holds."""

    @abc.abstractmethod
    async def session_ids(self) -> list[str]:
        """The ids of the sessions holding a live state, sorted (the original's ``iter(store)``)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the store's resources; idempotent."""


class CloseOnce:
    """Runs a close routine once; concurrent and later callers wait for that one run."""

    def __init__(self) -> None:
        self._done: asyncio.Future[None] | None = None

    @property
    def closed(self) -> bool:
        return self._done is not None

    async def run(self, close: Callable[[], Awaitable[None]]) -> None:
        if self._done is not None:
            await asyncio.shield(self._done)
            return
        self._done = asyncio.get_running_loop().create_future()
        try:
            await close()
        finally:
            # The first caller sees any error; the store counts as closed either way.
            self._done.set_result(None)


class BlobBackedSessionStore(SessionStore):
    """The session-store contract over a :class:`BlobStore`; subclasses store records only."""

    def __init__(
        self,
        blobs: BlobStore,
        *,
        inline_limit_bytes: int = DEFAULT_INLINE_LIMIT_BYTES,
        snapshot_ttl_s: float = DEFAULT_SNAPSHOT_TTL_S,
        state_ttl_s: float | None = None,
    ) -> None:
        if inline_limit_bytes < 0:
            raise ValueError(f"inline_limit_bytes must be >= 0, got {inline_limit_bytes}")
        check_ttl(snapshot_ttl_s)
        check_ttl(state_ttl_s)
        self._blobs = blobs
        self._inline_limit_bytes = inline_limit_bytes
        self._snapshot_ttl_s = snapshot_ttl_s
        self._state_ttl_s = state_ttl_s
        self._live_blob_ttl_s = None if state_ttl_s is None else state_ttl_s + LIVE_BLOB_GRACE_S
        self._closer = CloseOnce()

    @property
    def blobs(self) -> BlobStore:
        """The blob store holding this store's large payload parts."""
        return self._blobs

    # Record storage, per backend. Each call is one atomic step in the backend.

    @abc.abstractmethod
    async def _swap_record(self, session_id: str, record: StateRecord) -> StateRecord | None:
        """Write the session's record (refreshing its TTL) and return the one it replaced."""

    @abc.abstractmethod
    async def _get_record(self, session_id: str) -> StateRecord | None: ...

    @abc.abstractmethod
    async def _pop_record(self, session_id: str) -> StateRecord | None:
        """Delete the session's record and return it."""

    @abc.abstractmethod
    async def _count_records(self) -> int: ...

    @abc.abstractmethod
    async def _record_ids(self) -> Iterable[str]:
        """The session ids with a live record, each once, in any order."""

    async def _aclose(self) -> None:
        """Release backend resources; called once by close()."""

    # The contract.

    async def store(self, session_id: str, state: ContinuationState) -> None:
        # A payload holding blob references is accepted too: it is resolved and copied like hydrate().
        await self._install(session_id, state)

    async def load(self, session_id: str) -> ContinuationState | None:
        record = await self._get_record(self._checked(session_id))
        if record is None:
            return None
        payload = await self._resolve(record.payload)
        return ContinuationState(record.kind, payload)

    async def snapshot(self, session_id: str) -> ContinuationState | None:
        record = await self._get_record(self._checked(session_id))
        if record is None:
            return None
        payload = dict(record.payload)
        copies: list[str] = []
        try:
            for key, blob_id in find_blob_refs(record.payload).items():
                data = await self._get_blob(key, blob_id)
                copy_id = await self._blobs.put(data, mime=JSON_MIME, ttl_s=self._snapshot_ttl_s)
                copies.append(copy_id)
                payload[key] = make_blob_ref(copy_id)
        except BaseException:
            await self._drop_blobs_quietly(copies)
            raise
        logger.debug("session %s: snapshot of %s with %d blobs", session_id, record.kind, len(copies))
        return ContinuationState(record.kind, payload)

    async def hydrate(self, state: ContinuationState, *, session_id: str | None = None) -> str:
        session_id = new_id() if session_id is None else session_id
        await self._install(session_id, state)
        return session_id

    async def drop(self, session_id: str) -> None:
        record = await self._pop_record(self._checked(session_id))
        if record is not None:
            await self._drop_blobs(record.blobs)
            logger.debug("session %s: dropped state and %d blobs", session_id, len(record.blobs))

    async def count(self) -> int:
        self._check_open()
        return await self._count_records()

    async def session_ids(self) -> list[str]:
        self._check_open()
        return sorted(await self._record_ids())

    async def close(self) -> None:
        await self._closer.run(self._aclose)

    # Helpers.

    def _check_open(self) -> None:
        if self._closer.closed:
            raise StoreError(f"{type(self).__name__} is closed")

    def _checked(self, session_id: str) -> str:
        self._check_open()
        if not isinstance(session_id, str) or not session_id:
            raise ValueError(f"session_id must be a non-empty string, got {session_id!r}")
        return session_id

    async def _install(self, session_id: str, state: ContinuationState) -> None:
        self._checked(session_id)
        if not isinstance(state.kind, str) or not state.kind:
            raise InvalidStateError(f"state kind must be a non-empty string, got {state.kind!r}")
        if not isinstance(state.payload, dict):
            raise InvalidStateError(f"state payload must be an object, got {type(state.payload).__name__}")
        # Resolving first copies every referenced blob, so the live state never depends on a
        # snapshot's TTL, and a missing blob fails before anything is written.
        resolved = await self._resolve(state.payload)
        inline, large = plan_externalisation(resolved, self._inline_limit_bytes)
        payload = dict(inline)
        owned: list[str] = []
        try:
            for key, data in large.items():
                blob_id = await self._blobs.put(data, mime=JSON_MIME, ttl_s=self._live_blob_ttl_s)
                owned.append(blob_id)
                payload[key] = make_blob_ref(blob_id)
            record = StateRecord(kind=state.kind, payload=payload, blobs=tuple(owned))
            previous = await self._swap_record(session_id, record)
        except BaseException:
            await self._drop_blobs_quietly(owned)
            raise
        if previous is not None:
            await self._drop_blobs(previous.blobs)
        logger.debug("session %s: stored %s state with %d blobs", session_id, state.kind, len(owned))

    async def _resolve(self, payload: dict[str, Any]) -> dict[str, Any]:
        resolved = dict(payload)
        for key, blob_id in find_blob_refs(payload).items():
            resolved[key] = decode_part(key, blob_id, await self._get_blob(key, blob_id))
        return resolved

    async def _get_blob(self, key: str, blob_id: str) -> bytes:
        try:
            return await self._blobs.get(blob_id)
        except BlobNotFoundError as exc:
            raise InvalidStateError(
                f"payload key {key!r} references blob {blob_id!r}, which is missing or expired"
            ) from exc

    async def _drop_blobs(self, blob_ids: Iterable[str]) -> None:
        for blob_id in blob_ids:
            await self._blobs.drop(blob_id)

    async def _drop_blobs_quietly(self, blob_ids: Sequence[str]) -> None:
        # Cleanup after a failure: the original error matters more than a second one.
        try:
            await self._drop_blobs(blob_ids)
        except StoreError:
            logger.warning("could not drop blobs %s after a failed write", list(blob_ids), exc_info=True)
