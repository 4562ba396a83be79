"""When to try provisioning again, and when to stop trying. Pure: the clock is passed in."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Breaker", "BreakerState", "retry_delay"]


def retry_delay(eta: float | None, attempt: int, base: float, cap: float) -> float:
    """Seconds before attempt ``attempt + 1``: the orchestrator's ETA when it gave one, else
    ``base * 2**(attempt - 1)``; never more than ``cap``. ``attempt`` counts from 1."""
    if eta is not None:
        return min(max(eta, 0.0), cap)
    return min(base * 2.0 ** max(attempt - 1, 0), cap)


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
