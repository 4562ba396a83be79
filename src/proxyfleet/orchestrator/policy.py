"""When to try provisioning again, and when to stop trying. Pure: the clock is passed in."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["MAX_ETA", "Breaker", "BreakerState", "KeyGate", "next_attempt", "retry_delay"]

#: The longest an orchestrator's ETA may hold provisioning back (seconds); the
#: acestream-orchestrator's own breaker says 300 at most.
MAX_ETA = 900.0


def retry_delay(eta: float | None, attempt: int, base: float, cap: float) -> float:
    """Seconds before attempt ``attempt + 1``: the orchestrator's ETA when it gave one (at most
    :data:`MAX_ETA`), else ``base * 2**(attempt - 1)`` up to ``cap``. ``attempt`` counts from 1."""
    if eta is not None:
        return min(max(eta, 0.0), MAX_ETA)
    return min(base * 2.0 ** max(attempt - 1, 0), cap)


def next_attempt(
    retryable: bool, eta: float | None, attempt: int, attempts: int, base: float, cap: float
) -> float | None:
    """After attempt ``attempt`` of a burst failed: seconds before the next one, or None when
    the burst ends (the refusal must not be retried, or that was the last attempt)."""
    if not retryable or attempt >= attempts:
        return None
    return retry_delay(eta, attempt, base, cap)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class Breaker:
    """Opens after ``failures`` failures in a row; after ``cooldown`` lets one trial through
    (half-open): its success closes the breaker, its failure opens it again."""

    failures: int
    cooldown: float
    consecutive: int = 0
    opened_at: float | None = None
    trial: bool = False

    def state(self, now: float) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        if now - self.opened_at >= self.cooldown:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self, now: float) -> bool:
        """May a call go out now? In half-open, only one (the trial) until it settles."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self.trial:
            self.trial = True
            return True
        return False

    def remaining(self, now: float) -> float:
        """Seconds until the breaker lets a trial through (0 when closed)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown - (now - self.opened_at))

    def describe(self, now: float) -> dict[str, object]:
        """What ``/admin/pool`` shows of it."""
        return {
            "state": self.state(now).value,
            "consecutive_failures": self.consecutive,
            "retry_in_seconds": round(self.remaining(now), 3),
        }

    def success(self) -> None:
        self.consecutive = 0
        self.opened_at = None
        self.trial = False

    def failure(self, now: float) -> bool:
        """Count a failure; True when this failure opened (or re-opened) the breaker."""
        self.consecutive += 1
        if self.trial or (self.opened_at is None and self.consecutive >= self.failures):
            self.opened_at = now
            self.trial = False
            return True
        return False


@dataclass(slots=True)
class KeyGate:
    """The orchestrator refuses our key. For ``cooldown`` seconds after each refusal no call
    goes out; then one may try again (a key fixed on its side is noticed without a restart).
    ``reason`` says why until a call succeeds."""

    cooldown: float
    reason: str | None = None
    since: float = 0.0

    def refused(self, reason: str, now: float) -> bool:
        """A refusal; True when it is the first since the key last worked."""
        first = self.reason is None
        self.reason, self.since = reason, now
        return first

    def holds(self, now: float) -> bool:
        return self.reason is not None and now - self.since < self.cooldown

    def accepted(self) -> None:
        self.reason = None
