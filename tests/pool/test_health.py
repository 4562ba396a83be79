"""The health state machine, transition by transition (no clock, no I/O)."""

from __future__ import annotations

import pytest

from proxyfleet.pool.health import (
    Health,
    HealthPolicy,
    HealthRecord,
    Outcome,
    can_lease,
    on_lease,
    settle,
)

POLICY = HealthPolicy(unhealthy_after=2, cooldown=10.0)
HEALTHY = HealthRecord()
QUARANTINED = HealthRecord(Health.QUARANTINED, 2, 110.0)
HALF_OPEN = HealthRecord(Health.HALF_OPEN, 2, 110.0)
DRAINING = HealthRecord(Health.DRAINING, 0, 0.0)


@pytest.mark.parametrize(
    ("record", "outcome", "expected"),
    [
        (HEALTHY, Outcome.SUCCESS, HEALTHY),
        (HEALTHY, Outcome.FAILURE, HealthRecord(Health.HEALTHY, 1, 0.0)),
        (
            HealthRecord(Health.HEALTHY, 1),
            Outcome.FAILURE,
            HealthRecord(Health.QUARANTINED, 2, 110.0),
        ),
        (HealthRecord(Health.HEALTHY, 1), Outcome.SUCCESS, HEALTHY),
        (HealthRecord(Health.HEALTHY, 1), Outcome.NEUTRAL, HealthRecord(Health.HEALTHY, 1)),
        (QUARANTINED, Outcome.SUCCESS, QUARANTINED),  # a late success does not lift quarantine
        (HALF_OPEN, Outcome.SUCCESS, HEALTHY),
        (HALF_OPEN, Outcome.FAILURE, HealthRecord(Health.QUARANTINED, 3, 110.0)),
        (HALF_OPEN, Outcome.NEUTRAL, HealthRecord(Health.QUARANTINED, 2, 100.0)),
        (DRAINING, Outcome.FAILURE, HealthRecord(Health.DRAINING, 1, 0.0)),
        (HealthRecord(Health.DRAINING, 3), Outcome.SUCCESS, DRAINING),
    ],
)
def test_settle(record: HealthRecord, outcome: Outcome, expected: HealthRecord) -> None:
    assert settle(record, outcome, 100.0, POLICY) == expected


def test_lease_rules() -> None:
    assert can_lease(HEALTHY, 0)
    assert not can_lease(QUARANTINED, 109.9)
    assert can_lease(QUARANTINED, 110.0)
    assert not can_lease(HALF_OPEN, 1000)
    assert not can_lease(DRAINING, 1000)
    assert on_lease(QUARANTINED, 110.0).state is Health.HALF_OPEN
    assert on_lease(QUARANTINED, 100.0) == QUARANTINED
    assert on_lease(HEALTHY, 0) == HEALTHY
