"""SSE passes chunk by chunk; a backend failing mid-stream ends it with a parseable error."""

from __future__ import annotations

import json

import aiohttp
import openai
import pytest

from tests.conftest import Processes

BODY = {"model": "mock-gpt", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


async def test_first_chunk_arrives_while_upstream_still_streams(procs: Processes) -> None:
    mock = procs.mock("--latency", "0.4", "--chunks", "4")
    gateway = procs.gateway("--upstream", mock.url)
    async with (
        aiohttp.ClientSession() as session,
        session.post(gateway.url + "/chat/completions", json=BODY) as response,
    ):
        assert response.headers["Content-Type"].startswith("text/event-stream")
        first = await response.content.readuntil(b"\n\n")
        assert first.startswith(b"data: {")
        assert mock.get_json("/mock/stats")["inflight"] == 1  # the upstream is not done yet
        rest = await response.read()
    assert rest.endswith(b"data: [DONE]\n\n")


async def test_mid_stream_failure_ends_with_sse_error(procs: Processes) -> None:
    mock = procs.mock("--drop-after", "3")
    gateway = procs.gateway("--upstream", mock.url)
    async with (
        aiohttp.ClientSession() as session,
        session.post(gateway.url + "/chat/completions", json=BODY) as response,
    ):
        assert response.status == 200
        text = (await response.read()).decode()
    events = [e for e in text.split("\n\n") if e]
    assert len(events) == 4  # 3 chunks, then our error event
    assert events[-1].startswith("event: error\ndata: ")
    error = json.loads(events[-1].split("data: ", 1)[1])["error"]
    assert error["code"] == "upstream_stream_broken"
    assert set(error) == {"message", "type", "code"}
    pool = gateway.get_json("/admin/pool")["backends"][0]
    assert pool["failures"] == 1  # never retried after bytes were sent …
    assert mock.get_json("/mock/stats")["requests"] == 1  # … so the upstream saw it once


async def test_sdk_surfaces_the_mid_stream_error(procs: Processes) -> None:
    mock = procs.mock("--drop-after", "2")
    gateway = procs.gateway("--upstream", mock.url)
    async with openai.AsyncOpenAI(base_url=gateway.url, api_key="x", max_retries=0) as client:
        stream = await client.chat.completions.create(**BODY)  # type: ignore[call-overload]
        with pytest.raises(openai.APIError, match="mid-stream"):
            async for _ in stream:
                pass


async def test_5xx_before_first_byte_fails_over(procs: Processes) -> None:
    bad = procs.mock("--fail-rate", "1", "--fail-status", "503", "--name", "bad")
    good = procs.mock("--name", "good")
    gateway = procs.gateway(
        "--upstream", bad.url, "--upstream", good.url, "--selection", "round-robin"
    )
    async with openai.AsyncOpenAI(base_url=gateway.url, api_key="x", max_retries=0) as client:
        for _ in range(4):
            answer = await client.chat.completions.create(**{**BODY, "stream": False})  # type: ignore[call-overload]
            assert answer.choices[0].message.content
    assert bad.get_json("/mock/stats")["requests"] >= 1
    assert good.get_json("/mock/stats")["requests"] == 4
