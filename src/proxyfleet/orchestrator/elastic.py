"""An elastic pool: backends are added when every one is busy and released when idle.

The controller is the pool's :class:`~proxyfleet.pool.pool.Grower`. A request that finds no free
backend asks it for capacity; one provisioning runs at a time (a burst of waiters triggers one,
not one each), and when it lands and requests are still waiting, the next one starts. Failed
attempts are retried after the orchestrator's ETA or with capped exponential backoff; a refusal
that must not be retried (``can_retry: false``) ends the burst at once, and its ETA, when it
gives one, holds every call back until then. A circuit breaker stops calls to a provisioner that
keeps failing. The orchestrator's status is polled; while it says it cannot provision, no call
goes out and requests that would need a new backend fail fast with 503 and its ETA as
``Retry-After``. When it refuses the key (401/403), that is said once at ERROR, readiness says
why, requests that would need a backend get 503 ``provisioning_unauthorized`` without
``Retry-After``, and one call tries again only every ``breaker_cooldown`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from proxyfleet.config.model import ProvisionerConfig
from proxyfleet.debuglog.recorder import DebugRecorder
from proxyfleet.errors import (
    GatewayError,
    ProvisionerAuthError,
    ProvisionerError,
    ProvisioningBlocked,
    ProvisioningFailed,
    ProvisioningUnauthorized,
)
from proxyfleet.logs import event
from proxyfleet.orchestrator.api import Engine
from proxyfleet.orchestrator.health import OrchestratorHealth, retry_after
from proxyfleet.orchestrator.policy import MAX_ETA, Breaker, BreakerState, KeyGate, next_attempt
from proxyfleet.orchestrator.provisioner import Provisioner
from proxyfleet.pool import BackendSpec, Pool

__all__ = ["Elastic", "fleet_engines"]

_log = logging.getLogger("proxyfleet.orchestrator")
_ORIGINS = ("provisioned", "adopted")  # what may bring an engine: only the first is released


@dataclass(slots=True)
class _Member:
    engine: Engine
    origin: str  # provisioned (ours to release) or adopted (the orchestrator's)
    added: float  # monotonic


def fleet_engines(
    members: dict[str, _Member], backends: Sequence[BackendSpec], provisioner: str
) -> None:
    """``members`` brought up to the pool's: an engine another process of the fleet brought
    through the same provisioner is tracked here too (so it is reaped when idle and dropped
    when the orchestrator no longer lists it, even if that process died), and one that left
    the pool is forgotten."""
    present = {spec.id: spec for spec in backends}
    for backend_id in [known for known in members if known not in present]:
        del members[backend_id]
    for spec in present.values():
        origin, _, name = spec.origin.partition(":")
        if spec.id not in members and name == provisioner and origin in _ORIGINS:
            engine = Engine(spec.id, spec.base_url)
            members[spec.id] = _Member(engine, origin, time.monotonic())


class Elastic:
    """``async with Elastic(pool, provisioner, config, …):`` — the pool grows and shrinks."""

    def __init__(
        self,
        pool: Pool,
        provisioner: Provisioner,
        config: ProvisionerConfig,
        max_concurrency: int,
        debug: DebugRecorder | None = None,
        on_release: Callable[[BackendSpec], None] | None = None,
    ) -> None:
        self._pool = pool
        self._provisioner = provisioner
        self._config = config
        self._cap = max_concurrency
        self._debug = debug
        self._on_release = on_release
        self._breaker = Breaker(config.breaker_failures, config.breaker_cooldown)
        self._members: dict[str, _Member] = {}
        self._growth: asyncio.Task[None] | None = None
        self._key = KeyGate(config.breaker_cooldown)  # the orchestrator refuses our key
        self._tasks: list[asyncio.Task[None]] = []
        self.health = OrchestratorHealth(provisioner, config.status_interval, debug)
        self.provisioned = 0
        self.released = 0
        self.failures = 0

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> Elastic:
        await self._provisioner.open()
        self._pool.grower = self
        if self._provisioner.has_status:
            await self.health.poll()
            if self._config.adopt:
                await self._adopt()
        if self._provisioner.has_status:
            self._tasks.append(asyncio.create_task(self._poll(), name="proxyfleet-status"))
        self._tasks.append(asyncio.create_task(self._reap(), name="proxyfleet-reaper"))
        if self._wanted() and self._held(time.monotonic()) is None:
            self._start_growth("")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._pool.grower = None
        tasks = [*self._tasks, *([self._growth] if self._growth else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._config.release_command:
            for backend_id, member in list(self._members.items()):
                if member.origin == "provisioned" and await self._pool.remove_backend(backend_id):
                    await self._release(backend_id, "gateway_stopped")
        await self._provisioner.close()

    # -- the Grower protocol ------------------------------------------------------------------
    @property
    def growing(self) -> bool:
        return self._growth is not None

    async def demand(self, request_id: str, waiting: int) -> GatewayError | bool:
        if self._pool.size >= self._config.max_backends:
            return False
        held = self._held(time.monotonic())
        if isinstance(held, ProvisioningBlocked):  # the orchestrator said so: fail fast
            return held
        if held is not None:
            return False if await self._pool.ready() else held
        self._start_growth(request_id)
        return True

    def can_grow(self) -> bool:
        """Could a request that finds no backend get one (for readiness)?"""
        return self.why_not() is None

    def why_not(self) -> str | None:
        """Why a request that finds no backend could not get one now, if it could not."""
        if self._key.reason is not None:  # until a call succeeds, whatever the cooldown
            return f"no backend can be provisioned: {self._key.reason}"
        held = self._held(time.monotonic())
        if held is not None:
            return held.message
        if self._pool.size >= self._config.max_backends:
            return f"max_backends ({self._config.max_backends}) reached"
        return None

    def _held(self, now: float, last: ProvisionerError | None = None) -> GatewayError | None:
        """Why no provisioning call may go out now, as the error for a request that needs one:
        the orchestrator refused our key (for ``breaker_cooldown`` after each refusal; then one
        call may try again), says it cannot provision (its status, a refusal's ETA), or the
        circuit breaker is open."""
        if self._key.holds(now):
            return ProvisioningUnauthorized(f"no backend can be provisioned: {self._key.reason}")
        blocked = self.health.blocked(now)
        if blocked is not None:
            return blocked
        if self._breaker.state(now) is BreakerState.OPEN:
            return ProvisioningFailed(
                f"provisioning is paused after {self._breaker.consecutive} failures in a row "
                f"(circuit breaker open, provisioner {self._provisioner.name})"
                + (f"; last: {last.message}" if last is not None else ""),
                retry_after=retry_after(self._breaker.remaining(now)),
            )
        return None

    # -- growing -------------------------------------------------------------------------------
    def _wanted(self) -> bool:
        count = self._pool.size
        if count >= self._config.max_backends:
            return False
        return count < self._config.min_backends or self._pool.waiting > 0

    def _start_growth(self, rid: str) -> None:
        if self._growth is None:
            first = self._pool.queue()
            if not rid and first:
                rid = str(first[0]["request_id"])
            self._growth = asyncio.create_task(self._grow(rid), name="proxyfleet-provision")
            self._growth.add_done_callback(self._grown)

    def _grown(self, task: asyncio.Task[None]) -> None:
        if self._growth is task:
            self._growth = None
        if not task.cancelled() and task.exception() is not None:
            _log.error("provisioning task failed", exc_info=task.exception())

    async def _grow(self, rid: str) -> None:
        """Provision until nobody waits (or the limit), one backend at a time."""
        attempt = 0
        while True:
            attempt += 1
            now = time.monotonic()
            held = self._held(now)
            if held is not None:  # no call before the orchestrator (or the breaker) says so
                await self._pool.fail_waiters(held)
                return
            if not self._breaker.allow(now):  # half-open, and its one trial is out
                await self._give_up(rid, None)
                return
            async with self._pool.exclusive("provision", self._config.timeout + 5.0) as mine:
                if not mine:  # another process of the fleet provisions: its engine joins the
                    await asyncio.sleep(0.1)  # shared pool, and may be all that is wanted
                    attempt -= 1
                    if self._wanted():
                        continue
                    return
                await self._pool.serve_waiters()  # a backend another process brought may
                if not self._wanted():  # be all that is wanted: the lock showed it
                    return
                started = time.perf_counter()
                try:
                    engine = await self._provisioner.provision(rid)
                except ProvisionerError as exc:
                    if not await self._failed(rid, exc, attempt, time.perf_counter() - started):
                        return
                    continue
                await self._landed(rid, engine, attempt, time.perf_counter() - started)
            if not self._wanted():
                return
            attempt = 0
            queue = self._pool.queue()
            rid = str(queue[0]["request_id"]) if queue else ""

    async def _landed(self, rid: str, engine: Engine, attempt: int, seconds: float) -> None:
        self._breaker.success()
        self._key.accepted()
        self.health.clear()
        self.provisioned += 1
        if self._debug is not None:
            self._debug.provisioning(
                rid or None,
                "provision_success",
                seconds,
                True,
                retry=attempt - 1,
                backend=engine.id,
            )
        event(
            _log,
            "backend_provisioned",
            backend=engine.id,
            seconds=round(seconds, 3),
            backends=self._pool.size + 1,
        )
        await self._join(engine, "provisioned")

    async def _failed(self, rid: str, exc: ProvisionerError, attempt: int, seconds: float) -> bool:
        """Record a failed attempt; True when another attempt should follow (after a pause)."""
        now = time.monotonic()
        self.failures += 1
        config = self._config
        opened = False  # a refused key is not a flapping provisioner: the breaker stays out
        if not isinstance(exc, ProvisionerAuthError):
            opened = self._breaker.failure(now)
        elif self._key.refused(exc.message, now):  # said once, at ERROR
            event(
                _log,
                "orchestrator_auth_failed",
                logging.ERROR,
                status=exc.status,
                error=exc.message,
                retry_in_seconds=config.breaker_cooldown,
            )
        if exc.eta is not None:  # not before then, whether this burst goes on or not
            self.health.block(exc.message, min(exc.eta, MAX_ETA), now)
            blocked = self.health.blocked(now)
            if blocked is not None:
                await self._pool.fail_waiters(blocked)
        if self._debug is not None:
            self._debug.provisioning(
                rid or None,
                "provision_attempt_failed",
                seconds,
                False,
                error=exc.message,
                retry=attempt,
                code=exc.code,
            )
            if opened:
                self._debug.breaker_open(self._provisioner.name, self._breaker.consecutive)
        event(
            _log,
            "provisioning_failed",
            logging.WARNING,
            attempt=attempt,
            code=exc.code,
            error=exc.message,
            breaker="open" if opened else None,
        )
        delay = next_attempt(
            exc.retryable, exc.eta, attempt, config.attempts, config.backoff, config.backoff_cap
        )
        if delay is None or opened:
            await self._give_up(rid, exc)
            return False
        await asyncio.sleep(delay)
        return self._wanted()

    async def _give_up(self, rid: str, exc: ProvisionerError | None) -> None:
        """The burst ends without a backend: waiters with nothing to wait for fail now."""
        why = exc.message if exc is not None else "a trial of the half-open breaker is out"
        error = self._held(time.monotonic(), exc) or ProvisioningFailed(
            f"could not provision a backend: {why}",
            retry_after=retry_after(self._config.backoff),
        )
        if self._debug is not None:
            self._debug.provisioning(
                rid or None,
                "provision_failed",
                0.0,
                False,
                error=error.message,
                retry=self._breaker.consecutive,
            )
        await self._pool.fail_waiters(error)

    async def _join(self, engine: Engine, origin: str) -> None:
        if engine.id in {m.id for m in self._pool.backends}:
            return
        brought = f"{origin}:{self._provisioner.name}"
        spec = BackendSpec(engine.id, engine.url, (), self._cap, brought, origin=brought)
        self._members[engine.id] = _Member(engine, origin, time.monotonic())
        with contextlib.suppress(ValueError):  # another process of the fleet added it first
            await self._pool.add_backend(spec)

    async def _adopt(self) -> None:
        started = time.perf_counter()
        try:
            engines = await self._provisioner.engines()
        except ProvisionerError as exc:
            if self._debug is not None:
                self._debug.provisioning(
                    None, "adopt", time.perf_counter() - started, False, error=exc.message
                )
            event(_log, "adopt_failed", logging.WARNING, error=exc.message)
            return
        room = self._config.max_backends - self._pool.size
        for engine in engines[: max(room, 0)]:
            await self._join(engine, "adopted")
        if self._debug is not None:
            self._debug.provisioning(
                None,
                "adopt",
                time.perf_counter() - started,
                True,
                backends=[e.id for e in engines[: max(room, 0)]],
            )

    # -- shrinking -----------------------------------------------------------------------------
    async def _reap(self) -> None:
        interval = max(0.05, min(self._config.idle_ttl / 4, 5.0))
        while True:
            await asyncio.sleep(interval)
            await self.reap_once()

    async def reap_once(self) -> list[str]:
        """Release provisioned backends idle for ``idle_ttl`` while above ``min_backends``."""
        now_wall, now = time.time(), time.monotonic()
        fleet_engines(self._members, self._pool.backends, self._provisioner.name)
        released: list[str] = []
        for status in sorted(await self._pool.snapshot(), key=lambda s: s.last_used or 0.0):
            if self._pool.size <= self._config.min_backends:
                break
            member = self._members.get(status.id)
            if member is None or member.origin != "provisioned" or status.inflight:
                continue
            idle = now_wall - status.last_used if status.last_used else now - member.added
            if idle < self._config.idle_ttl:
                continue
            spec = next((b for b in self._pool.backends if b.id == status.id), None)
            if spec is None or not await self._pool.remove_backend(status.id):
                continue
            await self._release(status.id, "idle", idle)
            if self._on_release is not None:
                self._on_release(spec)
            released.append(status.id)
        return released

    async def _release(self, backend_id: str, reason: str, idle: float | None = None) -> None:
        self._members.pop(backend_id, None)
        self.released += 1
        started = time.perf_counter()
        error: str | None = None
        try:
            await self._provisioner.release(backend_id)
        except ProvisionerError as exc:
            error = exc.message
        if self._debug is not None:
            self._debug.provisioning(
                None,
                "release",
                time.perf_counter() - started,
                error is None,
                error=error,
                backend=backend_id,
                reason=reason,
            )
        event(
            _log,
            "backend_released",
            logging.INFO if error is None else logging.WARNING,
            backend=backend_id,
            reason=reason,
            idle_seconds=None if idle is None else round(idle, 1),
            error=error,
        )

    # -- orchestrator health -------------------------------------------------------------------
    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._config.status_interval)
            await self.health.poll()
            await self.reconcile()
            if self._wanted() and self._held(time.monotonic()) is None:
                self._start_growth("")

    async def reconcile(self) -> list[str]:
        """Drop the backends the orchestrator no longer lists (it removed or lost them): an
        idle one leaves at once, a busy one drains (no new leases) and leaves on a later
        poll. Backends that joined within two polls are left alone (the list may lag)."""
        try:
            listed = {engine.id for engine in await self._provisioner.engines()}
        except ProvisionerError:
            return []
        grace = 2 * self._config.status_interval
        now = time.monotonic()
        fleet_engines(self._members, self._pool.backends, self._provisioner.name)
        gone: list[str] = []
        for backend_id, member in list(self._members.items()):
            if backend_id in listed or now - member.added < grace:
                continue
            if await self._pool.remove_backend(backend_id):
                del self._members[backend_id]
                gone.append(backend_id)
                event(_log, "backend_vanished", logging.WARNING, backend=backend_id)
                if self._debug is not None:
                    self._debug.provisioning(None, "engine_vanished", 0.0, True, backend=backend_id)
            else:
                await self._pool.drain(backend_id)
        return gone

    # -- admin -------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        now = time.monotonic()
        config = self._config
        return {
            "provisioner": self._provisioner.name,
            "min_backends": config.min_backends,
            "max_backends": config.max_backends,
            "idle_ttl": config.idle_ttl,
            "provisioning": self.growing,
            "provisioned_total": self.provisioned,
            "released_total": self.released,
            "failures_total": self.failures,
            "breaker": self._breaker.describe(now),
            "blocked": self.health.reason,
            "unauthorized": self._key.reason,
            "orchestrator": None if self.health.status is None else self.health.status.fields(),
            "members": {k: m.origin for k, m in self._members.items()},
        }
