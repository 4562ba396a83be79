"""/v1/models from config or a cached upstream answer (kept for models_cache_ttl)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import openai

from proxyfleet.transports import Answer, MemoryTransport
from tests.asgi import call, memory_gateway
from tests.conftest import Processes
from tests.virtual import run


async def test_models_from_config(procs: Processes, tmp_path: Path) -> None:
    mock = procs.mock()
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"server": {"models": ["gpt-5-codex", "gpt-4o"]}}))
    gateway = procs.gateway("--config", str(config), "--upstream", mock.url)
    async with openai.AsyncOpenAI(base_url=gateway.url, api_key="x") as client:
        assert [m.id async for m in client.models.list()] == ["gpt-5-codex", "gpt-4o"]
    assert mock.get_json("/mock/stats")["requests"] == 0


async def test_models_from_upstream_are_cached(procs: Processes) -> None:
    mock = procs.mock()
    gateway = procs.gateway("--upstream", mock.url)
    async with openai.AsyncOpenAI(base_url=gateway.url, api_key="x") as client:
        for _ in range(3):
            assert [m.id async for m in client.models.list()] == ["mock-gpt", "mock-gpt-mini"]
    assert mock.get_json("/mock/stats")["requests"] == 1


def test_an_upstream_list_is_kept_for_its_ttl_then_asked_again() -> None:
    async def scenario() -> None:
        listing = {"object": "list", "data": [{"id": "up-model", "object": "model"}]}
        transport = MemoryTransport(Answer(chunks=(json.dumps(listing).encode(),)))
        gateway = memory_gateway(transport, 1, server={"models_cache_ttl": 60})
        await gateway.start()
        for _ in range(3):
            assert await (await call(gateway, "GET", "/v1/models")).json() == listing
        assert len(transport.seen) == 1
        await asyncio.sleep(61.0)
        assert await (await call(gateway, "GET", "/v1/models")).json() == listing
        assert len(transport.seen) == 2
        await gateway.stop()

    run(scenario())


def test_a_failed_listing_is_not_kept() -> None:
    async def scenario() -> None:
        answers = iter([Answer(status=404, chunks=(b'{"error": "no"}',)), Answer()])
        transport = MemoryTransport(lambda backend, request: next(answers))
        gateway = memory_gateway(transport, 1, pool={"retries": 0})
        await gateway.start()
        assert await (await call(gateway, "GET", "/v1/models")).status() == 404
        assert await (await call(gateway, "GET", "/v1/models")).status() == 200
        assert len(transport.seen) == 2
        await gateway.stop()

    run(scenario())
