"""The replica state machine and the selection rule, as plain code (the original system's cases, and free slots)."""

from __future__ import annotations

from rtc_server.router.config import ReplicaEndpoint
from rtc_server.router.registry import ProbeResult, Replica, ReplicaRegistry, ReplicaState

OK = ProbeResult(ok=True, latency_ms=1.0)
FAIL = ProbeResult(ok=False, error="connection refused")
A, B, C = "http://a:8080", "http://b:8080", "http://c:8080"


def registry(*endpoints: ReplicaEndpoint, failure_threshold: int = 3, recovery_threshold: int = 2) -> ReplicaRegistry:
    return ReplicaRegistry(endpoints, failure_threshold=failure_threshold, recovery_threshold=recovery_threshold)


def at(replicas: ReplicaRegistry, url: str) -> Replica:
    replica = replicas.get(url)
    assert replica is not None
    return replica


def at_selected(replicas: ReplicaRegistry) -> str | None:
    chosen = replicas.select()
    return chosen.url if chosen is not None else None


def primary(url: str) -> ReplicaEndpoint:
    return ReplicaEndpoint(url=url, role="primary")


def secondary(url: str) -> ReplicaEndpoint:
    return ReplicaEndpoint(url=url)


def test_a_replica_starts_unknown_and_one_success_makes_it_healthy() -> None:
    replica = registry(secondary(A)).get(A)
    assert replica is not None and replica.state is ReplicaState.UNKNOWN and not replica.is_healthy
    assert replica.record(OK) is ReplicaState.HEALTHY
    assert replica.last_ok_at is not None and replica.last_latency_ms == 1.0


def test_failures_below_the_threshold_keep_a_replica_healthy_and_one_success_resets_them() -> None:
    replica = registry(secondary(A)).get(A)
    assert replica is not None
    replica.record(OK)
    replica.record(FAIL)
    replica.record(FAIL)
    assert replica.state is ReplicaState.HEALTHY and replica.consecutive_failures == 2
    replica.record(OK)
    assert replica.consecutive_failures == 0
    replica.record(FAIL)
    replica.record(FAIL)
    assert replica.state is ReplicaState.HEALTHY


def test_failure_threshold_failures_in_a_row_make_it_unhealthy() -> None:
    replica = registry(secondary(A)).get(A)
    assert replica is not None
    replica.record(OK)
    for _ in range(3):
        replica.record(FAIL)
    assert replica.state is ReplicaState.UNHEALTHY and replica.last_error == "connection refused"


def test_an_unknown_replica_that_never_answers_becomes_unhealthy_at_the_threshold() -> None:
    replica = registry(secondary(A), failure_threshold=2).get(A)
    assert replica is not None
    assert replica.record(FAIL) is ReplicaState.UNKNOWN
    assert replica.record(FAIL) is ReplicaState.UNHEALTHY


def test_recovery_needs_recovery_threshold_successes_in_a_row() -> None:
    replica = registry(secondary(A), failure_threshold=1, recovery_threshold=2).get(A)
    assert replica is not None
    replica.record(OK)
    replica.record(FAIL)
    assert replica.state is ReplicaState.UNHEALTHY
    replica.record(OK)
    assert replica.state is ReplicaState.UNHEALTHY  # one success is not enough
    replica.record(FAIL)
    replica.record(OK)
    assert replica.state is ReplicaState.UNHEALTHY  # the run was broken: counting starts again
    replica.record(OK)
    assert replica.state is ReplicaState.HEALTHY


def test_a_passive_failure_counts_like_a_failed_probe() -> None:
    replica = registry(secondary(A), failure_threshold=2).get(A)
    assert replica is not None
    replica.record(OK)
    replica.record_failure("refused while relaying an offer")
    replica.record_failure("refused while relaying an offer")
    assert replica.state is ReplicaState.UNHEALTHY


