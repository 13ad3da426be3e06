"""TokenBucket with a hand-driven clock."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from rtc_server.rate_limit import TokenBucket


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_a_new_bucket_allows_its_whole_burst_then_refuses(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=3, clock=clock)
    assert [bucket.try_take() for _ in range(4)] == [True, True, True, False]
    assert bucket.tokens == 0.0


def test_tokens_come_back_at_the_rate(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=2, clock=clock)
    assert bucket.try_take(2)
    clock.advance(0.25)
    assert not bucket.try_take()
    assert bucket.tokens == pytest.approx(0.5)
    clock.advance(0.25)
    assert bucket.try_take()
    assert not bucket.try_take()


def test_refill_stops_at_the_burst(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=2, clock=clock)
    clock.advance(3600)
    assert bucket.tokens == 2.0
    assert [bucket.try_take() for _ in range(3)] == [True, True, False]


def test_a_refused_take_costs_nothing(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=3, clock=clock)
    assert bucket.try_take(2)
    assert not bucket.try_take(2)
    assert bucket.tokens == pytest.approx(1.0)
    assert bucket.try_take(1)


def test_retry_after_says_when_the_cost_will_be_there(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_s=0.5, burst=4, clock=clock)
    assert bucket.retry_after_s() == 0.0
    assert bucket.try_take(4)
    assert bucket.retry_after_s() == pytest.approx(2.0)
    assert bucket.retry_after_s(3) == pytest.approx(6.0)
    clock.advance(1.5)
    assert bucket.retry_after_s() == pytest.approx(0.5)
    assert bucket.tokens == pytest.approx(0.75)  # asking took nothing
    clock.advance(0.5)
    assert bucket.retry_after_s() == 0.0
    assert bucket.try_take()


def test_a_budget_per_minute_refuses_the_call_after_it_and_refills_one_call_at_a_time(clock: FakeClock) -> None:
    calls_per_minute = 3
    bucket = TokenBucket(rate_per_s=calls_per_minute / 60.0, burst=calls_per_minute, clock=clock)
    assert [bucket.try_take() for _ in range(calls_per_minute + 1)] == [True] * calls_per_minute + [False]
    assert bucket.retry_after_s() == pytest.approx(20.0)
    clock.advance(20.0)  # exactly one call's worth: float rounding must not refuse it
    assert bucket.try_take()
    assert not bucket.try_take()


def test_fractional_costs(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=1, clock=clock)
    assert bucket.try_take(0.4) and bucket.try_take(0.4)
    assert not bucket.try_take(0.4)
    assert bucket.retry_after_s(0.4) == pytest.approx(0.2)


def test_a_clock_stepping_back_neither_refills_nor_drains(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=2, clock=clock)
    assert bucket.try_take(2)
    clock.advance(-50)
    assert bucket.tokens == 0.0
    clock.advance(50.5)  # back to where it was, and half a second on
    assert bucket.tokens == pytest.approx(0.5)


def test_the_default_clock_is_monotonic_time() -> None:
    bucket = TokenBucket(rate_per_s=1000.0, burst=1)
    assert bucket.try_take()
    time.sleep(0.01)
    assert bucket.try_take()


def test_rate_and_burst_are_reported() -> None:
    bucket = TokenBucket(rate_per_s=0.5, burst=30)
    assert (bucket.rate_per_s, bucket.burst) == (0.5, 30.0)


@pytest.mark.parametrize("field", ["rate_per_s", "burst"])
@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, -math.inf])
def test_rate_and_burst_must_be_positive_and_finite(field: str, value: float) -> None:
    kwargs: dict[str, Any] = {"rate_per_s": 1.0, "burst": 1.0, field: value}
    with pytest.raises(ValueError, match=field):
        TokenBucket(**kwargs)


@pytest.mark.parametrize("value", ["1", None, True])
def test_rate_and_burst_must_be_numbers(value: Any) -> None:
    with pytest.raises(TypeError, match="burst must be a number"):
        TokenBucket(rate_per_s=1.0, burst=value)


@pytest.mark.parametrize("cost", [0, -1, math.nan, math.inf])
def test_costs_must_be_positive_and_finite(cost: float, clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=5, clock=clock)
    with pytest.raises(ValueError, match="cost"):
        bucket.try_take(cost)
    with pytest.raises(ValueError, match="cost"):
        bucket.retry_after_s(cost)
    assert bucket.tokens == 5.0


def test_a_cost_beyond_the_burst_is_a_caller_error(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=2, clock=clock)
    with pytest.raises(ValueError, match="exceeds the bucket's burst"):
        bucket.try_take(3)
    with pytest.raises(ValueError, match="exceeds the bucket's burst"):
        bucket.retry_after_s(2.5)
    assert bucket.try_take(2)
