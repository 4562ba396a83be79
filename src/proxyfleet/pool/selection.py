"""Backend selection: pure functions over the candidates that have spare capacity.

``candidates`` is given least recently used first (the store keeps that order), so ``lru`` is the
first candidate; ``round-robin`` walks the pool's fixed order from a cursor; ``least-busy`` takes
the lowest load (in-flight / cap), ties going to the least recently used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal, Protocol, TypeVar, get_args

__all__ = ["STRATEGIES", "Candidate", "Strategy", "choose"]

Strategy = Literal["lru", "round-robin", "least-busy"]
#: The choices, in the order help texts list them (the one source: config and CLI read it).
STRATEGIES: tuple[str, ...] = get_args(Strategy)


class Candidate(Protocol):
    @property
    def index(self) -> int: ...  # position in the pool's fixed order
    @property
    def inflight(self) -> int: ...
    @property
    def cap(self) -> int: ...


C = TypeVar("C", bound=Candidate)


def _lru(candidates: Iterable[C], cursor: int, size: int) -> C | None:
    return next(iter(candidates), None)


def _round_robin(candidates: Iterable[C], cursor: int, size: int) -> C | None:
    best: C | None = None
    best_distance = size + 1
    for candidate in candidates:
        distance = (candidate.index - cursor) % size
        if distance < best_distance:
            best, best_distance = candidate, distance
            if distance == 0:
                break
    return best


def _least_busy(candidates: Iterable[C], cursor: int, size: int) -> C | None:
    best: C | None = None
    best_load = 2.0
    for candidate in candidates:
        load = candidate.inflight / candidate.cap
        if load < best_load:
            best, best_load = candidate, load
            if load == 0:
                break
    return best


_STRATEGIES: dict[str, Callable[[Iterable[C], int, int], C | None]] = {
    "lru": _lru,
    "round-robin": _round_robin,
    "least-busy": _least_busy,
}


def choose(strategy: Strategy, candidates: Iterable[C], cursor: int, size: int) -> C | None:
    """The candidate to lease next, or None when there is none. ``cursor`` is for round-robin."""
    return _STRATEGIES[strategy](candidates, cursor, size)
