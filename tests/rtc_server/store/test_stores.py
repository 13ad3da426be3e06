"""Contract tests for the continuation-state stores: one suite, run on memory and on a real Redis."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from gpu.generator import ContinuationState
from rtc_server.store.memory import InMemoryBlobStore, InMemorySessionStore
from rtc_server.store.redis_store import open_redis_stores
from rtc_server.store.base import (
    BLOB_REF_KEY,
    BlobNotFoundError,
    BlobStore,
    InvalidStateError,
    SessionStore,
    StoreError,
    find_blob_refs,
    make_blob_ref,
    plan_externalisation,
)

SMALL_LIMIT = 256  # bytes: "frames" below is far larger, "cursor" far smaller
KIND = "synthetic.v1"


def big_state(seed: int = 0) -> ContinuationState:
    """A state with one small part and two parts too large to inline under SMALL_LIMIT."""
    return ContinuationState(
        KIND,
        {
            "cursor": {"segment_idx": seed, "frame_number": 24 * seed},
            "frames": [[seed, i, i * 2] for i in range(200)],
            "motion": {"velocities": [float(i) / 7 for i in range(100)]},
        },
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """Builds stores of one backend and lets time pass for their TTLs."""

    name: str
    make: Callable[..., Awaitable[tuple[SessionStore, BlobStore]]]
    elapse: Callable[[float], Awaitable[None]]


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    opened: list[tuple[SessionStore, BlobStore]] = []

    if request.param == "memory":
        clock = FakeClock()

        async def make(**options: Any) -> tuple[SessionStore, BlobStore]:
            blobs = InMemoryBlobStore(clock=clock)
            sessions = InMemorySessionStore(blobs, clock=clock, **options)
            opened.append((sessions, blobs))
            return sessions, blobs

        async def elapse(seconds: float) -> None:
            clock.now += seconds

    else:
        url = request.getfixturevalue("fresh_redis_url")

        async def make(**options: Any) -> tuple[SessionStore, BlobStore]:
            sessions, blobs = await open_redis_stores(url, **options)
            opened.append((sessions, blobs))
            return sessions, blobs

        async def elapse(seconds: float) -> None:
            await asyncio.sleep(seconds)

    yield Backend(request.param, make, elapse)
    for sessions, blobs in reversed(opened):
        await sessions.close()
        await blobs.close()


@pytest.fixture
async def stores(backend: Backend) -> tuple[SessionStore, BlobStore]:
    return await backend.make(inline_limit_bytes=SMALL_LIMIT)


# --- pure rules ---------------------------------------------------------------------------------


def test_plan_externalisation_splits_by_json_size() -> None:
    inline, large = plan_externalisation(big_state().payload, SMALL_LIMIT)
    assert set(inline) == {"cursor"}
    assert set(large) == {"frames", "motion"}
    assert json.loads(large["frames"]) == big_state().payload["frames"]


def test_plan_externalisation_keeps_parts_at_the_limit_inline() -> None:
    payload = {"a": "x" * 8}  # JSON: "xxxxxxxx" is 10 bytes
    assert plan_externalisation(payload, 10) == (payload, {})
    assert plan_externalisation(payload, 9)[1] == {"a": b'"xxxxxxxx"'}


def test_find_blob_refs_ignores_nested_refs_and_rejects_malformed_ones() -> None:
    payload = {"a": make_blob_ref("abc123"), "b": {"inner": make_blob_ref("zz")}, "c": 3}
    assert find_blob_refs(payload) == {"a": "abc123"}
    with pytest.raises(InvalidStateError, match="'a'"):
        find_blob_refs({"a": {BLOB_REF_KEY: 7}})


def test_non_json_payload_is_invalid() -> None:
    with pytest.raises(InvalidStateError, match="'t'"):
        plan_externalisation({"t": {1, 2}}, SMALL_LIMIT)


# --- the contract, on every backend ---------------------------------------------------------------


async def test_store_then_load_round_trips(stores: tuple[SessionStore, BlobStore]) -> None:
    sessions, _ = stores
    state = ContinuationState(KIND, {"segment_idx": 3, "nested": {"a": [1, 2.5, "x", None, True]}})
    await sessions.store("s1", state)
    assert await sessions.load("s1") == state
    assert await sessions.load("unknown") is None
    assert await sessions.count() == 1


async def test_large_parts_are_externalised_and_resolved_back(stores: tuple[SessionStore, BlobStore]) -> None:
    sessions, blobs = stores
    state = big_state(1)
    await sessions.store("s1", state)
    assert await blobs.count() == 2
    assert await sessions.load("s1") == state
    snapshot = await sessions.snapshot("s1")
    assert snapshot is not None
    assert snapshot.payload["cursor"] == state.payload["cursor"]
    refs = find_blob_refs(snapshot.payload)
    assert set(refs) == {"frames", "motion"}
    assert json.loads(await blobs.get(refs["frames"])) == state.payload["frames"]
    json.dumps(snapshot.to_wire())  # exportable as is


async def test_store_replaces_the_prior_state_and_drops_its_blobs(stores: tuple[SessionStore, BlobStore]) -> None:
    sessions, blobs = stores
    await sessions.store("s1", big_state(1))
    await sessions.store("s1", ContinuationState(KIND, {"cursor": 2, "frames": list(range(300))}))
    assert await blobs.count() == 1
    assert await sessions.count() == 1
    loaded = await sessions.load("s1")
    assert loaded is not None and loaded.payload == {"cursor": 2, "frames": list(range(300))}


async def test_drop_removes_the_state_and_its_blobs(stores: tuple[SessionStore, BlobStore]) -> None:
    sessions, blobs = stores
    await sessions.store("s1", big_state(1))
    await sessions.drop("s1")
    assert await sessions.load("s1") is None
    assert await sessions.count() == 0
    assert await blobs.count() == 0
    await sessions.drop("s1")  # missing: no-op


async def test_snapshot_survives_the_drop_of_its_session(stores: tuple[SessionStore, BlobStore]) -> None:
    sessions, _ = stores
    await sessions.store("s1", big_state(1))
    snapshot = await sessions.snapshot("s1")
    assert snapshot is not None
    await sessions.drop("s1")
    assert await sessions.snapshot("s1") is None
    resumed = await sessions.hydrate(snapshot)
    assert await sessions.load(resumed) == big_state(1)


async def test_snapshot_blobs_expire_after_the_ttl(backend: Backend) -> None:
    sessions, blobs = await backend.make(inline_limit_bytes=SMALL_LIMIT, snapshot_ttl_s=0.3)
    await sessions.store("s1", big_state(1))
    snapshot = await sessions.snapshot("s1")
    assert snapshot is not None
    assert await blobs.count() == 4
    frames_blob = find_blob_refs(snapshot.payload)["frames"]
    await backend.elapse(0.5)
    assert await blobs.count() == 2  # the live state's blobs do not expire
    with pytest.raises(BlobNotFoundError):
        await blobs.get(frames_blob)
    with pytest.raises(InvalidStateError, match=frames_blob):
        await sessions.hydrate(snapshot)
    assert await sessions.load("s1") == big_state(1)


async def test_hydrate_with_a_missing_blob_names_it(stores: tuple[SessionStore, BlobStore]) -> None:
    sessions, blobs = stores
    missing = "0123456789abcdef0123456789abcdef"
    state = ContinuationState(KIND, {"cursor": 1, "frames": make_blob_ref(missing)})
    with pytest.raises(InvalidStateError, match=f"'frames'.*{missing}"):
        await sessions.hydrate(state, session_id="s1")
    assert await sessions.count() == 0
    assert await blobs.count() == 0


@pytest.mark.parametrize(
    "ref",
    [
        {BLOB_REF_KEY: 42},
        {BLOB_REF_KEY: None},
        {BLOB_REF_KEY: ""},
        {BLOB_REF_KEY: "a b"},
        {BLOB_REF_KEY: "ab", "x": 1},
    ],
    ids=["int", "null", "empty", "space", "extra-key"],
)
async def test_hydrate_with_a_malformed_ref_names_the_key(
    stores: tuple[SessionStore, BlobStore], ref: dict[str, Any]
) -> None:
    sessions, _ = stores
    with pytest.raises(InvalidStateError, match="'frames'") as caught:
        await sessions.hydrate(ContinuationState(KIND, {"frames": ref}))
    assert isinstance(caught.value, ValueError)
    assert await sessions.count() == 0


async def test_hydrate_of_a_blob_that_is_not_json_names_it(stores: tuple[SessionStore, BlobStore]) -> None:
    sessions, blobs = stores
    blob_id = await blobs.put(b"\xff not json")
    with pytest.raises(InvalidStateError, match=f"'frames'.*{blob_id}"):
        await sessions.hydrate(ContinuationState(KIND, {"frames": make_blob_ref(blob_id)}))
    assert await sessions.count() == 0


async def test_hydrate_of_an_inline_state(stores: tuple[SessionStore, BlobStore]) -> None:
    sessions, _ = stores
    state = ContinuationState(KIND, {"segment_idx": 4, "frame_number": 96})
    session_id = await sessions.hydrate(state)
    assert len(session_id) == 32 and int(session_id, 16) >= 0
    assert await sessions.load(session_id) == state
    assert await sessions.hydrate(state, session_id="chosen") == "chosen"
    assert await sessions.load("chosen") == state


async def test_hydrate_copies_the_snapshot_blobs(stores: tuple[SessionStore, BlobStore]) -> None:
    sessions, blobs = stores
    await sessions.store("s1", big_state(1))
    snapshot = await sessions.snapshot("s1")
    assert snapshot is not None
    resumed = await sessions.hydrate(snapshot)
    for blob_id in find_blob_refs(snapshot.payload).values():
        await blobs.drop(blob_id)
    await sessions.drop("s1")
    assert await sessions.load(resumed) == big_state(1)
    await sessions.drop(resumed)
    assert await blobs.count() == 0


async def test_a_thousand_sessions_stored_and_dropped_leave_nothing(
    stores: tuple[SessionStore, BlobStore],
) -> None:
    sessions, blobs = stores
    ids = [f"session-{i}" for i in range(1000)]

    async def cycle(session_id: str, i: int) -> None:
        await sessions.store(session_id, ContinuationState(KIND, {"i": i, "frames": [i] * 200}))
        await sessions.store(session_id, ContinuationState(KIND, {"i": i, "frames": [i] * 220}))

    # Concurrent in batches, as a server would be, to catch swaps that lose a blob.
    for start in range(0, len(ids), 100):
        await asyncio.gather(*(cycle(s, i) for i, s in enumerate(ids[start : start + 100], start)))
    assert await sessions.count() == 1000
    assert await blobs.count() == 1000
    for start in range(0, len(ids), 100):
        await asyncio.gather(*(sessions.drop(s) for s in ids[start : start + 100]))
    assert await sessions.count() == 0
    assert await blobs.count() == 0


async def test_blob_get_of_an_unknown_id_is_not_found(stores: tuple[SessionStore, BlobStore]) -> None:
    _, blobs = stores
    with pytest.raises(BlobNotFoundError, match="nope") as caught:
        await blobs.get("nope")
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, StoreError)
    await blobs.drop("nope")  # missing: no-op


async def test_blob_ttl_and_round_trip(backend: Backend) -> None:
    _, blobs = await backend.make()
    kept = await blobs.put(b"\x00\xffraw")
    fleeting = await blobs.put(b"gone soon", ttl_s=0.2)
    assert len(kept) == 32 and kept != fleeting
    assert await blobs.get(fleeting) == b"gone soon"
    await backend.elapse(0.3)
    assert await blobs.get(kept) == b"\x00\xffraw"
    assert await blobs.count() == 1
    with pytest.raises(ValueError):
        await blobs.put(b"x", ttl_s=0)


async def test_close_is_idempotent_and_later_use_fails(backend: Backend) -> None:
    sessions, blobs = await backend.make()
    await asyncio.gather(sessions.close(), sessions.close())
    await sessions.close()
    await asyncio.gather(blobs.close(), blobs.close())
    with pytest.raises(StoreError, match="closed"):
        await sessions.load("s1")
    with pytest.raises(StoreError, match="closed"):
        await blobs.put(b"x")


# --- Redis specifics -------------------------------------------------------------------------------


async def test_redis_live_state_and_blobs_carry_a_ttl(fresh_redis_url: str) -> None:
    sessions, blobs = await open_redis_stores(fresh_redis_url, inline_limit_bytes=SMALL_LIMIT, state_ttl_s=30.0)
    try:
        await sessions.store("s1", big_state(1))
        client = sessions._client  # inspecting the keys the store wrote
        keys = [key async for key in client.scan_iter(match="rtcvs:*")]
        assert len(keys) == 3
        for key in keys:
            ttl_ms = await client.pttl(key)
            assert 0 < ttl_ms <= 30_000 + 60_000, key
        assert 0 < await client.pttl("rtcvs:state:s1") <= 30_000
    finally:
        await sessions.close()
        await blobs.close()


async def test_redis_stores_use_their_prefix(fresh_redis_url: str) -> None:
    a_sessions, a_blobs = await open_redis_stores(fresh_redis_url, key_prefix="a*:")
    b_sessions, b_blobs = await open_redis_stores(fresh_redis_url, key_prefix="b:")
    try:
        await a_sessions.store("s1", ContinuationState(KIND, {"x": 1}))
        await a_blobs.put(b"x")
        assert (await a_sessions.count(), await a_blobs.count()) == (1, 1)
        assert (await b_sessions.count(), await b_blobs.count()) == (0, 0)
    finally:
        for store in (a_sessions, a_blobs, b_sessions, b_blobs):
            await store.close()


async def test_redis_url_that_refuses_is_a_store_error_naming_it() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    with pytest.raises(StoreError, match=f"127.0.0.1:{port}") as caught:
        await open_redis_stores(url)
    assert "hunter2" not in str(caught.value)
    assert caught.value.__cause__ is not None


async def test_redis_url_that_never_answers_is_a_store_error_naming_it() -> None:
    with socket.socket() as silent:  # accepts connections, never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        with pytest.raises(StoreError, match=url):
            await open_redis_stores(url, socket_timeout=0.2)
