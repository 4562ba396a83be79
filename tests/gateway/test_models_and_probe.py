"""/v1/models from config or a cached upstream answer; the active probe restores a backend."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import openai

from tests.conftest import Processes


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


async def test_active_probe_brings_a_backend_back_without_traffic(procs: Processes) -> None:
    mock = procs.mock()
    port = int(mock.url.split(":")[2].split("/")[0])
    gateway = procs.gateway(
        "--upstream",
        mock.url,
        env={
            "PROXYFLEET_POOL__PROBE__ENABLED": "true",
            "PROXYFLEET_POOL__PROBE__INTERVAL": "0.2",
            "PROXYFLEET_POOL__UNHEALTHY_AFTER": "1",
            "PROXYFLEET_POOL__COOLDOWN": "0.3",
        },
    )
    mock.popen.kill()
    mock.popen.wait(5)
    for _ in range(50):  # the probe finds it dead
        if gateway.get_json("/admin/pool")["backends"][0]["state"] == "unhealthy":
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(gateway.get_json("/admin/pool"))
    procs.mock(port=port)
    for _ in range(50):  # … and alive again, with no client request in between
        if gateway.get_json("/admin/pool")["backends"][0]["state"] == "idle":
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(gateway.get_json("/admin/pool"))
    assert gateway.get_json("/ready")["status"] == "ready"
