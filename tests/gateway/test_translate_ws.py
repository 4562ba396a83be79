"""``provider: chat`` over WebSocket, with the real websockets client and a chat-only mock:
each turn leases a backend for itself only, and failures come back as frames on a connection
that stays open."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import websockets

from tests.conftest import Proc, Processes


def chat_gateway(procs: Processes, tmp_path: Path, *mock_flags: str) -> tuple[Proc, Proc]:
    mock = procs.mock("--chat-only", *mock_flags)
    config = tmp_path / "chat.yaml"
    config.write_text(json.dumps({"pool": {"provider": "chat", "retries": 0}}))
    return mock, procs.gateway("--config", str(config), "--upstream", mock.url)


async def turn(ws: websockets.ClientConnection, frame: dict[str, Any]) -> list[dict[str, Any]]:
    await ws.send(json.dumps(frame))
    events = []
    while True:
        event = json.loads(await ws.recv())
        events.append(event)
        if event["type"] in ("response.completed", "response.failed", "error"):
            return events


def set_faults(mock: Proc, **faults: Any) -> None:
    request = urllib.request.Request(
        mock.root + "/mock/faults",
        data=json.dumps(faults).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=5).close()


async def test_each_turn_leases_a_backend_for_itself(procs: Processes, tmp_path: Path) -> None:
    mock, gateway = chat_gateway(procs, tmp_path)
    url = gateway.url.replace("http://", "ws://") + "/responses"
    async with websockets.connect(url) as ws:
        for _ in range(2):
            events = await turn(ws, {"type": "response.create", "model": "m", "input": "hi"})
            assert events[-1]["type"] == "response.completed"
            pool = gateway.get_json("/admin/pool")["backends"]
            assert pool[0]["state"] == "idle"  # between turns the connection holds nothing
    assert mock.get_json("/mock/stats")["requests"] == 2


async def test_a_failed_turn_is_an_error_frame_and_the_next_turn_works(
    procs: Processes, tmp_path: Path
) -> None:
    mock, gateway = chat_gateway(procs, tmp_path, "--fail-rate", "1", "--fail-status", "500")
    url = gateway.url.replace("http://", "ws://") + "/responses"
    async with websockets.connect(url) as ws:
        failed = await turn(ws, {"type": "response.create", "model": "m", "input": "hi"})
        assert failed[-1]["type"] == "error"
        assert failed[-1]["error"]["code"] == "upstream_error"
        set_faults(mock, fail_rate=0.0)
        events = await turn(ws, {"type": "response.create", "model": "m", "input": "hi"})
        assert events[-1]["type"] == "response.completed"
        refused = await turn(ws, {"type": "response.create", "input": {"not": "valid"}})
        assert refused[-1]["type"] == "error"
        assert refused[-1]["error"]["type"] == "invalid_request_error"
