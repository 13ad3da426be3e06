import pytest

from rtc_server.media.pacing import PlayoutClock


def test_ticks_are_one_interval_apart_with_90khz_pts() -> None:
    clock = PlayoutClock(24)
    first = clock.next_tick(10.0)
    second = clock.next_tick(10.0)
    third = clock.next_tick(10.03)
    assert (first.pts, second.pts, third.pts) == (0, 3750, 7500)
    assert second.due == pytest.approx(10.0 + 1 / 24)
    assert third.skipped == 0


def test_a_late_caller_skips_missed_slots_instead_of_bursting() -> None:
    clock = PlayoutClock(25)
    clock.next_tick(0.0)
    tick = clock.next_tick(1.0)  # a whole second late: slot 25 is now
    assert tick.index == 25
    assert tick.skipped == 24
    assert tick.due <= 1.0
    assert tick.pts == 90_000
    following = clock.next_tick(1.0)
    assert following.index == 26 and following.due > 1.0


def test_slightly_late_caller_keeps_its_slot() -> None:
    clock = PlayoutClock(24)
    clock.next_tick(0.0)
    tick = clock.next_tick(1 / 24 + 0.01)
    assert tick.index == 1 and tick.skipped == 0


def test_fps_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PlayoutClock(0)

