"""The HTTP/1.1 server protocol on its own: uvicorn serving a small echo app with
``protocol_for(limits)`` on 127.0.0.1, spoken to over raw sockets. Limits per request (not
per connection), ignored upgrades, HTTP/1.0 framing, lingering refusals, OPTIONS *."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from proxyfleet._asgi import read_body, send_json
from proxyfleet.gateway.protocol import Limits, protocol_for


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = await read_body(scope, receive, 1 << 24)
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await send_json(
        send,
        200,
        {"path": scope["path"], "method": scope["method"], "body": body.decode("latin-1")},
    )


@pytest.fixture
async def port() -> AsyncIterator[int]:
    limits = Limits(header_timeout=1.0, body_timeout=1.0, max_header_bytes=4096, max_headers=20)
    config = uvicorn.Config(
        echo, host="127.0.0.1", port=0, http=protocol_for(limits), lifespan="off", log_config=None
    )
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    async with asyncio.timeout(10):
        while not server.started:  # noqa: ASYNC110 - uvicorn's own flag, no event to wait on
            await asyncio.sleep(0.01)
    yield server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    await task


async def talk(port: int, data: bytes, *, read_for: float = 3.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = b""
    try:
        async with asyncio.timeout(read_for):
            while chunk := await reader.read(65536):
                out += chunk
    except TimeoutError:
        pass
    writer.close()
    return out


def answers(data: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each response on a connection (bodies framed by Content-Length)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        out.append((status, rest[:length]))
        data = rest[length:]
    return out


async def test_limits_are_per_request_not_per_connection(port: int) -> None:
    one = b"GET /a HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 3000 + b"\r\n\r\n"
    data = await talk(port, one + one + b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert [status for status, _ in answers(data)] == [200, 200, 200]


async def test_a_head_above_the_limit_is_431_and_readable_after_a_big_send(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (2 * 1024 * 1024))
    await writer.drain()  # the whole 2 MiB goes out: the refused connection still reads
    data = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    ((status, body),) = answers(data)
    assert status == 431
    assert json.loads(body)["error"]["code"] == "header_too_large"


async def test_too_many_headers(port: int) -> None:
    head = b"".join(b"X-%d: v\r\n" % n for n in range(25))
    ((status, body),) = answers(await talk(port, b"GET /a HTTP/1.1\r\n" + head + b"\r\n"))
    assert (status, json.loads(body)["error"]["code"]) == (431, "too_many_headers")


async def test_an_ignored_upgrade_keeps_its_body_and_ends_the_connection(port: int) -> None:
    body = b"0123456789"
    data = await talk(
        port,
        b"POST /u HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: 10\r\n\r\n" + body + b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    ((status, answer),) = answers(data)  # one answer: the connection closed after it
    assert status == 200
    assert json.loads(answer) == {"path": "/u", "method": "POST", "body": "0123456789"}


async def test_an_ignored_upgrade_with_a_chunked_body(port: int) -> None:
    data = await talk(
        port,
        b"POST /u HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo/2\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n",
    )
    ((status, answer),) = answers(data)
    assert (status, json.loads(answer)["body"]) == (200, "abcdef")


async def test_http_1_0_gets_framed_answers_framed_and_streams_close_delimited(port: int) -> None:
    framed = await talk(port, b"GET /a HTTP/1.0\r\n\r\n")
    ((status, body),) = answers(framed)
    assert (status, json.loads(body)["path"]) == (200, "/a")
    stream = await talk(port, b"GET /stream HTTP/1.0\r\n\r\n")
    head, _, rest = stream.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    assert rest == b"one two three"


async def test_options_asterisk_is_a_target_too(port: int) -> None:
    ((status, _),) = answers(await talk(port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status == 200


async def test_a_stalled_body_is_408(port: int) -> None:
    data = await talk(port, b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n123")
    ((status, body),) = answers(data)
    assert (status, json.loads(body)["error"]["code"]) == (408, "request_timeout")
