"""Property-based test of the pool: random leases, releases, failures, timeouts, cancellations,
and backends joining and leaving (as in an elastic pool)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from proxyfleet.errors import LeaseTimeout, NoHealthyBackend, QueueFull
from proxyfleet.pool import BackendSpec, BackendStatus, Outcome, Pool, PoolSettings
from proxyfleet.pool.health import HealthPolicy
from tests.pool.stores import STORES, StoreFactory
from tests.virtual import VirtualTimeLoop

OUTCOMES = st.sampled_from([Outcome.SUCCESS, Outcome.FAILURE, Outcome.NEUTRAL])


class PoolMachine(RuleBasedStateMachine):
    """Runs against the store ``make`` builds (one subclass per entry of ``stores.STORES``)."""

    make: StoreFactory = STORES["memory"]

    def __init__(self) -> None:
        super().__init__()
        self.loop = VirtualTimeLoop()
        self.caps = {"a": 1, "b": 1, "c": 2}
        backends = [
            BackendSpec(k, f"http://127.0.0.1:1/{k}", (), cap) for k, cap in self.caps.items()
        ]
        store = type(self).make([b.member for b in backends], HealthPolicy(2, 0.01), self.loop.time)
        self.store = store
        self.pool = Pool(backends, PoolSettings(queue_limit=6), store=store)
        self.loop.run_until_complete(self.pool.__aenter__())
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.signals: dict[int, asyncio.Future[Outcome]] = {}
        self.held: dict[int, str] = {}
        self.ended: dict[int, str] = {}
        self.next_id = 0

    async def _client(self, i: int, timeout: float) -> None:
        try:
            async with self.pool.lease(f"r{i}", timeout) as lease:
                self.held[i] = lease.backend.id
                try:
                    outcome = await self.signals[i]
                    if outcome is Outcome.FAILURE:
                        lease.fail()
                    elif outcome is Outcome.NEUTRAL:
                        raise RuntimeError("aborted request")
                finally:
                    del self.held[i]
            self.ended[i] = "released"
        except (LeaseTimeout, NoHealthyBackend, QueueFull) as exc:
            self.ended[i] = type(exc).__name__
        except RuntimeError:
            self.ended[i] = "aborted"

    def _settle(self, seconds: float = 0.0) -> None:
        """Move the clock, then let every ready callback and due timer run, and (for a store
        across a socket) every call come back: until nothing has changed for a while."""
        self.loop.now += seconds

        async def pause() -> None:
            quiet, last = 0, None
            for _ in range(5000):  # bounded: a store that never settles fails the test
                await asyncio.sleep(0)
                busy = getattr(self.store, "calls_in_flight", 0)
                if busy:
                    # the answer is on its way over the socket; a timer would never fire here
                    time.sleep(0.0001)  # noqa: ASYNC251 (the clock is virtual)
                now = (
                    busy,
                    sorted(self.held.items()),
                    sorted(self.ended.items()),
                    self.pool.waiting,
                )
                quiet = quiet + 1 if now == last and not busy else 0
                last = now
                if quiet >= 20:
                    return
            raise AssertionError("the pool never settled")

        self.loop.run_until_complete(pause())

    @rule(timeout=st.sampled_from([0.005, 0.02, 5.0]))
    def request(self, timeout: float) -> None:
        i = self.next_id
        self.next_id += 1
        self.signals[i] = self.loop.create_future()
        self.tasks[i] = self.loop.create_task(self._client(i, timeout))
        self._settle()

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), outcome=OUTCOMES)
    def finish(self, data: Any, outcome: Outcome) -> None:
        i = data.draw(st.sampled_from(sorted(self.held)))
        self.signals[i].set_result(outcome)
        self._settle()

    @precondition(lambda self: bool(self.held) and self.pool.waiting > 0)
    @rule(data=st.data())
    def finish_then_cancel_a_waiter(self, data: Any) -> None:
        """A release hands a backend to a waiter that is cancelled before it wakes up."""
        i = data.draw(st.sampled_from(sorted(self.held)))
        waiting = sorted(j for j, t in self.tasks.items() if not t.done() and j not in self.held)
        victim = self.tasks[data.draw(st.sampled_from(waiting))]
        # Runs in the same loop iteration as the holder's wake-up, right after its release.
        self.signals[i].add_done_callback(lambda _: victim.cancel())
        self.signals[i].set_result(Outcome.SUCCESS)
        self._settle()

    @precondition(lambda self: any(not t.done() for t in self.tasks.values()))
    @rule(data=st.data())
    def cancel(self, data: Any) -> None:
        live = sorted(i for i, t in self.tasks.items() if not t.done())
        i = data.draw(st.sampled_from(live))
        self.tasks[i].cancel()
        self._settle()

    @rule(seconds=st.sampled_from([0.001, 0.01, 0.03]))
    def time_passes(self, seconds: float) -> None:
        self._settle(seconds)

    @precondition(lambda self: len(self.pool.backends) < 6)
    @rule(cap=st.integers(1, 2))
    def backend_joins(self, cap: int) -> None:
        name = f"n{self.next_id}"
        self.next_id += 1
        self.caps[name] = cap
        spec = BackendSpec(name, f"http://127.0.0.1:1/{name}", (), cap)
        self.loop.run_until_complete(self.pool.add_backend(spec))
        self._settle()

    @precondition(lambda self: bool(self.pool.backends))
    @rule(data=st.data())
    def backend_leaves(self, data: Any) -> None:
        name = data.draw(st.sampled_from([b.id for b in self.pool.backends]))
        leased = name in self.held.values()
        removed = self.loop.run_until_complete(self.pool.remove_backend(name))
        assert removed is not leased  # only an idle backend may leave
        self._settle()

    def _snapshot(self) -> list[BackendStatus]:
        return self.loop.run_until_complete(self.pool.snapshot())

    @invariant()
    def membership_is_consistent(self) -> None:
        assert [s.id for s in self._snapshot()] == [b.id for b in self.pool.backends]
        assert set(self.held.values()) <= {b.id for b in self.pool.backends}

    @invariant()
    def caps_hold_and_counts_match(self) -> None:
        held_per_backend: dict[str, int] = {}
        for backend in self.held.values():
            held_per_backend[backend] = held_per_backend.get(backend, 0) + 1
        for status in self._snapshot():
            assert status.inflight <= self.caps[status.id]
            assert status.inflight == held_per_backend.get(status.id, 0), status

    @invariant()
    def no_waiter_lost(self) -> None:
        live = [i for i, t in self.tasks.items() if not t.done()]
        waiting = [i for i in live if i not in self.held]
        assert len(waiting) == self.pool.waiting

    def teardown(self) -> None:
        for _i, fut in self.signals.items():
            if not fut.done():
                fut.set_result(Outcome.SUCCESS)
        self._settle(10.0)
        for task in self.tasks.values():
            task.cancel()
        self._settle()
        assert all(s.inflight == 0 for s in self._snapshot())
        assert self.pool.waiting == 0
        self.loop.run_until_complete(self.pool.close())
        self.loop.close()


for _name, _make in STORES.items():
    _machine = type(f"PoolMachine_{_name}", (PoolMachine,), {"make": staticmethod(_make)})
    _case = _machine.TestCase
    _case.settings = settings(
        max_examples=60,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    globals()[f"TestPoolStateful_{_name}"] = _case
del _name, _make, _machine, _case
