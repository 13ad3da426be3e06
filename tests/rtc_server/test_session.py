import pytest

from rtc_server.session import InvalidSessionTransition, SessionManager, SessionRejected, SessionState


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_normal_life_follows_the_state_machine() -> None:
    manager = SessionManager(max_sessions=1, session_timeout_seconds=10)
    session = manager.create(transport="webrtc")
    for state in (SessionState.GPU_BINDING, SessionState.ACTIVE, SessionState.ACTIVE, SessionState.COMPLETE):
        session.transition(state)
    assert session.state.terminal


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ([], SessionState.ACTIVE),
        ([], SessionState.COMPLETE),
        ([SessionState.QUEUED], SessionState.ACTIVE),
        ([SessionState.GPU_BINDING], SessionState.QUEUED),
        ([SessionState.GPU_BINDING, SessionState.ACTIVE, SessionState.COMPLETE], SessionState.ACTIVE),
        ([SessionState.REJECTED], SessionState.QUEUED),
    ],
)
def test_illegal_edges_raise_naming_both_states(path: list[SessionState], illegal: SessionState) -> None:
    session = SessionManager(max_sessions=1, session_timeout_seconds=10).create(transport="ws")
    for state in path:
        session.transition(state)
    with pytest.raises(InvalidSessionTransition) as info:
        session.transition(illegal)
    assert session.state.value in str(info.value) and illegal.value in str(info.value)


def test_manager_enforces_max_sessions_and_frees_on_remove() -> None:
    manager = SessionManager(max_sessions=2, session_timeout_seconds=10)
    first = manager.create(transport="webrtc")
    manager.create(transport="webrtc")
    with pytest.raises(SessionRejected):
        manager.create(transport="webrtc")
    manager.remove(first.id)
    manager.remove(first.id)
    assert len(manager) == 1
    manager.create(transport="webrtc")


def test_idle_sessions_are_reported_after_the_timeout_but_not_terminal_ones() -> None:
    clock = FakeClock()
    manager = SessionManager(max_sessions=3, session_timeout_seconds=10, clock=clock)
    idle = manager.create(transport="webrtc")
    busy = manager.create(transport="webrtc")
    done = manager.create(transport="webrtc")
    done.transition(SessionState.ERROR)
    clock.now += 8
    busy.touch()
    clock.now += 3
    assert manager.timed_out() == [idle]


def test_departure_state_depends_on_progress() -> None:
    session = SessionManager(max_sessions=1, session_timeout_seconds=10).create(transport="webrtc")
    assert session.end_state_for_departure() is SessionState.ERROR
    session.transition(SessionState.GPU_BINDING)
    session.transition(SessionState.ACTIVE)
    assert session.end_state_for_departure() is SessionState.COMPLETE
