"""Backend health as a pure state machine: no clocks read, no I/O.

::

                 failure × unhealthy_after
      HEALTHY ───────────────────────────────▶ QUARANTINED
         ▲                                       │   cooldown elapsed and a lease
         │ success                               ▼   is taken: the half-open probe
         └──────────────────────────────────── HALF_OPEN
                                                 │ failure → QUARANTINED (new cooldown)
                                                 │ neutral → QUARANTINED (may probe at once)

A ``neutral`` outcome (the client went away, the request was cancelled) says nothing about the
backend and changes no counter. ``DRAINING`` is set and cleared by an operator; a draining backend
keeps serving the leases it has but takes no new one. Times are unix seconds (wall clock), so
that processes sharing a store agree on when a quarantine ends.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace

from proxyfleet.pool.backend import BackendState

__all__ = [
    "Health",
    "HealthPolicy",
    "HealthRecord",
    "Outcome",
    "can_lease",
    "on_lease",
    "settle",
    "state_of",
]


class Health(enum.Enum):
    HEALTHY = "healthy"
    QUARANTINED = "quarantined"
    HALF_OPEN = "half_open"
    DRAINING = "draining"


class Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    unhealthy_after: int = 3
    cooldown: float = 30.0


@dataclass(frozen=True, slots=True)
class HealthRecord:
    state: Health = Health.HEALTHY
    consecutive_failures: int = 0
    quarantined_until: float = 0.0  # unix time


def state_of(record: HealthRecord, inflight: int) -> BackendState:
    """What a backend with this health and this many leases shows as."""
    if record.state is Health.HEALTHY:
        return BackendState.BUSY if inflight else BackendState.IDLE
    return _SHOWN[record.state]


_SHOWN = {
    Health.QUARANTINED: BackendState.UNHEALTHY,
    Health.HALF_OPEN: BackendState.HALF_OPEN,
    Health.DRAINING: BackendState.DRAINING,
}


def can_lease(record: HealthRecord, now: float) -> bool:
    """May a new lease be taken on a backend in this state (capacity aside)?"""
    if record.state is Health.HEALTHY:
        return True
    return record.state is Health.QUARANTINED and now >= record.quarantined_until


def on_lease(record: HealthRecord, now: float) -> HealthRecord:
    """A lease was taken: a quarantined backend past its cooldown goes half-open."""
    if record.state is Health.QUARANTINED and now >= record.quarantined_until:
        return replace(record, state=Health.HALF_OPEN)
    return record


_FRESH = HealthRecord()


def _success(record: HealthRecord, now: float, policy: HealthPolicy) -> HealthRecord:
    if record is _FRESH:
        return record
    if record.state is Health.DRAINING:
        return replace(record, consecutive_failures=0)
    if record.state is Health.QUARANTINED:
        return record  # a late success from before the quarantine does not lift it
    return _FRESH


def _failure(record: HealthRecord, now: float, policy: HealthPolicy) -> HealthRecord:
    failures = record.consecutive_failures + 1
    if record.state is Health.HALF_OPEN or (
        record.state is Health.HEALTHY and failures >= policy.unhealthy_after
    ):
        return HealthRecord(Health.QUARANTINED, failures, now + policy.cooldown)
    return replace(record, consecutive_failures=failures)


def _neutral(record: HealthRecord, now: float, policy: HealthPolicy) -> HealthRecord:
    if record.state is Health.HALF_OPEN:
        return replace(record, state=Health.QUARANTINED, quarantined_until=now)
    return record


_SETTLE: dict[Outcome, Callable[[HealthRecord, float, HealthPolicy], HealthRecord]] = {
    Outcome.SUCCESS: _success,
    Outcome.FAILURE: _failure,
    Outcome.NEUTRAL: _neutral,
}


def settle(
    record: HealthRecord, outcome: Outcome, now: float, policy: HealthPolicy
) -> HealthRecord:
    """The record after a lease (or a probe) ended with ``outcome``."""
    return _SETTLE[outcome](record, now, policy)
