"""An MCP session's upstream over streamable HTTP: one upstream session per client session.

It behaves like a :class:`~proxyfleet.mcpproxy.child.Child` to the session: ``send`` a message,
get what the server says through ``on_message``. Each message is POSTed (with the upstream's
own ``Mcp-Session-Id`` once ``initialize`` gave one); a JSON or SSE answer is read message by
message; the upstream's GET stream, when it has one, is relayed too. Connections come from the
gateway's shared client, so they are kept alive across sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from proxyfleet.errors import UpstreamGone
from proxyfleet.logs import event
from proxyfleet.mcpproxy.jsonrpc import (
    SERVER_ERROR,
    InvalidMessage,
    Kind,
    Message,
    error_body,
    parse_body,
    parse_line,
)
from proxyfleet.providers.sse import SSEParser

__all__ = ["HttpUpstream"]

_log = logging.getLogger("proxyfleet.mcp")
_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
_PASSED = ("mcp-protocol-version",)  # client headers the upstream must see too


def _answers(message: Message, sent: Message | None) -> bool:
    return sent is not None and message.kind is Kind.RESPONSE and message.id == sent.id


class HttpUpstream:
    def __init__(
        self,
        url: str,
        http: aiohttp.ClientSession,
        on_message: Callable[[Message], None],
        on_exit: Callable[[Any], None],
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self._http = http
        self.on_message = on_message
        self.on_exit = on_exit
        self._headers = dict(_HEADERS, **(headers or {}))
        self.session_id: str | None = None
        self.pid: int | None = None  # not a process: see ``url``
        self.returncode: int | None = None
        self.stopping = False
        self.spoke = False  # the server has answered something (not the proxy on its behalf)
        self._ended: str | None = None
        self._initialized = asyncio.Event()
        self._initializing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._stream: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self._ended is None

    @property
    def label(self) -> str:
        return self.url

    def describe_exit(self) -> str:
        return self._ended or f"the MCP server at {self.url} is being disconnected"

    def set_headers(self, headers: dict[str, str]) -> None:
        self._headers.update(headers)

    def send(self, raw: bytes) -> None:
        if not self.alive or self.stopping:
            raise UpstreamGone(self.describe_exit())
        task = asyncio.ensure_future(self._post(raw))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, raw: bytes) -> None:
        try:
            message = parse_line(raw)
        except InvalidMessage:
            return
        initializing = message.kind is Kind.REQUEST and message.method == "initialize"
        if initializing:
            self._initializing = True
        elif self.session_id is None and self._initializing:
            await self._initialized.wait()  # the upstream's session id comes with that answer
        headers = dict(self._headers)
        if self.session_id:
            headers["Mcp-Session-Id"] = self.session_id
        try:
            async with self._http.post(self.url, data=raw, headers=headers) as response:
                if initializing:
                    self.session_id = response.headers.get("Mcp-Session-Id")
                    self._initialized.set()
                    if response.status < 300:
                        self.open_stream()
                await self._answer(message, response, initializing)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._initialized.set()
            self._answer_error(
                message, f"the MCP server at {self.url} is unreachable: {type(exc).__name__}"
            )
            if initializing:
                self._end(f"the MCP server at {self.url} is unreachable")

    async def _answer(
        self, message: Message, response: aiohttp.ClientResponse, initializing: bool
    ) -> None:
        status = response.status
        if status == 404 and self.session_id and not initializing:
            self._end(f"the MCP server at {self.url} ended the session (404)")
            self._answer_error(message, self.describe_exit())
            return
        answered = await self._relay(response, message)
        if message.kind is Kind.REQUEST and not answered:  # nothing else would ever answer it
            what = f"answered {status}"
            if status < 300:
                what += f" without a response to request {message.id!r}"
            self._answer_error(message, f"the MCP server at {self.url} {what}")

    async def _relay(self, response: aiohttp.ClientResponse, sent: Message | None) -> bool:
        """Pass on what a response holds; True when it held the response to ``sent``."""
        kind = response.content_type
        answered = False
        if kind == "application/json":
            body = await response.read()
            try:
                messages = parse_body(body)
            except InvalidMessage:
                return False
            for message in messages:
                answered = answered or _answers(message, sent)
                self.spoke = True
                self.on_message(message)
        elif kind == "text/event-stream":
            parser = SSEParser()
            async for chunk in response.content.iter_any():
                for data in parser.feed(chunk):
                    answered = self._deliver(data, sent) or answered
            for data in parser.close():
                answered = self._deliver(data, sent) or answered
        return answered

    def _deliver(self, data: str, sent: Message | None) -> bool:
        """One SSE event's data (its lines joined by newlines: JSON whitespace, so one line)."""
        try:
            message = parse_line(data.replace("\n", " ").encode())
        except InvalidMessage:
            return False
        self.spoke = True
        self.on_message(message)
        return _answers(message, sent)

    def _answer_error(self, message: Message, reason: str) -> None:
        if message.kind is Kind.REQUEST:
            self.on_message(parse_line(error_body(message.id, SERVER_ERROR, reason)))

    def open_stream(self) -> None:
        """Relay the upstream's GET stream (server-initiated messages), if it has one."""
        if self._stream is None and self.session_id:
            self._stream = asyncio.ensure_future(self._listen())

    async def _listen(self) -> None:
        headers = dict(self._headers, Accept="text/event-stream")
        assert self.session_id is not None
        headers["Mcp-Session-Id"] = self.session_id
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with self._http.get(self.url, headers=headers) as response:
                if response.status == 200:
                    await self._relay(response, None)

    def _end(self, reason: str) -> None:
        if self._ended is None:
            self._ended = reason
            event(_log, "mcp_upstream_ended", logging.WARNING, url=self.url, reason=reason)
            self.on_exit(self)

    async def settle(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for the answers to what was sent already."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def stop(self, timeout: float) -> None:
        """End the upstream session (DELETE, best effort) and stop relaying."""
        self.stopping = True
        tasks = [*self._tasks, *([self._stream] if self._stream else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.session_id and self.alive:
            headers = dict(self._headers, **{"Mcp-Session-Id": self.session_id})
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with asyncio.timeout(timeout), self._http.delete(self.url, headers=headers):
                    pass
        if self._ended is None:
            self._ended = "disconnected by the proxy"
