"""``GET /v1/models``: from the config (or a chat gateway's ``model_map``), else an upstream's
answer kept for ``server.models_cache_ttl`` seconds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from proxyfleet._asgi import Message, Send, send_json

__all__ = ["Models"]


class Models:
    def __init__(self, configured: Sequence[str], ttl: float) -> None:
        self._configured = tuple(configured)
        self._ttl = ttl
        self._cached: tuple[float, bytes] | None = None

    async def answer(self, send: Send, rid: str) -> bool:
        """Serve the list from config or cache; False when the upstream must be asked."""
        if self._configured:
            data = {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "proxyfleet"}
                    for m in self._configured
                ],
            }
            await send_json(send, 200, data, rid.encode())
            return True
        cached = self._cached
        if cached is not None and asyncio.get_running_loop().time() - cached[0] < self._ttl:
            await send_json(send, 200, json.loads(cached[1]), rid.encode())
            return True
        return False

    def caching(self, send: Send) -> Send:
        """Wrap ``send`` so that a 200 answer from upstream is kept for the next requests."""
        parts: list[bytes] = []
        status = 0

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif status == 200:
                parts.append(message.get("body", b""))
                if not message.get("more_body"):
                    self._cached = (asyncio.get_running_loop().time(), b"".join(parts))
            await send(message)

        return capture
