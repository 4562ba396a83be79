"""Transparency: the same scenario straight to the mock and through the gateway gives the same
bytes, chat and responses, JSON and streamed, tool calls included (the mock's
``--deterministic`` makes its ids digests of the request, so identical requests get identical
answers; the gateway sends the backend's key, the direct request the same key)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Processes, write_keys

KEY = "sk-parity-0001"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
SCENARIO: list[tuple[str, dict[str, Any]]] = [
    ("/chat/completions", {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}),
    (
        "/chat/completions",
        {"model": "mock-gpt", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    ),
    (
        "/chat/completions",
        {"model": "mock-gpt", "messages": [{"role": "user", "content": "w?"}], "tools": TOOLS},
    ),
    (
        "/chat/completions",
        {
            "model": "mock-gpt",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "w?"}],
            "tools": TOOLS,
        },
    ),
    ("/responses", {"model": "mock-gpt", "input": "hi"}),
    ("/responses", {"model": "mock-gpt", "input": "hi", "stream": True}),
]


async def _run(base: str, key: str) -> list[tuple[int, str, bytes]]:
    out = []
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        for path, body in SCENARIO:
            async with session.post(base + path, data=json.dumps(body), headers=headers) as r:
                out.append((r.status, r.headers.get("Content-Type", ""), await r.read()))
        async with session.get(base + "/models", headers=headers) as r:
            out.append((r.status, r.headers.get("Content-Type", ""), await r.read()))
    return out


@pytest.mark.parametrize("mode", ["single-flight", "shared"])
async def test_straight_and_through_the_gateway_are_byte_for_byte_the_same(
    procs: Processes, tmp_path: Path, mode: str
) -> None:
    mock = procs.mock("--deterministic", "--chunks", "4", "--latency", "0.01")
    creds = write_keys(tmp_path / "accounts", {"only": KEY})
    flags = ["--credentials-dir", str(creds), "--upstream", mock.url]
    if mode == "shared":
        flags += ["--max-concurrency", "8"]
    gateway = procs.gateway(*flags)
    direct = await _run(mock.url, KEY)
    proxied = await _run(gateway.url, "anything: the gateway sends the backend's key")
    assert [status for status, _, _ in direct] == [200] * (len(SCENARIO) + 1)
    for (status, kind, body), (p_status, p_kind, p_body) in zip(direct, proxied, strict=True):
        assert (p_status, p_kind.split(";")[0]) == (status, kind.split(";")[0])
        assert p_body == body
    assert len({body for _, _, body in direct}) == len(direct)  # every answer is its own
