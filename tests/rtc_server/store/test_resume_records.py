"""Contract tests for the resume records: owner-checked writes, compare-and-swap claims, TTLs; memory and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from rtc_server.store.base import StoreError
from rtc_server.store.redis_store import open_redis_backends
from rtc_server.store.resume_records import InMemoryResumeRecords, ResumeRecords, StoredRecord

TTL_S = 30.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    records: ResumeRecords
    elapse: Callable[[float], Awaitable[None]]


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        clock = FakeClock()

        async def elapse(seconds: float) -> None:
            clock.now += seconds

        records: ResumeRecords = InMemoryResumeRecords(ttl_s=TTL_S, clock=clock)
        yield Backend(records, elapse)
        await records.close()
        return
    backends = await open_redis_backends(request.getfixturevalue("fresh_redis_url"), state_ttl_s=TTL_S)
    client = backends.resume._client  # Redis's clock cannot be moved: keys whose TTL has "passed" are deleted
    elapsed = [0.0]

    async def expire(seconds: float) -> None:
        elapsed[0] += seconds
        for key in await client.keys("rtcvs:resume:*"):
            ttl_ms = await client.pttl(key)
            assert 0 < ttl_ms <= TTL_S * 1000
            if ttl_ms <= elapsed[0] * 1000:
                await client.delete(key)

    yield Backend(backends.resume, expire)
    await backends.resume.close()
    await backends.sessions.close()
    await backends.blobs.close()


async def test_the_owner_writes_and_reads_its_record(backend: Backend) -> None:
    records = backend.records
    assert await records.get("s1") is None
    assert await records.put("s1", "owner-a", b"one")
    assert await records.put("s1", "owner-a", b"two")
    assert await records.get("s1") == StoredRecord("owner-a", b"two")


async def test_another_token_can_neither_write_nor_delete_it(backend: Backend) -> None:
    records = backend.records
    await records.put("s1", "owner-a", b"one")
    assert not await records.put("s1", "owner-b", b"evil")
    assert not await records.delete("s1", "owner-b")
    assert await records.get("s1") == StoredRecord("owner-a", b"one")
    assert await records.delete("s1", "owner-a")
    assert await records.get("s1") is None


async def test_a_claim_succeeds_once_and_the_old_owner_has_lost_it(backend: Backend) -> None:
    records = backend.records
    await records.put("s1", "owner-a", b"one")
    seen = await records.get("s1")
    assert seen is not None
    assert await records.claim("s1", expected=seen, token_hash="owner-b", data=b"one")
    # A second claim from the same reading (the same token, raced) finds the record changed.
    assert not await records.claim("s1", expected=seen, token_hash="owner-c", data=b"one")
    assert not await records.put("s1", "owner-a", b"stale")  # the old server's next write
    assert await records.get("s1") == StoredRecord("owner-b", b"one")


async def test_a_claim_from_a_stale_reading_fails(backend: Backend) -> None:
    records = backend.records
    await records.put("s1", "owner-a", b"one")
    seen = await records.get("s1")
    assert seen is not None
    await records.put("s1", "owner-a", b"two")  # the old server wrote once more meanwhile
    assert not await records.claim("s1", expected=seen, token_hash="owner-b", data=b"one")
    assert not await records.claim("missing", expected=seen, token_hash="owner-b", data=b"one")


async def test_records_expire_after_the_state_ttl(backend: Backend) -> None:
    records = backend.records
    await records.put("s1", "owner-a", b"one")
    await backend.elapse(TTL_S / 2)
    assert await records.get("s1") is not None
    await backend.elapse(TTL_S)
    assert await records.get("s1") is None


async def test_a_closed_store_refuses_use(backend: Backend) -> None:
    await backend.records.close()
    with pytest.raises(StoreError):
        await backend.records.get("s1")
