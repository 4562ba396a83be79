"""``proxyfleet mcp stdio --upstream URL``: a local stdio MCP client reaching a remote server.

Lines on stdin are JSON-RPC messages to the server (POSTed over streamable HTTP, as one
session: stdio is one client by nature); whatever the server says comes out on stdout, one
message per line. Diagnostics go to stderr only. Stdin closing ends the upstream session.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

import aiohttp

from proxyfleet.errors import UpstreamGone
from proxyfleet.mcpproxy.jsonrpc import Message
from proxyfleet.mcpproxy.remote import HttpUpstream

__all__ = ["bridge_stdio"]


async def bridge_stdio(url: str, headers: dict[str, str], timeout: float = 5.0) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    gone = asyncio.Event()

    def emit(message: Message) -> None:
        out.write(message.raw + b"\n")
        out.flush()

    def ended(_: Any) -> None:
        gone.set()

    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        upstream = HttpUpstream(url, http, emit, ended, headers)
        reading = asyncio.ensure_future(_pump(reader, upstream))
        stopped = asyncio.ensure_future(gone.wait())
        await asyncio.wait({reading, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if gone.is_set():
            print(f"proxyfleet mcp stdio: {upstream.describe_exit()}", file=sys.stderr)
        reading.cancel()
        stopped.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        await upstream.settle(timeout)
        await upstream.stop(timeout)
    return 1 if gone.is_set() else 0


async def _pump(reader: asyncio.StreamReader, upstream: HttpUpstream) -> None:
    while line := await reader.readline():
        line = line.strip()
        if not line:
            continue
        try:
            upstream.send(line)
        except UpstreamGone:
            return
