"""The upstreams of one MCP route, before and between their sessions: started, prestarted and
warmed (``prestart``), kept idle for the next stateless exchange, stopped in the background,
and whether the route's server starts at all.

A command that cannot run, or a server that exits before it said anything, makes the route
*failing* (:mod:`.health`) until a server answers again; while failing, it starts one now and
then (the delay doubling) and pings it, so that a fixed server is seen without any client
having to try. A server that answered before it died does start: that is a death, not a start
that failed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aiohttp

from proxyfleet.config.model import McpRouteConfig
from proxyfleet.errors import SpawnFailed, UpstreamGone
from proxyfleet.logs import event
from proxyfleet.mcpproxy.child import Child
from proxyfleet.mcpproxy.health import StartHealth, StartState
from proxyfleet.mcpproxy.jsonrpc import Kind, Message
from proxyfleet.mcpproxy.remote import HttpUpstream
from proxyfleet.mcpproxy.session import Upstream

__all__ = ["Supply"]

_log = logging.getLogger("proxyfleet.mcp")
_WARMUP_ID = "proxyfleet-warmup"
_WARMUP = b'{"jsonrpc":"2.0","id":"proxyfleet-warmup","method":"ping"}'
_WARMUP_TIMEOUT = 30.0  # seconds a server may take to answer its first ping


class Supply:
    def __init__(self, config: McpRouteConfig) -> None:
        self.config = config
        self.path = config.path
        self.closing = False  # set by the route when it stops: nothing more is started
        self.spawn_failures = 0
        self.deaths = 0  # of children no session held
        self.started_total = 0
        self.start_health = StartHealth()  # does its server start at all?
        self._http: aiohttp.ClientSession | None = None
        self._spare: list[Upstream] = []  # prestarted, never used
        self._idle: list[Upstream] = []  # served stateless exchanges, reusable for more
        self._warming: set[Upstream] = set()  # starting, or warming as a spare: no owner yet
        self._stopping: set[asyncio.Task[None]] = set()  # children being stopped
        self._tasks: set[asyncio.Task[Any]] = set()  # fillers, refills, the re-check
        self._filler: asyncio.Task[None] | None = None
        self._checker: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, http: aiohttp.ClientSession | None) -> None:
        """``http``: the shared client for a ``url`` upstream (keep-alive across sessions)."""
        self._http = http
        await self._fill_spares()

    async def stop(self, others: Iterable[Awaitable[Any]] = ()) -> None:
        """Stop every child it holds, and wait for ``others`` (the sessions' children) too."""
        self.closing = True
        for task in list(self._tasks):  # fillers and refills: nothing more is started
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        children = [*self._spare, *self._idle, *self._warming]  # warming: a filler was cut
        stops = [c.stop(self.config.stop_timeout) for c in children]
        self._spare.clear()
        self._idle.clear()
        self._warming.clear()
        # stops already under way (children given up on) are waited for, never cut short
        await asyncio.gather(*others, *stops, *self._stopping, return_exceptions=True)

    # -- children for sessions and exchanges -------------------------------------------------
    async def take(self) -> Upstream:
        """A child for a session: a prestarted one when there is one, else a new one."""
        while self._spare:
            child = self._spare.pop()
            if child.alive:
                self._refill()
                return child
        return await self._spawn()

    async def lease(self) -> Upstream:
        """A child for a stateless exchange: one that served one cleanly, else a new one
        (never a spare: its warm-up bound it to the handshake generation)."""
        return self._idle.pop() if self._idle else await self._spawn()

    def give_back(self, child: Upstream) -> bool:
        """A child whose exchange went cleanly joins the idle ones (False: there is no room,
        or the route is stopping; the caller stops it)."""
        if self.closing or len(self._idle) >= max(4, self.config.prestart):
            return False
        child.on_message = _drop
        child.on_exit = self._exited
        self._idle.append(child)
        return True

    def stop_later(self, child: Upstream) -> None:
        """Stop a child in the background; :meth:`stop` waits for it rather than cutting it
        short (a stop cut after stdin closed but before SIGTERM would leave it running)."""
        task = asyncio.ensure_future(child.stop(self.config.stop_timeout))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def listen(self, child: Upstream, deliver: Callable[[Message], None]) -> Any:
        """``deliver`` what the child says; the first thing it says shows its server starts."""

        def on_message(message: Message) -> None:
            if child.spoke and self.start_health.state is not StartState.OK:
                self._answered()
            deliver(message)

        return on_message

    # -- starting them -----------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROXYFLEET_")}
        env.update({k: v.get_secret_value() for k, v in self.config.upstream.env.items()})
        return env

    async def _spawn(self, *, check: bool = False) -> Upstream:
        """A new upstream; ``check``: one started by a re-check (not counted as a spawn
        failure when it fails)."""
        upstream = self.config.upstream
        if upstream.url is not None:
            assert self._http is not None, "start() the route with the shared HTTP client"
            headers = {k: v.get_secret_value() for k, v in upstream.headers.items()}
            return HttpUpstream(upstream.url, self._http, _drop, self._exited, headers)
        child = Child(upstream.command, self._env(), upstream.cwd, _drop, self._exited)
        self._warming.add(child)  # until someone holds it: stop() stops it if it is cut off
        try:
            await child.start()
        except OSError as exc:
            self._warming.discard(child)
            if not check:
                self.spawn_failures += 1
            event(
                _log,
                "mcp_spawn_failed",
                logging.ERROR,
                route=self.path,
                command=upstream.command[0],
                error=str(exc),
            )
            failure = SpawnFailed(
                f"cannot start the MCP server {upstream.command[0]!r}: {exc.strerror or exc}"
            )
            self._failed(failure.message)
            raise failure from exc
        except BaseException:
            if not child.alive:
                self._warming.discard(child)
            raise
        if not self.closing:
            self._warming.discard(child)
        self.started_total += 1
        return child

    def _refill(self) -> None:
        """Top the prestarted children up to ``prestart``, one filler at a time."""
        if (
            self.config.prestart
            and self.config.upstream.command
            and (self._filler is None or self._filler.done())
        ):
            self._filler = self._background(self._fill_spares())

    async def _fill_spares(self) -> None:
        while (
            not self.closing
            and self.config.upstream.command
            and len(self._spare) < self.config.prestart
        ):
            try:
                child = await self._spawn()
            except SpawnFailed:
                return
            self._warming.add(child)
            await self._warm(child)  # cut off by stop(): it stays in _warming, to be stopped
            self._warming.discard(child)
            if self.closing or not child.alive:
                self.stop_later(child)
                return
            self._spare.append(child)

    async def _warm(self, child: Upstream) -> bool:
        """Wait until a prestarted server answers a ``ping`` (allowed before ``initialize``),
        so a session that takes it does not wait for the server's own start-up; False when it
        exits first (or stays silent). The ping binds the server to the handshake generation:
        spares serve sessions, never stateless exchanges."""
        answered: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def on_message(message: Message) -> None:
            if message.kind is Kind.RESPONSE and message.id == _WARMUP_ID and not answered.done():
                answered.set_result(True)

        def on_exit(gone: Upstream) -> None:
            if not answered.done():
                answered.set_result(False)
            self._exited(gone)

        child.on_message = on_message
        child.on_exit = on_exit
        try:
            child.send(_WARMUP)
            ok = await asyncio.wait_for(answered, _WARMUP_TIMEOUT)
        except (UpstreamGone, TimeoutError):
            ok = False
        finally:
            child.on_message = _drop
            child.on_exit = self._exited
        if ok:
            self._answered()
        return ok

    def _exited(self, child: Upstream) -> None:
        """A child no session held exited (a spare, an idle one, one warming)."""
        for pool in (self._spare, self._idle):
            if child in pool:
                pool.remove(child)
                self.deaths += 1
        self.judge_exit(child)
        if not self.closing and self.config.prestart and not self.start_health.failing:
            self._background(self._refill_after(1.0))

    async def _refill_after(self, delay: float) -> None:
        await asyncio.sleep(delay)  # a server that dies at once must not be respawned in a loop
        self._refill()

    def _background(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- does its server start? ----------------------------------------------------------
    def judge_exit(self, child: Upstream) -> None:
        """A server that exited unasked before it said anything does not start."""
        if not child.stopping and not child.spoke and self.config.upstream.command:
            self._failed(f"its server exits before answering: {child.describe_exit()}")

    def _failed(self, reason: str) -> None:
        delay = self.start_health.failed(reason)
        event(
            _log, "mcp_route_failing", logging.ERROR, route=self.path, reason=reason, retry_in=delay
        )
        if not self.closing and (self._checker is None or self._checker.done()):
            self._checker = self._background(self._recheck())

    def _answered(self) -> None:
        if self.start_health.answered():
            event(_log, "mcp_route_recovered", route=self.path)
            self._refill()

    async def _recheck(self) -> None:
        """While the route is failing: start a server now and then (the delay doubling) and
        ping it, until one answers; it then serves as a spare when ``prestart`` wants one."""
        while not self.closing and self.start_health.failing:
            await asyncio.sleep(self.start_health.retry_in)
            try:
                child = await self._spawn(check=True)
            except SpawnFailed:
                continue
            self._warming.add(child)
            answered = await self._warm(child)  # cut off by stop(): stopped from _warming
            self._warming.discard(child)
            keep = answered and not self.closing and child.alive
            if keep and len(self._spare) < self.config.prestart:
                self._spare.append(child)
            else:
                self.stop_later(child)

    # -- admin -----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        start = self.start_health.describe()
        return {
            "status": start["status"],
            "reason": start["reason"],
            "failed_starts": start["failures"],
            "prestarted": len(self._spare),
            "stateless_idle": len(self._idle),
            "children_started": self.started_total,
            "spawn_failures": self.spawn_failures,
        }


def _drop(message: Message) -> None:
    """A child between sessions says something: nobody to tell."""
    event(_log, "mcp_unrouted_message", logging.DEBUG, kind=message.kind.value)
