"""An in-process ASGI client: requests to an app without sockets, for tests on virtual time.

::

    reply = await call(gateway, "POST", "/v1/chat/completions", body)
    assert (await reply.status()) == 200
    body = await reply.read()

A reply can be read chunk by chunk, and the client can leave (``reply.disconnect()``) at any
point, as a real one would: the app's next ``receive()`` says ``http.disconnect``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

Message = MutableMapping[str, Any]
App = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


class Reply:
    def __init__(self, task: asyncio.Task[None], outbox: asyncio.Queue[Message], inbox: Any):
        self.task = task
        self._outbox = outbox
        self._inbox = inbox
        self.head: Message | None = None
        self.chunks: list[bytes] = []
        self.complete = False

    async def status(self) -> int:
        if self.head is None:
            self.head = await self._next()
            assert self.head["type"] == "http.response.start", self.head
        return int(self.head["status"])

    @property
    def headers(self) -> dict[str, str]:
        assert self.head is not None
        return {k.decode(): v.decode() for k, v in self.head["headers"]}

    async def chunk(self) -> bytes | None:
        """The next body message's bytes, or None after the last one."""
        await self.status()
        if self.complete:
            return None
        message = await self._next()
        body = bytes(message.get("body", b""))
        self.chunks.append(body)
        if not message.get("more_body"):
            self.complete = True
        return body

    async def read(self) -> bytes:
        while await self.chunk() is not None:
            pass
        return b"".join(self.chunks)

    async def json(self) -> Any:
        return json.loads(await self.read())

    def disconnect(self) -> None:
        self._inbox.put_nowait({"type": "http.disconnect"})

    async def _next(self) -> Message:
        getter = asyncio.ensure_future(self._outbox.get())
        done, _ = await asyncio.wait({getter, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        self.task.result()  # the app raised: show it
        raise AssertionError("the app returned without answering")


async def call(
    app: App,
    method: str,
    path: str,
    body: bytes | dict[str, Any] = b"",
    headers: Sequence[tuple[str, str]] = (),
    client: tuple[str, int] = ("127.0.0.1", 40000),
) -> Reply:
    """Start a request to ``app``; its answer is read from the returned reply."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    raw = [(k.lower().encode(), v.encode()) for k, v in headers]
    if data:
        raw.append((b"content-length", str(len(data)).encode()))
        if isinstance(body, dict):
            raw.append((b"content-type", b"application/json"))
    path_only, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "path": path_only,
        "raw_path": path_only.encode(),
        "query_string": query.encode(),
        "headers": raw,
        "client": client,
        "server": ("127.0.0.1", 2048),
    }
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    inbox.put_nowait({"type": "http.request", "body": data, "more_body": False})
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    task = asyncio.ensure_future(app(scope, inbox.get, outbox.put))
    return Reply(task, outbox, inbox)


def memory_backends(count: int, cap: int = 1) -> list[Any]:
    """``count`` backends of kind ``memory``, each with its own key."""
    from proxyfleet.pool import BackendSpec

    return [
        BackendSpec(
            f"m{i}",
            f"memory://m{i}",
            (("Authorization", f"Bearer key-{i}"),),
            cap,
            "test",
            "memory",
        )
        for i in range(count)
    ]


def memory_gateway(transport: Any, backends: int | list[Any] = 2, **sections: Any) -> Any:
    """A gateway over memory backends answered by ``transport`` (a MemoryTransport); config
    ``sections`` as in YAML (``pool={"lease_timeout": 5}``). Its pool's clock is the event
    loop's, so on a virtual-time loop quarantines end on virtual time too."""
    from proxyfleet.config.model import Config
    from proxyfleet.gateway.app import Gateway

    config = Config.model_validate(sections)
    specs = memory_backends(backends) if isinstance(backends, int) else backends
    loop = asyncio.get_running_loop()
    return Gateway(config, specs, transports={"memory": transport}, clock=loop.time)


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
