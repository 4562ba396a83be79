"""SIGTERM/SIGINT: stop accepting, let in-flight requests finish, exit 0."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from tests.conftest import Processes

BODY = {"model": "mock-gpt", "stream": True, "messages": []}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_in_flight_then_exits_0(procs: Processes, sig: int) -> None:
    mock = procs.mock("--latency", "0.2", "--chunks", "6")
    gateway = procs.gateway("--upstream", mock.url)
    async with (
        aiohttp.ClientSession() as session,
        session.post(gateway.url + "/chat/completions", json=BODY) as response,
    ):
        await response.content.readuntil(b"\n\n")
        gateway.popen.send_signal(sig)
        await asyncio.sleep(0.3)
        with pytest.raises(aiohttp.ClientConnectionError):  # no longer accepting
            async with aiohttp.ClientSession() as other:
                await other.get(gateway.root + "/live")
        body = await response.read()  # … but the stream in flight finishes
    assert body.endswith(b"data: [DONE]\n\n")
    assert await asyncio.to_thread(gateway.popen.wait, 10) == 0


async def test_drain_grace_cancels_what_is_left(procs: Processes) -> None:
    mock = procs.mock("--hang")
    gateway = procs.gateway("--upstream", mock.url, env={"PROXYFLEET_SERVER__DRAIN_GRACE": "1"})
    async with aiohttp.ClientSession() as session:
        pending = asyncio.ensure_future(_post(session, gateway.url + "/chat/completions"))
        await asyncio.sleep(0.3)
        gateway.popen.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(gateway.popen.wait, 10) == 0
        status, body = await pending
    assert status == 503
    assert body["error"]["code"] == "shutting_down"


async def _post(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, dict[str, str]]]:
    async with session.post(url, json=BODY) as response:
        return response.status, await response.json()
