"""The Redis pool store: one pool shared by many processes and hosts.

Every decision on shared state is a server-side script (:mod:`.redis_scripts`), so two
processes never grant the same slot: a backend with ``max_concurrency`` 1 serves one request
at a time fleet-wide. A lease records its holder (request id, process, host) and expires
``lease_ttl`` seconds after its holder last renewed it; each process renews its own leases
every third of that, so a long stream keeps its lease and a killed process loses all of its
leases within ``lease_ttl``. Releases, joins and drains lifted anywhere are published; every
store subscribes and tells its watchers, so a waiter in any process wakes within
milliseconds. A quarantine end reaches the watchers from a timer each store arms on the
quarantine ends it hears of.

When Redis cannot be reached, an operation raises
:class:`~proxyfleet.errors.StoreUnavailable` (503 ``store_unavailable``), except a release: it
is kept and settled when Redis answers again (until then the lease's expiry is not renewed, so
nothing is held twice). Redis holds no secret: members are ids, caps and public URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Self, cast

import redis.asyncio as aioredis

from proxyfleet.errors import StateError, StoreConflict, StoreUnavailable
from proxyfleet.logs import event
from proxyfleet.pool import redis_scripts as lua
from proxyfleet.pool.backend import Member, public_url
from proxyfleet.pool.health import Health, HealthPolicy, HealthRecord, Outcome, state_of
from proxyfleet.pool.redis_batch import ScriptBatcher
from proxyfleet.pool.redis_feed import REDIS_ERRORS as _REDIS_ERRORS
from proxyfleet.pool.redis_feed import follow
from proxyfleet.pool.redis_feed import text as _text
from proxyfleet.pool.selection import Strategy
from proxyfleet.pool.store import (
    BackendStatus,
    ChangeKind,
    Grant,
    Holder,
    Listener,
    NoCandidate,
    Unavailable,
)

__all__ = ["RedisStore"]

_log = logging.getLogger("proxyfleet.pool")
_KINDS = {kind.value: kind for kind in ChangeKind}
#: Scripts that must not run twice for one call (a retry after a lost answer): a second
#: acquire would grant twice, a second release be refused as stale, a second add refused, a
#: second lift of a drain not say it was lifted.
_ONCE = ("ACQUIRE", "RELEASE", "ADD", "REMOVE", "DRAIN", "UNLOCK")


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


def _member_json(member: Member, static: bool) -> str:
    return json.dumps(
        {
            "id": member.id,
            "max_concurrency": member.max_concurrency,
            "kind": member.kind,
            "url": public_url(member.url) if member.url else "",
            "static": static,
            "origin": member.origin,
        },
        separators=(",", ":"),
    )


def _member_of(raw: bytes | str) -> Member:
    data = json.loads(raw)
    cap, origin = int(data["max_concurrency"]), data.get("origin", "")
    return Member(data["id"], cap, data["kind"], data["url"], origin)


def _status_of(row: list[Any], now: float) -> BackendStatus:
    """One member's row of the SNAPSHOT script as a status."""
    member = _member_of(row[0])
    cap, inflight, state, cf, qu, served, failures, last_used = (_text(f) for f in row[1])
    health = HealthRecord(Health(state), int(cf), float(qu))
    until = health.quarantined_until
    holders = [json.loads(h) for h in row[2]]
    return BackendStatus(
        id=member.id,
        upstream=member.url,
        state=state_of(health, int(inflight)),
        inflight=int(inflight),
        max_concurrency=int(cap),
        leases_served=int(served),
        failures=int(failures),
        consecutive_failures=health.consecutive_failures,
        last_used=float(last_used) or None,
        quarantined_until=until if health.state is Health.QUARANTINED and until > now else None,
        serving=tuple(h.get("rid", "") for h in holders),
        holders=tuple(
            Holder(h.get("rid", ""), h.get("process", ""), h.get("host", "")) for h in holders
        ),
    )


def _process_of(process: str, seen: float) -> dict[str, object]:
    """A process alive by its heartbeat, for /admin/pool."""
    return {"process": process, "host": process.rsplit(":", 2)[0], "last_seen": seen}


