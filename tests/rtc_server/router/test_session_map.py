"""The session -> replica map: in Redis (shared by routers) and in process, with the same contract."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from rtc_server.router.session_map import (
    LocalSessionMap,
    RedisSessionMap,
    SessionMap,
    SessionMapError,
    open_session_map,
)
from tests.processes import free_port

A, B = "http://a:8080", "http://b:8080"


@pytest.fixture(params=["redis", "local"])
async def session_map(request: pytest.FixtureRequest, fresh_redis_url: str) -> AsyncIterator[SessionMap]:
    if request.param == "redis":
        async with open_session_map(fresh_redis_url, key_prefix="test:", ttl_s=0.5) as opened:
            yield opened
    else:
        local = LocalSessionMap(ttl_s=0.5)
        yield local
        await local.close()


async def test_put_get_and_a_later_put_moves_the_session(session_map: SessionMap) -> None:
    assert await session_map.get("s1") is None
    await session_map.put("s1", A)
    assert await session_map.get("s1") == A
    await session_map.put("s1", B)  # resumed elsewhere
    assert await session_map.get("s1") == B


async def test_remove_forgets_only_while_the_entry_names_that_replica(session_map: SessionMap) -> None:
    await session_map.put("s1", B)
    await session_map.remove("s1", A)  # the old replica's cleanup after the session moved on
    assert await session_map.get("s1") == B
    await session_map.remove("s1", B)
    assert await session_map.get("s1") is None


async def test_entries_expire_unless_looked_up(session_map: SessionMap) -> None:
    await session_map.put("kept", A)
    await session_map.put("dropped", A)
    for _ in range(4):  # 0.8 s in all, each lookup within the 0.5 s TTL
        await asyncio.sleep(0.2)
        assert await session_map.get("kept") == A
    assert await session_map.get("dropped") is None


async def test_redis_keys_carry_the_prefix_and_a_ttl(fresh_redis_url: str) -> None:
    async with open_session_map(fresh_redis_url, key_prefix="rtcvs:", ttl_s=60) as session_map:
        assert isinstance(session_map, RedisSessionMap)
        await session_map.put("abc", A)
    client = Redis.from_url(fresh_redis_url)
    try:
        assert await client.get("rtcvs:router:session:abc") == A.encode()
        assert 0 < await client.pttl("rtcvs:router:session:abc") <= 60_000
    finally:
        await client.aclose()


async def test_an_unreachable_redis_fails_operations_with_session_map_error_not_the_start() -> None:
    url = f"redis://127.0.0.1:{free_port('127.0.0.1')}/0"  # nothing listens there
    async with open_session_map(url, key_prefix="rtcvs:", ttl_s=60) as session_map:
        with pytest.raises(SessionMapError):
            await session_map.get("abc")
        with pytest.raises(SessionMapError):
            await session_map.put("abc", A)
