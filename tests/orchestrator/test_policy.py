"""Retry delays and the circuit breaker: pure, the clock passed in."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxyfleet.orchestrator.policy import Breaker, BreakerState, retry_delay


def test_retry_follows_the_eta_when_given() -> None:
    assert retry_delay(12.0, 1, 1.0, 30.0) == 12.0
    assert retry_delay(120.0, 1, 1.0, 30.0) == 30.0  # capped


def test_retry_backs_off_exponentially_without_an_eta() -> None:
    assert [retry_delay(None, n, 0.5, 4.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]


@given(st.integers(1, 200), st.floats(0.01, 10), st.floats(0.01, 100))
def test_backoff_never_exceeds_the_cap(attempt: int, base: float, cap: float) -> None:
    assert 0 < retry_delay(None, attempt, base, cap) <= cap


def test_breaker_opens_after_failures_in_a_row_and_half_opens_after_cooldown() -> None:
    breaker = Breaker(failures=3, cooldown=10.0)
    assert not breaker.failure(0.0)
    assert not breaker.failure(1.0)
    assert breaker.failure(2.0)  # the third opens it
    assert breaker.state(5.0) is BreakerState.OPEN
    assert not breaker.allow(5.0)
    assert breaker.remaining(5.0) == 7.0
    assert breaker.state(12.0) is BreakerState.HALF_OPEN
    assert breaker.allow(12.0)  # the trial
    assert not breaker.allow(12.1)  # only one
    assert breaker.failure(12.5)  # the trial failed: open again, for a full cooldown
    assert breaker.state(20.0) is BreakerState.OPEN
    assert breaker.allow(22.5)
    breaker.success()
    assert breaker.state(22.6) is BreakerState.CLOSED
    assert breaker.consecutive == 0


def test_a_success_resets_the_count() -> None:
    breaker = Breaker(failures=2, cooldown=1.0)
    breaker.failure(0.0)
    breaker.success()
    assert not breaker.failure(0.1)
    assert breaker.state(0.2) is BreakerState.CLOSED
