"""The worker lifecycle: the edges both pools may take, and the ones they may not."""

from __future__ import annotations

import pytest

from gpu.worker_state import InvalidTransitionError, WorkerState, advance

S = WorkerState


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.NEW, S.BOOTING),
        (S.BOOTING, S.READY),
        (S.BOOTING, S.FAILED),
        (S.READY, S.RESTARTING),
        (S.RESTARTING, S.BOOTING),
        (S.READY, S.STOPPING),
        (S.FAILED, S.STOPPING),
        (S.NEW, S.STOPPING),
        (S.STOPPING, S.STOPPED),
    ],
)
def test_lifecycle_edges_are_allowed(current: WorkerState, target: WorkerState) -> None:
    assert advance(current, target) is target


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.FAILED, S.READY),  # a late ready report from a worker given up on
        (S.STOPPING, S.READY),
        (S.STOPPED, S.BOOTING),
        (S.NEW, S.READY),
        (S.READY, S.BOOTING),
        (S.STOPPED, S.STOPPING),
    ],
)
def test_other_moves_are_refused_naming_both_states(current: WorkerState, target: WorkerState) -> None:
    assert not current.can_become(target)
    with pytest.raises(InvalidTransitionError, match=f"from {current.value} to {target.value}"):
        advance(current, target)


def test_every_state_but_stopped_can_be_stopped() -> None:
    assert all(state.can_become(S.STOPPING) for state in S if state not in (S.STOPPING, S.STOPPED))
