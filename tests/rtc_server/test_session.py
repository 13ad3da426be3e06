import pytest

from rtc_server.session import InvalidSessionTransition, Session, SessionState


def test_normal_life_follows_the_state_machine() -> None:
    session = Session(transport="webrtc")
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
    session = Session(transport="ws")
    for state in path:
        session.transition(state)
    with pytest.raises(InvalidSessionTransition) as info:
        session.transition(illegal)
    assert session.state.value in str(info.value) and illegal.value in str(info.value)


def test_end_falls_back_to_error_where_the_target_is_not_reachable_and_keeps_a_terminal_state() -> None:
    starting = Session(transport="ws")
    starting.end(SessionState.COMPLETE)  # initializing cannot complete
    assert starting.state is SessionState.ERROR
    streaming = Session(transport="ws")
    streaming.transition(SessionState.GPU_BINDING)
    streaming.transition(SessionState.ACTIVE)
    streaming.end(SessionState.TIMEOUT)
    assert streaming.state is SessionState.TIMEOUT
    streaming.end(SessionState.ERROR)
    assert streaming.state is SessionState.TIMEOUT


def test_idle_time_counts_from_the_last_activity() -> None:
    now = [100.0]
    session = Session(clock=lambda: now[0], transport="webrtc")
    now[0] += 8
    assert session.idle_for() == 8
    session.touch()
    now[0] += 3
    assert session.idle_for() == 3


def test_departure_state_depends_on_progress() -> None:
    session = Session(transport="webrtc")
    assert session.end_state_for_departure() is SessionState.ERROR
    session.transition(SessionState.GPU_BINDING)
    session.transition(SessionState.ACTIVE)
    assert session.end_state_for_departure() is SessionState.COMPLETE
