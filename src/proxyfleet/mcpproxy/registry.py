"""The sessions of one MCP route: limits, upstream children, idle expiry, shutdown.

Each client session gets its own stdio child (a prestarted one when ``prestart`` keeps some
ready). Requests of the stateless protocol generation (no ``initialize``, no session id) lease
a child for one exchange; a child that served one cleanly goes back to a small idle set for the
next (it holds no client state: that generation keeps none on the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from proxyfleet.config.model import McpRouteConfig
from proxyfleet.errors import SessionLimit, SpawnFailed, UpstreamGone
from proxyfleet.logs import event
from proxyfleet.mcpproxy.child import Child
from proxyfleet.mcpproxy.jsonrpc import Kind, Message
from proxyfleet.mcpproxy.remote import HttpUpstream
from proxyfleet.mcpproxy.session import Session, SessionState, Upstream

__all__ = ["Route"]

_log = logging.getLogger("proxyfleet.mcp")
_ENDED_KEPT = 1000  # ended sessions remembered (for /admin/sessions and a clear 404)
_ENDED_FOR = 600.0  # seconds
_WARMUP_ID = "proxyfleet-warmup"
_WARMUP = b'{"jsonrpc":"2.0","id":"proxyfleet-warmup","method":"ping"}'


class Route:
    def __init__(self, config: McpRouteConfig) -> None:
        self.config = config
        self.path = config.path
        self.sessions: dict[str, Session] = {}
        self.ended: OrderedDict[str, Session] = OrderedDict()
        self._spare: list[Upstream] = []  # prestarted, never used
        self._idle: list[Upstream] = []  # served stateless exchanges, reusable for more
        self._http: aiohttp.ClientSession | None = None
        self._leased = 0  # children serving a stateless exchange now
        self._stateless_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._closing = False
        self._filler: asyncio.Task[None] | None = None
        self._warming: set[Upstream] = set()  # starting, or warming as a spare: no owner yet
        self._stopping: set[asyncio.Task[None]] = set()  # children being stopped
        self.spawn_failures = 0
        self.deaths = 0
        self.started_total = 0

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, http: aiohttp.ClientSession | None = None) -> None:
        """``http``: the shared client for a ``url`` upstream (keep-alive across sessions)."""
        self._http = http
        interval = max(0.05, min(self.config.session_idle_timeout / 4, 5.0))
        self._reaper = asyncio.create_task(self._reap(interval), name=f"mcp-reaper{self.path}")
        await self._fill_spares()

    async def stop(self) -> None:
        """End every session (its waiting requests get an error) and stop every child."""
        self._closing = True
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        stops = []
        for session in list(self.sessions.values()):
            session.end(SessionState.CLOSED, "the proxy is shutting down")
            self._retire(session)
            if session.child is not None:
                stops.append(session.child.stop(self.config.stop_timeout))
        for task in list(self._tasks):  # fillers and refills: nothing more is started
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        children = [*self._spare, *self._idle, *self._warming]  # warming: a filler was cut
        stops += [c.stop(self.config.stop_timeout) for c in children]
        self._spare.clear()
        self._idle.clear()
        self._warming.clear()
        # stops already under way (children given up on) are waited for, never cut short
        await asyncio.gather(*stops, *self._stopping, return_exceptions=True)

    # -- children --------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROXYFLEET_")}
        env.update({k: v.get_secret_value() for k, v in self.config.upstream.env.items()})
        return env

    async def _spawn(self) -> Upstream:
        upstream = self.config.upstream
        if upstream.url is not None:
            assert self._http is not None, "start() the route with the shared HTTP client"
            headers = {k: v.get_secret_value() for k, v in upstream.headers.items()}
            return HttpUpstream(upstream.url, self._http, _drop, self._spare_exited, headers)
        child = Child(upstream.command, self._env(), upstream.cwd, _drop, self._spare_exited)
        self._warming.add(child)  # until someone holds it: stop() stops it if it is cut off
        try:
            await child.start()
        except OSError as exc:
            self._warming.discard(child)
            self.spawn_failures += 1
            event(
                _log,
                "mcp_spawn_failed",
                logging.ERROR,
                route=self.path,
                command=upstream.command[0],
                error=str(exc),
            )
            raise SpawnFailed(
                f"cannot start the MCP server {upstream.command[0]!r}: {exc.strerror or exc}"
            ) from exc
        except BaseException:
            if not child.alive:
                self._warming.discard(child)
            raise
        if not self._closing:
            self._warming.discard(child)
        self.started_total += 1
        return child

    async def _take(self, spare: bool = True) -> Upstream:
        while spare and self._spare:
            child = self._spare.pop()
            if child.alive:
                self._refill()
                return child
        return await self._spawn()

    def _refill(self) -> None:
        """Top the prestarted children up to ``prestart``, one filler at a time."""
        if (
            self.config.prestart
            and self.config.upstream.command
            and (self._filler is None or self._filler.done())
        ):
            self._filler = asyncio.ensure_future(self._fill_spares())
            self._tasks.add(self._filler)
            self._filler.add_done_callback(self._tasks.discard)

    async def _fill_spares(self) -> None:
        while (
            not self._closing
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
            if self._closing or not child.alive:
                self._stop_later(child)
                return
            self._spare.append(child)

    async def _warm(self, child: Upstream) -> None:
        """Wait until a prestarted server answers a ``ping`` (allowed before ``initialize``),
        so a session that takes it does not wait for the server's own start-up. The ping binds
        the server to the handshake generation: spares serve sessions, never stateless
        exchanges."""
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_message(message: Message) -> None:
            if message.kind is Kind.RESPONSE and message.id == _WARMUP_ID and not answered.done():
                answered.set_result(None)

        child.on_message = on_message
        try:
            child.send(_WARMUP)
            await asyncio.wait_for(answered, 30)
        except (UpstreamGone, TimeoutError):
            pass
        child.on_message = _drop

    def _spare_exited(self, child: Upstream) -> None:
        for pool in (self._spare, self._idle):
            if child in pool:
                pool.remove(child)
                self.deaths += 1
        if not self._closing and self.config.prestart:
            self._spawn_later(self._refill_after(1.0))

    async def _refill_after(self, delay: float) -> None:
        await asyncio.sleep(delay)  # a server that dies at once must not be respawned in a loop
        self._refill()

    def _spawn_later(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _stop_later(self, child: Upstream) -> None:
        """Stop a child in the background; :meth:`stop` waits for it rather than cutting it
        short (a stop cut after stdin closed but before SIGTERM would leave it running)."""
        task = asyncio.ensure_future(child.stop(self.config.stop_timeout))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    # -- sessions --------------------------------------------------------------------------
    def _check_limits(self, client: str) -> None:
        config = self.config
        if self._closing:
            raise SessionLimit("the proxy is shutting down", retry_after=1.0)
        if len(self.sessions) + self._leased >= config.max_sessions:
            raise SessionLimit(
                f"{len(self.sessions)} MCP sessions are open on {self.path} "
                f"(max_sessions {config.max_sessions})",
                retry_after=1.0,
            )
        per_client = config.max_sessions_per_client
        if per_client is not None:
            mine = sum(1 for s in self.sessions.values() if s.client == client)
            if mine >= per_client:
                raise SessionLimit(
                    f"this client has {mine} MCP sessions open on {self.path} "
                    f"(max_sessions_per_client {per_client})",
                    retry_after=1.0,
                )

    async def open_session(self, client: str, legacy: bool = False) -> Session:
        self._check_limits(client)
        child = await self._take()
        session = Session(secrets.token_hex(16), client, child, legacy=legacy)
        child.on_message = session.deliver
        child.on_exit = lambda c: self._session_child_exited(session, c)
        self.sessions[session.id] = session
        event(
            _log,
            "mcp_session_started",
            route=self.path,
            session=session.id,
            upstream=child.label,
            transport="sse" if legacy else "streamable-http",
        )
        return session

    def get(self, session_id: str) -> Session | None:
        return self.sessions.get(session_id)

    def why_gone(self, session_id: str) -> str:
        ended = self.ended.get(session_id)
        if ended is None:
            return f"unknown MCP session {session_id!r}: start a new one with initialize"
        return f"MCP session {session_id} has ended: {ended.ended_reason}"

    async def close(self, session: Session, reason: str) -> None:
        session.end(SessionState.CLOSED, reason)
        self._retire(session)
        if session.child is not None:
            await session.child.stop(self.config.stop_timeout)

    def _retire(self, session: Session) -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        self.ended[session.id] = session
        now = time.time()
        while self.ended and (
            len(self.ended) > _ENDED_KEPT
            or now - (next(iter(self.ended.values())).ended_at or now) > _ENDED_FOR
        ):
            self.ended.popitem(last=False)
        event(
            _log,
            "mcp_session_ended",
            route=self.path,
            session=session.id,
            state=session.state.value,
            reason=session.ended_reason,
        )

    def _session_child_exited(self, session: Session, child: Upstream) -> None:
        if child.stopping or session.state is not SessionState.ACTIVE:
            return
        self.deaths += 1
        reason = f"the session's upstream is gone: {child.describe_exit()}"
        event(
            _log,
            "mcp_upstream_died",
            logging.WARNING,
            route=self.path,
            session=session.id,
            upstream=child.label,
        )
        session.end(SessionState.DEAD, reason)
        self._retire(session)

    # -- the stateless generation ------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def stateless(self, client: str) -> AsyncIterator[Session]:
        """A child for one exchange, as a session without an id. A clean exchange gives the
        child back; anything else (a disconnect mid-way, an error) stops it."""
        self._check_limits(client)
        self._leased += 1
        try:
            child = self._idle.pop() if self._idle else await self._take(spare=False)
        except BaseException:
            self._leased -= 1
            raise
        session = Session(f"stateless-{next(self._stateless_ids)}", client, child)
        child.on_message = session.deliver
        child.on_exit = lambda c: self._session_child_exited(session, c)
        given_back = False

        def give_back() -> None:
            """The exchange is answered: the child goes back to the idle ones now, before
            the answer is sent (the client's next request may come right after it)."""
            nonlocal given_back
            reusable = not session.busy and child.alive and not self._closing
            if given_back or not reusable or len(self._idle) >= max(4, self.config.prestart):
                return
            given_back = True
            self._leased -= 1
            child.on_message = _drop
            child.on_exit = self._spare_exited
            self._idle.append(child)

        session.release = give_back
        try:
            yield session
            give_back()
        finally:
            session.release = None
            if not given_back:
                self._leased -= 1
                self._stop_later(child)

    # -- idle expiry -----------------------------------------------------------------------
    async def _reap(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.expire_idle()

    async def expire_idle(self) -> list[str]:
        timeout = self.config.session_idle_timeout
        now = time.monotonic()
        expired = [
            s
            for s in self.sessions.values()
            if not s.busy and not s.id.startswith("stateless-") and now - s.last_activity > timeout
        ]
        for session in expired:
            await self.close(session, f"idle for more than {timeout:g}s")
        return [s.id for s in expired]

    # -- admin -----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "upstream": self.config.upstream.url or self.config.upstream.command[0],
            "sessions": [s.describe() for s in self.sessions.values()],
            "ended": [s.describe() for s in list(self.ended.values())[-50:]],
            "prestarted": len(self._spare),
            "stateless_idle": len(self._idle),
            "stateless_in_flight": self._leased,
            "children_started": self.started_total,
            "upstream_deaths": self.deaths,
            "spawn_failures": self.spawn_failures,
        }

    def health(self) -> dict[str, Any]:
        dead = sum(1 for s in self.ended.values() if s.state is SessionState.DEAD)
        return {
            "path": self.path,
            "sessions": len(self.sessions),
            "dead_sessions": dead,
            "upstream_deaths": self.deaths,
            "spawn_failures": self.spawn_failures,
            "prestarted": len(self._spare),
        }


def _drop(message: Message) -> None:
    """A child between sessions says something: nobody to tell."""
    event(_log, "mcp_unrouted_message", logging.DEBUG, kind=message.kind.value)
