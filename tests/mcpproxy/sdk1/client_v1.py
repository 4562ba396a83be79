"""An mcp SDK 1.x client: connect to URL (streamable HTTP, or SSE when it ends in /sse), call
``whoami`` and ``echo``, print one JSON line with what came back. With ``--crash``, it then
calls ``crash`` (the server exits) and ``whoami`` twice more on the same client, and reports
what each of them raised (``after_crash``). Run in its own environment:

    uv run --no-project --with "mcp>=1.20,<2" python tests/mcpproxy/sdk1/client_v1.py URL TEXT
"""

import asyncio
import json
import sys
from datetime import timedelta
from typing import Any

from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamablehttp_client


async def _outcome(session: ClientSession, tool: str) -> str:
    try:
        result = await session.call_tool(tool, {})
    except Exception as exc:  # what the application sees: reported, not raised
        return f"{type(exc).__name__}: {exc}"
    return f"result: {result.content[0].text if result.content else result}"  # type: ignore[union-attr]


async def main(url: str, text: str, crash: bool) -> None:
    notes: list[str] = []
    after: list[str] = []

    async def on_log(params: Any) -> None:
        notes.append(str(params.data))

    transport: Any = sse_client(url) if url.endswith("/sse") else streamablehttp_client(url)
    async with (
        transport as streams,
        ClientSession(
            streams[0],
            streams[1],
            logging_callback=on_log,
            read_timeout_seconds=timedelta(seconds=60),
        ) as session,
    ):
        init = await session.initialize()
        pid = (await session.call_tool("whoami", {})).content[0].text  # type: ignore[union-attr]
        echo = (await session.call_tool("echo", {"text": text})).content[0].text  # type: ignore[union-attr]
        if crash:
            after = [await _outcome(session, tool) for tool in ("crash", "whoami", "whoami")]
    outcome = {"server": init.serverInfo.name, "pid": pid, "echo": echo, "notes": notes}
    if crash:
        outcome["after_crash"] = after
    print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], "--crash" in sys.argv[3:]))
