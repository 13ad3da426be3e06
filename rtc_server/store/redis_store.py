"""Continuation-state stores on Redis (``redis.asyncio``, redis-py >= 5), shared by every replica.

Keys, under a prefix (default ``rtcvs:``)::

    {prefix}state:{session_id}   JSON {kind, payload (with blob references), blobs (ids it owns)}
    {prefix}blob:{blob_id}       the blob's raw bytes
    {prefix}resume:{session_id}  a session's resume record (``rtc_server.store.redis_resume``)

Every key written carries a TTL (SET PX): snapshot blobs ``snapshot_ttl_s``, live states
``state_ttl_s`` refreshed on every store, and live blobs a little longer than their state, so a
crashed server leaves nothing behind for good. ``count()`` walks the prefix with SCAN, which is
O(keys in the database): fine for tests and operations, not for a request path.

Redis, connection and socket errors are translated into ``rtc_server.store.base.StoreError`` (``from exc``).
The client must be created with ``decode_responses=False``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError

from rtc_server.store.base import (
    DEFAULT_INLINE_LIMIT_BYTES,
    DEFAULT_MIME,
    DEFAULT_SNAPSHOT_TTL_S,
    BlobBackedSessionStore,
    BlobNotFoundError,
    BlobStore,
    CloseOnce,
    StateRecord,
    StoreError,
    new_id,
)

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_STATE_TTL_S",
    "RedisBackends",
    "RedisBlobStore",
    "RedisSessionStore",
    "open_redis_backends",
    "open_redis_stores",
]

logger = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX = "rtcvs:"
DEFAULT_STATE_TTL_S = 86400.0  # 1 day without a store() and a live state is gone
DEFAULT_CONNECT_TIMEOUT_S = 5.0
_SCAN_BATCH = 1000  # keys per SCAN round trip (a hint to the server)

CloseHook = Callable[[], Awaitable[None]]

if TYPE_CHECKING:  # redis_resume builds on this module
    from rtc_server.store.redis_resume import RedisResumeRecords


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn redis and socket errors raised in the block into StoreError, and give back a lost cancellation."""
    task = asyncio.current_task()
    cancels_before = task.cancelling() if task is not None else 0
    try:
        yield
    except (RedisError, ConnectionError, OSError) as exc:
        raise StoreError(f"redis {what} failed: {exc}") from exc
    # redis-py sends each command under asyncio.wait_for, which on Python 3.11 swallows a
    # cancellation that arrives as the command completes (CPython gh-86296): the command returns
    # normally to a task that was cancelled. Measured: most cancellations of a task in a tight
    # SET loop were lost, so a session being torn down went on making segments. The task still
    # counts the request, so a cancellation asked for during the command is raised here.
    if task is not None and task.cancelling() > cancels_before:
        raise asyncio.CancelledError(f"{task.get_name()} was cancelled during redis {what}")


def _px(ttl_s: float) -> int:
    """A TTL in whole milliseconds for SET PX, never rounded down to zero."""
    return max(1, math.ceil(ttl_s * 1000))


