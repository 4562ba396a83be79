"""Selection strategies as pure functions over candidates."""

from __future__ import annotations

from dataclasses import dataclass

from proxyfleet.pool.selection import choose


@dataclass
class C:
    index: int
    inflight: int = 0
    cap: int = 1


def test_lru_takes_the_first_candidate() -> None:
    assert choose("lru", [C(2), C(0), C(1)], 0, 3) == C(2)
    assert choose("lru", [], 0, 3) is None


def test_round_robin_walks_from_the_cursor() -> None:
    candidates = [C(0), C(1), C(3)]
    assert choose("round-robin", candidates, 1, 4) == C(1)
    assert choose("round-robin", candidates, 2, 4) == C(3)
    assert choose("round-robin", candidates, 0, 4) == C(0)
    assert choose("round-robin", [C(0)], 3, 4) == C(0)  # wraps around


def test_least_busy_prefers_low_load_then_order() -> None:
    candidates = [C(0, inflight=2, cap=4), C(1, inflight=1, cap=4), C(2, inflight=1, cap=4)]
    assert choose("least-busy", candidates, 0, 3) == C(1, inflight=1, cap=4)
    assert choose("least-busy", [C(0, 3, 4), C(1, 0, 1)], 0, 2) == C(1, 0, 1)
