"""A small real MCP server (the ``mcp`` SDK) for the proxy tests, run over stdio:

    python tests/mcpproxy/server_app.py                 # stdio
    python tests/mcpproxy/server_app.py --http PORT     # streamable HTTP at /mcp

Tools: ``whoami`` (its pid), ``echo`` (sends a log notification carrying the text first, then
answers it), ``later`` (answers, then notifies on its own), ``slow`` (sleeps), ``crash`` (exits
the process). Resource: ``proxy://pid``.
"""

from __future__ import annotations

import asyncio
import os
import warnings

from mcp.server.mcpserver import Context, MCPServer

warnings.simplefilter("ignore")  # the SDK flags logging as deprecated; it still works

server = MCPServer("proxyfleet-test-server")


@server.tool()
def whoami() -> str:
    """The server process id."""
    return str(os.getpid())


@server.tool()
async def echo(text: str, ctx: Context) -> str:
    """Log the text (a notification to this client), then answer it."""
    await ctx.info(f"note:{text}")
    return f"echo:{text}"


@server.tool()
async def later(text: str, ctx: Context) -> str:
    """Answer now; send a log notification carrying the text a moment after the answer, when
    no request of this client is open (it travels on the client's GET stream)."""
    session = ctx.request_context.session

    async def notify() -> None:
        await asyncio.sleep(0.3)
        await session.send_log_message(level="info", data=f"later:{text}")

    _pending.add(asyncio.ensure_future(notify()))
    return "scheduled"


_pending: set[asyncio.Future[None]] = set()


@server.tool()
async def slow(seconds: float) -> str:
    """Answer after ``seconds``."""
    await asyncio.sleep(seconds)
    return "done"


@server.tool()
def crash() -> str:
    """Exit at once, as a crashing server would."""
    os._exit(3)


@server.resource("proxy://pid")
def pid_resource() -> str:
    """The server process id, as a resource."""
    return str(os.getpid())


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 2 and sys.argv[1] == "--http":  # streamable HTTP on 127.0.0.1:<port>
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")