def _glob_escape(text: str) -> str:
    """``text`` as a literal inside a SCAN MATCH pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _as_bytes(value: Any, what: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    raise StoreError(f"redis {what} returned {type(value).__name__}; use a client with decode_responses=False")


async def _scan_keys(client: Redis, pattern: str) -> set[bytes]:
    # SCAN may return a key twice while the server rehashes; a set holds it once.
    keys: set[bytes] = set()
    with _translated("SCAN"):
        async for key in client.scan_iter(match=pattern, count=_SCAN_BATCH):
            keys.add(key)
    return keys


async def _count_keys(client: Redis, pattern: str) -> int:
    return len(await _scan_keys(client, pattern))


class RedisBlobStore(BlobStore):
    """Blobs as plain Redis strings; ``mime`` is advisory and not persisted.

    The caller owns ``client`` unless ``close_client`` is given: close() then awaits it once.
    """

    def __init__(
        self, client: Redis, *, key_prefix: str = DEFAULT_KEY_PREFIX, close_client: CloseHook | None = None
    ) -> None:
        self._client = client
        self._prefix = f"{key_prefix}blob:"
        self._close_client = close_client
        self._closer = CloseOnce()

    def _key(self, blob_id: str) -> str:
        return self._prefix + blob_id

    async def put(self, data: bytes, *, mime: str = DEFAULT_MIME, ttl_s: float | None = None) -> str:
        self._check_open()
        if ttl_s is not None and not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive or None, got {ttl_s!r}")
        blob_id = new_id()
        with _translated(f"SET blob {blob_id}"):
            await self._client.set(self._key(blob_id), data, px=None if ttl_s is None else _px(ttl_s))
        return blob_id

    async def get(self, blob_id: str) -> bytes:
        self._check_open()
        with _translated(f"GET blob {blob_id}"):
            data = _as_bytes(await self._client.get(self._key(blob_id)), "GET")
        if data is None:
            raise BlobNotFoundError(f"blob {blob_id!r} not found or expired")
        return data

    async def drop(self, blob_id: str) -> None:
        self._check_open()
        with _translated(f"DEL blob {blob_id}"):
            await self._client.delete(self._key(blob_id))

    async def count(self) -> int:
        self._check_open()
        return await _count_keys(self._client, _glob_escape(self._prefix) + "*")

    async def close(self) -> None:
        await self._closer.run(self._aclose)

    async def _aclose(self) -> None:
        if self._close_client is not None:
            await self._close_client()

    def _check_open(self) -> None:
        if self._closer.closed:
            raise StoreError("RedisBlobStore is closed")


class RedisSessionStore(BlobBackedSessionStore):
    """Live states as Redis strings with a TTL refreshed on every store; ``blobs`` is not closed by it.

    The caller owns ``client`` unless ``close_client`` is given: close() then awaits it once.
    """

    def __init__(
        self,
        client: Redis,
        blobs: BlobStore,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        inline_limit_bytes: int = DEFAULT_INLINE_LIMIT_BYTES,
        snapshot_ttl_s: float = DEFAULT_SNAPSHOT_TTL_S,
        state_ttl_s: float = DEFAULT_STATE_TTL_S,
        close_client: CloseHook | None = None,
    ) -> None:
        super().__init__(
            blobs, inline_limit_bytes=inline_limit_bytes, snapshot_ttl_s=snapshot_ttl_s, state_ttl_s=state_ttl_s
        )
        self._client = client
        self._prefix = f"{key_prefix}state:"
        self._state_px = _px(state_ttl_s)
        self._close_client = close_client

    def _key(self, session_id: str) -> str:
        return self._prefix + session_id

    async def _swap_record(self, session_id: str, record: StateRecord) -> StateRecord | None:
        data = record.to_json()
        # SET ... GET swaps atomically, so two racing stores each drop exactly the blobs they replaced.
        with _translated(f"SET state of session {session_id}"):
            previous = await self._client.set(self._key(session_id), data, px=self._state_px, get=True)
        return self._decode(session_id, _as_bytes(previous, "SET GET"))

    async def _get_record(self, session_id: str) -> StateRecord | None:
        with _translated(f"GET state of session {session_id}"):
            data = await self._client.get(self._key(session_id))
        return self._decode(session_id, _as_bytes(data, "GET"))

    async def _pop_record(self, session_id: str) -> StateRecord | None:
        with _translated(f"GETDEL state of session {session_id}"):
            data = await self._client.getdel(self._key(session_id))
        return self._decode(session_id, _as_bytes(data, "GETDEL"))

    async def _count_records(self) -> int:
        return await _count_keys(self._client, _glob_escape(self._prefix) + "*")

    async def _record_ids(self) -> list[str]:
        keys = await _scan_keys(self._client, _glob_escape(self._prefix) + "*")
        prefix = self._prefix.encode()
        return [key[len(prefix) :].decode() for key in keys if key.startswith(prefix)]

    async def _aclose(self) -> None:
        if self._close_client is not None:
            await self._close_client()

    @staticmethod
    def _decode(session_id: str, data: bytes | None) -> StateRecord | None:
        if data is None:
            return None
        return StateRecord.from_json(data, where=f"session {session_id}")


class _SharedClient:
    """Closes a client when the last of its holders lets go."""

    def __init__(self, client: Redis, holders: int) -> None:
        self._client = client
        self._holders = holders

    async def release(self) -> None:
        self._holders -= 1
        if self._holders == 0:
            with _translated("close"):
                await self._client.aclose()


def _redacted(url: str) -> str:
    """``url`` with any password replaced, fit for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
    except ValueError:
        return "<unparseable redis URL>"