def test_selection_prefers_the_healthy_primary() -> None:
    replicas = registry(secondary(A), primary(B), secondary(C))
    for replica in replicas:
        replica.record(OK)
    chosen = replicas.select()
    assert chosen is not None and chosen.url == B


def test_selection_falls_back_to_the_first_healthy_secondary_when_the_primary_is_down() -> None:
    replicas = registry(primary(A), secondary(B), secondary(C), failure_threshold=1)
    for replica in replicas:
        replica.record(OK)
    at(replicas, A).record(FAIL)
    chosen = replicas.select()
    assert chosen is not None and chosen.url == B


def test_selection_returns_none_when_nothing_is_healthy() -> None:
    replicas = registry(primary(A), secondary(B), failure_threshold=1)
    assert replicas.select() is None  # nothing probed yet: unknown is not healthy
    for replica in replicas:
        replica.record(OK)
        replica.record(FAIL)
    assert replicas.select() is None


def test_selection_skips_a_replica_without_a_free_slot_the_primary_included() -> None:
    replicas = registry(primary(A), secondary(B))
    at(replicas, A).record(ProbeResult(ok=True, free_slots=0, session_capacity=4))
    at(replicas, B).record(ProbeResult(ok=True, free_slots=1, session_capacity=4))
    chosen = replicas.select()
    assert chosen is not None and chosen.url == B
    at(replicas, B).record(ProbeResult(ok=True, free_slots=0, session_capacity=4))
    assert replicas.select() is None


def test_among_secondaries_the_most_free_slots_wins_and_order_breaks_ties() -> None:
    replicas = registry(secondary(A), secondary(B), secondary(C))
    at(replicas, A).record(ProbeResult(ok=True, free_slots=2))
    at(replicas, B).record(ProbeResult(ok=True, free_slots=5))
    at(replicas, C).record(ProbeResult(ok=True, free_slots=5))
    chosen = replicas.select()
    assert chosen is not None and chosen.url == B
    # A replica that does not report slots is still used, after those that report some.
    unknown = registry(secondary(A), secondary(B))
    at(unknown, A).record(OK)
    at(unknown, B).record(ProbeResult(ok=True, free_slots=1))
    assert at_selected(unknown) == B


def test_sessions_placed_since_the_last_probe_count_in_the_ranking_but_never_skip_a_replica() -> None:
    replicas = registry(secondary(A), secondary(B))
    at(replicas, A).record(ProbeResult(ok=True, free_slots=2))
    at(replicas, B).record(ProbeResult(ok=True, free_slots=2))
    first = at(replicas, A)
    assert at_selected(replicas) == A
    first.note_placed()
    assert at_selected(replicas) == B  # A has an estimated 1 left, B 2: the load spreads between probes
    at(replicas, B).note_placed()
    at(replicas, B).note_placed()
    first.note_placed()
    assert first.estimated_free_slots == 0 and first.has_free_slot  # only the replica's own word skips it
    assert at_selected(replicas) == A
    first.record(ProbeResult(ok=True, free_slots=3))
    assert first.estimated_free_slots == 3
    first.note_full()  # the replica refused a session as full: skipped until the next probe
    assert first.has_free_slot is False and at_selected(replicas) == B


def test_select_excludes_replicas_already_tried() -> None:
    replicas = registry(primary(A), secondary(B))
    for replica in replicas:
        replica.record(OK)
    chosen = replicas.select(exclude=[A])
    assert chosen is not None and chosen.url == B
    assert replicas.select(exclude=[A, B]) is None


def test_status_entry_has_the_original_keys_and_ours() -> None:
    replica = registry(primary(A)).get(A)
    assert replica is not None
    replica.record(ProbeResult(ok=True, latency_ms=3.5, free_slots=2, session_capacity=4))
    entry = replica.to_json()
    assert {"url", "primary", "status", "last_ok_at", "last_latency_ms", "consecutive_failures"} <= entry.keys()
    assert entry["role"] == "primary" and entry["state"] == "healthy" and entry["free_slots"] == 2
    assert entry["last_probe_at"] is not None
