"""Which replica holds which session: the only state the routers share, kept in Redis.

Key ``{prefix}router:session:{session_id}`` -> the replica's base URL, with a TTL renewed on every
lookup, so a session no router ever removes (a WebRTC peer that just went away) is forgotten in time.
Any router can place, find and end any session: several routers behind a load balancer act as one.

``LocalSessionMap`` is the same map in this process, for a single router without Redis and for tests.
Redis and socket errors become ``SessionMapError`` (``from exc``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["LocalSessionMap", "RedisSessionMap", "SessionMap", "SessionMapError", "open_session_map"]

logger = logging.getLogger(__name__)

KEY_PART = "router:session:"
CONNECT_TIMEOUT_S = 2.0  # a router must not hang on a Redis that went away: lookups fall back
SOCKET_TIMEOUT_S = 2.0

# Delete the key only while it still names this replica: a resume through another router may have
# moved the session meanwhile, and that newer entry must survive the old replica's cleanup.
_DELETE_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class SessionMapError(Exception):
    """The map could not be read or written (Redis unreachable, timed out, refused)."""


class SessionMap(Protocol):
    async def get(self, session_id: str) -> str | None:
        """The replica URL holding ``session_id`` (renewing the entry's TTL), or None."""
        ...

    async def put(self, session_id: str, replica_url: str) -> None:
        """Record (or move) ``session_id`` onto ``replica_url``."""
        ...

    async def remove(self, session_id: str, replica_url: str) -> None:
        """Forget ``session_id`` if it is still on ``replica_url``."""
        ...

    async def close(self) -> None: ...


class LocalSessionMap:
    """The map in this process's memory: correct for one router only."""

    def __init__(self, *, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[str, float]] = {}

    async def get(self, session_id: str) -> str | None:
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        url, expires_at = entry
        now = self._clock()
        if expires_at <= now:
            del self._entries[session_id]
            return None
        self._entries[session_id] = (url, now + self._ttl_s)
        return url

    async def put(self, session_id: str, replica_url: str) -> None:
        now = self._clock()
        # Drop expired entries now and then so the dict cannot grow without bound.
        if len(self._entries) % 1024 == 0:
            self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
        self._entries[session_id] = (replica_url, now + self._ttl_s)

    async def remove(self, session_id: str, replica_url: str) -> None:
        entry = self._entries.get(session_id)
        if entry is not None and entry[0] == replica_url:
            del self._entries[session_id]

    async def close(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class RedisSessionMap:
    """The map in Redis (redis-py asyncio), shared by every router given the same URL and prefix."""

    def __init__(self, client: Redis, *, key_prefix: str, ttl_s: float) -> None:
        self._client = client
        self._prefix = key_prefix + KEY_PART
        self._ttl_ms = max(1, math.ceil(ttl_s * 1000))
        self._delete_if_equal = client.register_script(_DELETE_IF_EQUAL)
        self._closed = False

    def key(self, session_id: str) -> str:
        return self._prefix + session_id

    async def get(self, session_id: str) -> str | None:
        with _translated("lookup"):
            value = await self._client.getex(self.key(session_id), px=self._ttl_ms)
        return value.decode() if isinstance(value, bytes) else value

    async def put(self, session_id: str, replica_url: str) -> None:
        with _translated("write"):
            await self._client.set(self.key(session_id), replica_url.encode(), px=self._ttl_ms)

    async def remove(self, session_id: str, replica_url: str) -> None:
        with _translated("delete"):
            await self._delete_if_equal(keys=[self.key(session_id)], args=[replica_url.encode()])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._client.aclose()


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    from redis.exceptions import RedisError  # redis-py is needed only when redis_url is set

    try:
        yield
    except (RedisError, OSError) as exc:
        raise SessionMapError(f"session map {what} failed: {exc}") from exc


@contextlib.asynccontextmanager
async def open_session_map(redis_url: str | None, *, key_prefix: str, ttl_s: float) -> AsyncIterator[SessionMap]:
    """The Redis map for ``redis_url``, else a local one; closed on exit.

    Redis is pinged once now, but an unreachable Redis does not stop the router: sessions are still
    placed (unrecorded) and a lookup that fails asks the replicas instead (see the app).
    """
    session_map: SessionMap
    if redis_url is None:
        logger.warning("router: no redis_url: the session map lives in this process; run one router only")
        session_map = LocalSessionMap(ttl_s=ttl_s)
    else:
        from redis.asyncio import Redis

        client = Redis.from_url(
            redis_url,
            decode_responses=False,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=SOCKET_TIMEOUT_S,
        )
        session_map = RedisSessionMap(client, key_prefix=key_prefix, ttl_s=ttl_s)
        try:
            with _translated("connection check"):
                await client.ping()
        except SessionMapError as exc:
            logger.error("router: %s; sessions will be placed without being recorded until it answers", exc)
    try:
        yield session_map
    finally:
        await session_map.close()