async def _connect(url: str, client_options: dict[str, Any]) -> Redis:
    """A client for ``url`` that has answered PING; StoreError naming the URL (password redacted) if none."""
    shown = _redacted(url)
    if client_options.get("decode_responses"):
        raise ValueError("the stores need raw bytes: decode_responses must be False")
    client_options["decode_responses"] = False
    client_options.setdefault("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT_S)
    try:
        client = Redis.from_url(url, **client_options)
    except ValueError as exc:
        raise StoreError(f"invalid redis URL {shown}: {exc}") from exc
    try:
        await client.ping()
    except (RedisError, ConnectionError, OSError) as exc:
        await client.aclose()
        raise StoreError(f"cannot connect to redis at {shown}: {exc}") from exc
    return client


async def open_redis_stores(
    url: str,
    *,
    key_prefix: str = DEFAULT_KEY_PREFIX,
    inline_limit_bytes: int = DEFAULT_INLINE_LIMIT_BYTES,
    snapshot_ttl_s: float = DEFAULT_SNAPSHOT_TTL_S,
    state_ttl_s: float = DEFAULT_STATE_TTL_S,
    **client_options: Any,
) -> tuple[RedisSessionStore, RedisBlobStore]:
    """Connect to ``url``, check it answers PING, and return a session store and its blob store.

    Both share one client, closed once both stores are closed (in either order). ``client_options``
    go to ``Redis.from_url`` (a 5 s connect timeout unless given). StoreError names the URL
    (password redacted) when it cannot connect.
    """
    client = await _connect(url, client_options)
    shared = _SharedClient(client, holders=2)
    sessions, blobs = _stores(client, shared, key_prefix, inline_limit_bytes, snapshot_ttl_s, state_ttl_s)
    logger.info("connected to redis at %s (prefix %r)", _redacted(url), key_prefix)
    return sessions, blobs


@dataclass(frozen=True)
class RedisBackends:
    """Everything a server keeps in Redis, over one client that closes when all three are closed."""

    sessions: RedisSessionStore
    blobs: RedisBlobStore
    resume: RedisResumeRecords


async def open_redis_backends(
    url: str,
    *,
    key_prefix: str = DEFAULT_KEY_PREFIX,
    inline_limit_bytes: int = DEFAULT_INLINE_LIMIT_BYTES,
    snapshot_ttl_s: float = DEFAULT_SNAPSHOT_TTL_S,
    state_ttl_s: float = DEFAULT_STATE_TTL_S,
    **client_options: Any,
) -> RedisBackends:
    """Like :func:`open_redis_stores`, plus the sessions' resume records (same prefix, TTL ``state_ttl_s``)."""
    from rtc_server.store.redis_resume import RedisResumeRecords

    client = await _connect(url, client_options)
    shared = _SharedClient(client, holders=3)
    sessions, blobs = _stores(client, shared, key_prefix, inline_limit_bytes, snapshot_ttl_s, state_ttl_s)
    resume = RedisResumeRecords(client, key_prefix=key_prefix, ttl_s=state_ttl_s, close_client=shared.release)
    logger.info("connected to redis at %s (prefix %r)", _redacted(url), key_prefix)
    return RedisBackends(sessions=sessions, blobs=blobs, resume=resume)


def _stores(
    client: Redis,
    shared: _SharedClient,
    key_prefix: str,
    inline_limit_bytes: int,
    snapshot_ttl_s: float,
    state_ttl_s: float,
) -> tuple[RedisSessionStore, RedisBlobStore]:
    blobs = RedisBlobStore(client, key_prefix=key_prefix, close_client=shared.release)
    sessions = RedisSessionStore(
        client,
        blobs,
        key_prefix=key_prefix,
        inline_limit_bytes=inline_limit_bytes,
        snapshot_ttl_s=snapshot_ttl_s,
        state_ttl_s=state_ttl_s,
        close_client=shared.release,
    )
    return sessions, blobs