def _conflict(answer: list[Any], where: str, ttl: float) -> StoreConflict | None:
    """The OPEN script's verdict as the error to start with, or None when it said ok."""
    verdict = _text(answer[0])
    if verdict == "mismatch":
        missing, extra = json.loads(answer[1]), json.loads(answer[2])
        parts = [
            f"not in theirs: {', '.join(missing)}" if missing else "",
            f"only in theirs: {', '.join(extra)}" if extra else "",
        ]
        return StoreConflict(
            f"the pool in {where} is served by other processes with other backends: "
            + "; ".join(p for p in parts if p)
            + ". Every process sharing a pool must configure the same backends."
        )
    if verdict == "held":
        return StoreConflict(
            f"the pool in {where} still holds leases on backends this config no longer has "
            f"({', '.join(json.loads(answer[1]))}); they expire within {ttl:g}s of their "
            "holder stopping: start again then"
        )
    return None


class _Cooling:
    """Quarantine ends a store heard of, and one timer on the nearest: at each end the
    store's watchers hear COOLED (another process's quarantine ends here too)."""

    def __init__(self, clock: Callable[[], float], listeners: list[Listener]) -> None:
        self._now = clock
        self._listeners = listeners
        self._ends: dict[str, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def ends(self, backend_id: str, until: float) -> None:
        self._ends[backend_id] = until
        self._arm()

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()

    def _arm(self) -> None:
        if self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = self._now()
        ahead = [until for until in self._ends.values() if until > now]
        if ahead:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(min(ahead) - now + 0.001, self._cooled)

    def _cooled(self) -> None:
        self._timer = None
        now = self._now()
        for backend_id, until in sorted(self._ends.items(), key=lambda kv: kv[1]):
            if until <= now:
                del self._ends[backend_id]
                for listener in self._listeners:
                    listener(ChangeKind.COOLED, backend_id)
        self._arm()


class RedisStore:
    """Pool state in Redis at ``url`` under ``key_prefix``; ``members`` are this process's
    configured backends (the store checks them against the other processes')."""

    def __init__(
        self,
        members: Sequence[Member],
        policy: HealthPolicy,
        clock: Callable[[], float] = time.time,
        *,
        url: str,
        key_prefix: str = "proxyfleet",
        lease_ttl: float = 15.0,
        timeout: float = 2.0,
    ) -> None:
        if len({m.id for m in members}) != len(members):
            raise ValueError("backend ids must be unique")
        self._configured = tuple(members)
        self._policy_args: tuple[Any, ...] = (policy.unhealthy_after, repr(policy.cooldown))
        self._now = clock
        self._url = url
        self._shown = public_url(url) if "://" in url else url
        self._prefix = key_prefix
        self._ttl = lease_ttl
        self._timeout = timeout
        self._host = socket.gethostname()
        self.process = f"{self._host}:{os.getpid()}:{secrets.token_hex(3)}"
        # a holder's JSON after its request id, the same for every lease of this process
        self._who = json.dumps({"process": self.process, "host": self._host})[1:]
        self._members: tuple[Member, ...] = tuple(members)
        self._listeners: list[Listener] = []
        self._held: dict[str, str] = {}  # "<id>:<token>" → holder JSON, the leases held here
        self._pending: list[tuple[Grant, Outcome, str]] = []  # releases Redis did not answer
        self._state = _State.NEW
        self._redis: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._cooling = _Cooling(clock, self._listeners)
        self.reachable = False
        self.stale_releases = 0  # this process's releases Redis refused
        self.lost_leases = 0  # leases that expired before this process released them
        self.calls_in_flight = 0  # scripts sent and not answered yet
        self._waiting: Callable[[], int] = lambda: 0  # this process's waiters, as the pool says
        self._orphaned: set[asyncio.Task[Any]] = set()  # releases of grants nobody took

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        if self._state is not _State.NEW:
            raise StateError(f"store cannot be opened in state {self._state.value}")
        self._redis = aioredis.Redis.from_url(
            self._url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            health_check_interval=0,
        )
        self._batch = ScriptBatcher(
            self._redis,
            {name: getattr(lua, name) for name in lua.__all__},
            once=_ONCE,
            once_prefix=f"{self._prefix}:call:{self.process}:",
        )
        try:
            await self._open()
        except BaseException:
            await self._batch.aclose()
            await self._redis.aclose()
            raise
        self._state = _State.OPEN
        self.reachable = True
        subscribed = asyncio.Event()
        feed = follow(self._redis, f"{self._prefix}:changes", subscribed, self._message,
                      self._missed, answer_within=self._timeout)  # fmt: skip
        self._tasks = [asyncio.ensure_future(feed), asyncio.ensure_future(self._heartbeats())]
        with contextlib.suppress(TimeoutError):  # a slow subscription is caught up on by polls
            await asyncio.wait_for(subscribed.wait(), self._timeout)
        return self

    async def _open(self) -> None:
        args: list[Any] = [*self._args(), self._ttl, *self._policy_args]
        for member in self._configured:
            args += [member.id, _member_json(member, True), member.max_concurrency]
        try:
            await self._batch.load()
            answer = await self._batch.call("OPEN", [self._prefix, self.process, *args])
        except _REDIS_ERRORS as exc:
            raise StoreUnavailable(
                f"the pool store at {self._shown} is unreachable: {exc}", retry_after=1.0
            ) from exc
        conflict = _conflict(answer, f"{self._shown} (prefix {self._prefix!r})", self._ttl)
        if conflict is not None:
            raise conflict
        await self._refresh_members()
        for status in await self.snapshot():
            if status.quarantined_until is not None:
                self._cooling.ends(status.id, status.quarantined_until)

    async def __aexit__(self, *exc: object) -> None:
        if self._state is not _State.OPEN:
            self._state = _State.CLOSED
            return
        self._state = _State.CLOSED
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:  # whatever ended one, the store still closes
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._cooling.close()
        if self._redis is not None:
            await self._batch.drain(self._timeout)  # answers still to come (orphans' too)
            for task in list(self._orphaned):  # grants nobody took go back before we leave
                await task
            with contextlib.suppress(*_REDIS_ERRORS):
                await self._settle_pending()
                await self._redis.zrem(f"{self._prefix}:procs", self.process)
            await self._batch.aclose()
            await self._redis.aclose()

    def watch(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @property
    def members(self) -> Sequence[Member]:
        return self._members

    # -- the protocol ------------------------------------------------------------------------
    async def acquire(
        self,
        strategy: Strategy,
        exclude: Collection[str] = (),
        only: str | None = None,
        holder: str = "",
    ) -> Grant | Unavailable:
        self._check_open()
        who = f'{{"rid":{json.dumps(holder)},{self._who}'
        skip = json.dumps(list(exclude)) if exclude else "[]"
        args = (who, self._ttl, only or "", skip, *self._policy_args)
        answer = await self._call("ACQUIRE", strategy, *self._args(), *args, orphan=self._orphan)
        if int(answer[0]) == -1:  # Redis restarted empty: the pool again, then the same ask
            await self._reopen()
            answer = await self._call(
                "ACQUIRE", strategy, *self._args(), *args, orphan=self._orphan
            )
        if int(answer[0]) == 1:
            grant = Grant(_text(answer[1]), int(answer[2]))
            self._held[f"{grant.backend_id}:{grant.token}"] = who
            return grant
        reason = NoCandidate.BUSY if _text(answer[1]) == "busy" else NoCandidate.NONE
        retry = _text(answer[2])
        return Unavailable(reason, float(retry) if retry else None)

    def _orphan(self, answer: Any) -> None:
        """A grant whose asker stopped waiting (it left, or timed out) goes straight back."""
        if int(answer[0]) == 1:  # until the store's connection closes, at its very end
            self._later(self._release(Grant(_text(answer[1]), int(answer[2])), Outcome.NEUTRAL))

    def _later(self, work: Awaitable[Any]) -> None:
        """``work`` in the background, awaited at close (Redis unreachable: a release waits
        for the next heartbeat, a grant nobody took ends by lease_ttl)."""

        async def run() -> None:
            with contextlib.suppress(StoreUnavailable):
                await work

        task = asyncio.ensure_future(run())
        self._orphaned.add(task)
        task.add_done_callback(self._orphaned.discard)

    async def release(self, grant: Grant, outcome: Outcome) -> bool:
        entry = f"{grant.backend_id}:{grant.token}"
        if self._state is not _State.OPEN or self._redis is None:
            return False
        key = self._batch.new_key()
        try:
            settled = await self._release(grant, outcome, key)
        except StoreUnavailable:
            # kept for when Redis answers again; no longer renewed, so it cannot outlive ttl
            self._held.pop(entry, None)
            self._pending.append((grant, outcome, key))
            return True
        return settled

    async def _release(self, grant: Grant, outcome: Outcome, key: str | None = None) -> bool:
        self._held.pop(f"{grant.backend_id}:{grant.token}", None)
        answer = await self._call(
            "RELEASE",
            grant.backend_id,
            grant.token,
            outcome.value,
            *self._args(),
            *self._policy_args,
            self.process,
            key=key,
        )
        if int(answer[0]) != 1:
            self.stale_releases += 1
            return False
        self._heard(ChangeKind.RELEASED, grant.backend_id, float(_text(answer[1])))
        return True

    async def set_draining(self, backend_id: str, draining: bool) -> None:
        self._check_open()
        lifted = await self._call("DRAIN", backend_id, "1" if draining else "0", self.process)
        if int(lifted):
            self._heard(ChangeKind.UNDRAINED, backend_id, 0.0)

    async def add(self, member: Member) -> None:
        self._check_open()
        added = await self._call(
            "ADD", member.id, _member_json(member, False), member.max_concurrency, self.process
        )
        if not int(added):
            raise ValueError(f"backend id {member.id!r} is already in the pool")
        await self._refresh_members()
        self._heard(ChangeKind.JOINED, member.id, 0.0)

    async def remove(self, backend_id: str) -> bool:
        self._check_open()
        if not int(await self._call("REMOVE", backend_id, self.process)):
            return False
        await self._refresh_members()
        self._heard(ChangeKind.LEFT, backend_id, 0.0)
        return True

    async def snapshot(self) -> list[BackendStatus]:
        self._check_open(opening=True)
        now = self._now()
        try:
            rows = await self._batch.call("SNAPSHOT", [self._prefix])
        except _REDIS_ERRORS as exc:
            raise self._unavailable(exc) from exc
        return [_status_of(row, now) for row in rows]

    async def want(self, waiting: Callable[[], int]) -> None:
        self._waiting = waiting
        with contextlib.suppress(StoreUnavailable):  # acquires say so; heartbeats retry
            await self._call("WANT", self.process, repr(self._now() + self._ttl))

    async def processes(self) -> list[dict[str, object]]:
        """Every process whose heartbeat is at most one ``lease_ttl`` old."""
        self._check_open()
        assert self._redis is not None
        since = self._now() - self._ttl
        try:
            rows = await self._redis.zrangebyscore(
                f"{self._prefix}:procs", since, "+inf", withscores=True
            )
        except _REDIS_ERRORS as exc:
            raise self._unavailable(exc) from exc
        return [_process_of(_text(raw), seen) for raw, seen in cast(list[Any], rows)]

    async def try_lock(self, name: str, ttl: float) -> bool:
        self._check_open()
        assert self._redis is not None
        key = f"{self._prefix}:lock:{name}"
        try:
            taken = await self._redis.set(key, self.process, nx=True, px=max(1, int(ttl * 1000)))
        except _REDIS_ERRORS as exc:
            raise self._unavailable(exc) from exc
        if taken:  # the holder acts on what the fleet has now, not on a feed still on its way
            await self._refresh_members()
        return bool(taken)

    async def unlock(self, name: str) -> None:
        with contextlib.suppress(StoreUnavailable):  # it expires by itself
            await self._call("UNLOCK", name, self.process)

    # -- internals ---------------------------------------------------------------------------
    def _check_open(self, opening: bool = False) -> None:
        """Raise unless open (or, with ``opening``, being opened)."""
        if self._state is _State.OPEN:
            return
        if opening and self._state is _State.NEW and self._redis is not None:
            return
        raise StateError(f"store is {self._state.value}: use 'async with store'")

    def _args(self) -> tuple[Any, ...]:
        return (repr(self._now()),)

    async def _call(
        self,
        name: str,
        *args: Any,
        orphan: Callable[[Any], None] | None = None,
        key: str | None = None,
    ) -> Any:
        self.calls_in_flight += 1
        try:
            answer = await self._batch.call(name, [self._prefix, *args], orphan, key)
        except _REDIS_ERRORS as exc:
            raise self._unavailable(exc) from exc
        finally:
            self.calls_in_flight -= 1
        if not self.reachable:
            self._back()
        return answer

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        if self.reachable:
            self.reachable = False
            event(_log, "store_unavailable", url=self._shown, error=str(exc) or type(exc).__name__)
        return StoreUnavailable(f"the pool store at {self._shown} is unreachable", retry_after=1.0)

    def _back(self) -> None:
        self.reachable = True
        event(_log, "store_available", url=self._shown)
        if self._pending and self._state is _State.OPEN:  # now, not at the next heartbeat
            self._later(self._settle_pending())

    async def _refresh_members(self) -> None:
        assert self._redis is not None
        try:
            ids = cast(list[bytes], await self._redis.zrange(f"{self._prefix}:index", 0, -1))
            raw = await self._redis.hmget(f"{self._prefix}:members", ids) if ids else []
        except _REDIS_ERRORS as exc:
            raise self._unavailable(exc) from exc
        self._members = tuple(_member_of(r) for r in raw if r is not None)

    def _heard(self, kind: ChangeKind, backend_id: str, until: float) -> None:
        """A change, ours or published by another process: the timer, then the watchers."""
        if until > 0:
            self._cooling.ends(backend_id, until)
        for listener in self._listeners:
            listener(kind, backend_id)

    async def _missed(self) -> None:
        """Releases may have been missed while Redis was away: every watcher is told."""
        await self._refresh_members()
        for member in self._members:
            self._heard(ChangeKind.RELEASED, member.id, 0.0)

    async def _message(self, text: str) -> None:
        parts = text.split(" ")
        if len(parts) != 4 or parts[0] not in _KINDS or parts[3] == self.process:
            return  # ours were told when they happened
        kind = _KINDS[parts[0]]
        if kind in (ChangeKind.JOINED, ChangeKind.LEFT):
            with contextlib.suppress(StoreUnavailable):
                await self._refresh_members()
        self._heard(kind, parts[1], float(parts[2]))

    async def _heartbeats(self) -> None:
        """Renew this process's leases every third of the ttl; settle releases kept while
        Redis was away; a lease that expired anyway is counted and logged."""
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                await self._settle_pending()
                lost = await self._call(
                    "HEARTBEAT", self.process, *self._args(), self._ttl, *self._policy_args,
                    "1" if self._waiting() else "0", *self._held,
                )  # fmt: skip
            except StoreUnavailable:
                continue
            if lost and lost[0] == -1:
                with contextlib.suppress(StoreUnavailable, StoreConflict):
                    await self._reopen()
                continue
            for entry in lost:
                self._held.pop(_text(entry), None)
                self.lost_leases += 1
                event(_log, "lease_expired", lease=_text(entry), process=self.process)

    async def _reopen(self) -> None:
        """Redis lost the pool (it restarted with nothing saved): open it again with this
        process's backends, and put back the leases held here, so none is handed out twice."""
        await self._open()
        pairs = [value for item in self._held.items() for value in item]
        restored = await self._call("RESTORE", *self._args(), self._ttl, *pairs)
        event(_log, "store_reopened", url=self._shown, leases_restored=int(restored))
        for member in self._members:
            self._heard(ChangeKind.RELEASED, member.id, 0.0)

    async def _settle_pending(self) -> None:
        while self._pending:  # each taken before it is asked: heartbeats settle beside _back;
            # asked again with its call key, a release that ran is not counted stale
            kept = self._pending.pop(0)
            try:
                await self._release(*kept)
            except BaseException:
                self._pending.insert(0, kept)
                raise
