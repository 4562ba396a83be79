"""Retry delays and the circuit breaker: pure, the clock passed in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyfleet.orchestrator import policy
from proxyfleet.orchestrator.policy import Breaker, BreakerState, retry_delay


def test_retry_follows_the_eta_when_given() -> None:
    assert retry_delay(12.0, 1, 1.0, 30.0) == 12.0
    # the orchestrator's ETA, not backoff_cap, says when: its breaker answers 300 s
    assert retry_delay(300.0, 1, 1.0, 1.0) == 300.0
    assert retry_delay(1e9, 1, 1.0, 30.0) == policy.MAX_ETA  # but not for ever
    assert retry_delay(-5.0, 3, 1.0, 30.0) == 0.0


@pytest.mark.parametrize(
    ("retryable", "eta", "attempt", "expected"),
    [
        (False, 300.0, 1, None),  # can_retry: false ends the burst, ETA or not
        (False, None, 1, None),
        (True, 12.0, 1, 12.0),  # can_retry with an ETA: try again then
        (True, None, 2, 1.0),  # no ETA: the backoff
        (True, 5.0, 5, None),  # the last attempt of the burst
    ],
)
def test_after_a_failure_the_burst_goes_on_only_when_it_may(
    retryable: bool, eta: float | None, attempt: int, expected: float | None
) -> None:
    assert policy.next_attempt(retryable, eta, attempt, 5, 0.5, 4.0) == expected


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


def test_a_refused_key_holds_calls_back_for_a_cooldown_after_each_refusal() -> None:
    gate = policy.KeyGate(cooldown=30.0)
    assert not gate.holds(0.0)
    assert gate.reason is None
    assert gate.refused("403 invalid token", 10.0)  # the first refusal: said at ERROR
    assert gate.holds(39.9)
    assert not gate.holds(40.0)  # then one call may try again
    assert not gate.refused("403 invalid token", 40.0)  # not the first: said already
    assert gate.holds(69.0)
    assert gate.reason == "403 invalid token"  # until a call succeeds, whatever the time
    gate.accepted()
    assert (gate.holds(70.0), gate.reason) == (False, None)
    assert gate.refused("401 missing bearer token", 80.0)  # refused again later: said again
