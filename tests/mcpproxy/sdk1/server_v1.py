"""The same test server on the mcp SDK 1.x (FastMCP): ``whoami`` and ``echo`` (a log
notification, then the answer), over stdio. Run in its own environment:

    uv run --no-project --with "mcp>=1.20,<2" python tests/mcpproxy/sdk1/server_v1.py
"""

import os

from mcp.server.fastmcp import Context, FastMCP

server = FastMCP("proxyfleet-test-server-v1")


@server.tool()
def whoami() -> str:
    """The server process id."""
    return str(os.getpid())


@server.tool()
async def echo(text: str, ctx: Context) -> str:  # type: ignore[type-arg]
    """Log the text (a notification to this client), then answer it."""
    await ctx.info(f"note:{text}")
    return f"echo:{text}"


if __name__ == "__main__":
    server.run("stdio")
