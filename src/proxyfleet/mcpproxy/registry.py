"""The sessions of one MCP route: limits, their upstream children, idle expiry, shutdown.

Each client session gets its own stdio child (a prestarted one when ``prestart`` keeps some
ready). Requests of the stateless protocol generation (no ``initialize``, no session id) lease
a child for one exchange; a child that served one cleanly goes back to a small idle set for the
next (it holds no client state: that generation keeps none on the server). Where the children
come from, and whether the route's server starts at all, is its :class:`~.supply.Supply`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from proxyfleet.config.model import McpRouteConfig
from proxyfleet.errors import SessionLimit
from proxyfleet.logs import event
from proxyfleet.mcpproxy.session import Session, SessionState, Upstream
from proxyfleet.mcpproxy.supply import Supply

__all__ = ["Route"]

_log = logging.getLogger("proxyfleet.mcp")
_ENDED_KEPT = 1000  # ended sessions remembered (for /admin/sessions and a clear 404)
_ENDED_FOR = 600.0  # seconds


class Route:
    def __init__(self, config: McpRouteConfig) -> None:
        self.config = config
        self.path = config.path
        self.sessions: dict[str, Session] = {}
        self.ended: OrderedDict[str, Session] = OrderedDict()
        self.supply = Supply(config)
        self._leased = 0  # children serving a stateless exchange now
        self._stateless_ids = itertools.count(1)
        self._reaper: asyncio.Task[None] | None = None
        self._closing = False
        self.deaths = 0  # of the children sessions held

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, http: aiohttp.ClientSession | None = None) -> None:
        """``http``: the shared client for a ``url`` upstream (keep-alive across sessions)."""
        interval = max(0.05, min(self.config.session_idle_timeout / 4, 5.0))
        self._reaper = asyncio.create_task(self._reap(interval), name=f"mcp-reaper{self.path}")
        await self.supply.start(http)

    async def stop(self) -> None:
        """End every session (its waiting requests get an error) and stop every child."""
        self._closing = True
        self.supply.closing = True
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        stops = []
        for session in list(self.sessions.values()):
            session.end(SessionState.CLOSED, "the proxy is shutting down")
            self._retire(session)
            if session.child is not None:
                stops.append(session.child.stop(self.config.stop_timeout))
        await self.supply.stop(stops)

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

    def _session(self, session_id: str, client: str, child: Upstream, legacy: bool) -> Session:
        session = Session(
            session_id,
            client,
            child,
            legacy=legacy,
            request_timeout=self.config.request_timeout,
            route=self.path,
        )
        child.on_message = self.supply.listen(child, session.deliver)
        child.on_exit = lambda c: self._session_child_exited(session, c)
        return session

    async def open_session(self, client: str, legacy: bool = False) -> Session:
        self._check_limits(client)
        child = await self.supply.take()
        session = self._session(secrets.token_hex(16), client, child, legacy)
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
        if child.stopping:
            return
        self.supply.judge_exit(child)
        if session.state is not SessionState.ACTIVE:
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
            child = await self.supply.lease()
        except BaseException:
            self._leased -= 1
            raise
        session = self._session(f"stateless-{next(self._stateless_ids)}", client, child, False)
        given_back = False

        def give_back() -> None:
            """The exchange is answered: the child goes back to the idle ones now, before
            the answer is sent (the client's next request may come right after it)."""
            nonlocal given_back
            # a request that timed out may still be worked on: that child is not reused
            reusable = not session.busy and not session.timeouts and child.alive
            if given_back or not reusable or self._closing or not self.supply.give_back(child):
                return
            given_back = True
            self._leased -= 1

        session.release = give_back
        try:
            yield session
            give_back()
        finally:
            session.release = None
            if not given_back:
                self._leased -= 1
                self.supply.stop_later(child)

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
        supply = self.supply.describe()
        return {
            "path": self.path,
            "upstream": self.config.upstream.url or self.config.upstream.command[0],
            "status": supply.pop("status"),
            "reason": supply.pop("reason"),
            "sessions": [s.describe() for s in self.sessions.values()],
            "ended": [s.describe() for s in list(self.ended.values())[-50:]],
            "stateless_in_flight": self._leased,
            "upstream_deaths": self.deaths + self.supply.deaths,
            **supply,
        }

    def health(self) -> dict[str, Any]:
        dead = sum(1 for s in self.ended.values() if s.state is SessionState.DEAD)
        supply = self.supply.describe()
        return {
            "path": self.path,
            "status": supply["status"],
            "reason": supply["reason"],
            "failed_starts": supply["failed_starts"],
            "sessions": len(self.sessions),
            "dead_sessions": dead,
            "upstream_deaths": self.deaths + self.supply.deaths,
            "spawn_failures": supply["spawn_failures"],
            "prestarted": supply["prestarted"],
        }
