"""Resume records on Redis, shared by every replica (``rtc_server.store.resume_records`` has the contract).

One hash per session, under the store's prefix::

    {prefix}resume:{session_id}   HASH  owner = SHA-256 of the owning resume token, record = the record's JSON

Every change runs as one Lua script, so checking the owner and writing happen in one atomic step:
one round trip per write (EVALSHA), and of two replicas claiming the same record one wins. Each
write refreshes the key's TTL (``store.state_ttl_seconds``, like the live state it points to).
"""

from __future__ import annotations

from redis.asyncio import Redis

from rtc_server.store.base import CloseOnce, StoreError
from rtc_server.store.redis_store import DEFAULT_KEY_PREFIX, DEFAULT_STATE_TTL_S, CloseHook, _as_bytes, _px, _translated
from rtc_server.store.resume_records import ResumeRecords, StoredRecord

__all__ = ["RedisResumeRecords"]

# KEYS[1] the record; ARGV owner, record, ttl ms. Creates the record when absent.
_PUT = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'record', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
# ARGV expected owner, expected record, new owner, new record, ttl ms.
_CLAIM = """
local current = redis.call('HMGET', KEYS[1], 'owner', 'record')
if current[1] ~= ARGV[1] or current[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'record', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""
# ARGV owner.
_DELETE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


class RedisResumeRecords(ResumeRecords):
    """Resume records as Redis hashes; the caller owns ``client`` unless ``close_client`` is given."""

    def __init__(
        self,
        client: Redis,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        ttl_s: float = DEFAULT_STATE_TTL_S,
        close_client: CloseHook | None = None,
    ) -> None:
        self._client = client
        self._prefix = f"{key_prefix}resume:"
        self._ttl_px = _px(ttl_s)
        self._close_client = close_client
        self._closer = CloseOnce()
        self._put = client.register_script(_PUT)
        self._claim = client.register_script(_CLAIM)
        self._delete = client.register_script(_DELETE)

    def _key(self, session_id: str) -> str:
        return self._prefix + session_id

    async def get(self, session_id: str) -> StoredRecord | None:
        self._check_open()
        with _translated(f"HMGET resume record of session {session_id}"):
            owner, data = await self._client.hmget(self._key(session_id), ["owner", "record"])
        owner_bytes, record = _as_bytes(owner, "HMGET"), _as_bytes(data, "HMGET")
        if owner_bytes is None or record is None:
            return None
        return StoredRecord(owner_bytes.decode("ascii", "replace"), record)

    async def put(self, session_id: str, token_hash: str, data: bytes) -> bool:
        self._check_open()
        with _translated(f"write resume record of session {session_id}"):
            return bool(await self._put(keys=[self._key(session_id)], args=[token_hash, data, self._ttl_px]))

    async def claim(self, session_id: str, *, expected: StoredRecord, token_hash: str, data: bytes) -> bool:
        self._check_open()
        with _translated(f"claim resume record of session {session_id}"):
            args: list[bytes | str | int] = [expected.token_hash, expected.data, token_hash, data, self._ttl_px]
            return bool(await self._claim(keys=[self._key(session_id)], args=args))

    async def delete(self, session_id: str, token_hash: str) -> bool:
        self._check_open()
        with _translated(f"delete resume record of session {session_id}"):
            return bool(await self._delete(keys=[self._key(session_id)], args=[token_hash]))

    async def close(self) -> None:
        await self._closer.run(self._aclose)

    async def _aclose(self) -> None:
        if self._close_client is not None:
            await self._close_client()

    def _check_open(self) -> None:
        if self._closer.closed:
            raise StoreError("RedisResumeRecords is closed")
