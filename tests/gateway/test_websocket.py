"""WebSocket passthrough with the real websockets client: GET /v1/responses with Upgrade."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from tests.conftest import Processes


async def _one_response(ws: websockets.ClientConnection) -> list[dict[str, object]]:
    await ws.send(json.dumps({"type": "response.create", "model": "mock-gpt", "input": "hi"}))
    events = []
    while True:
        event = json.loads(await ws.recv())
        events.append(event)
        if event["type"] == "response.completed":
            return events


async def test_websocket_round_trip_holds_a_lease(procs: Processes) -> None:
    mock = procs.mock("--chunks", "3", "--chunk-size", "5")
    gateway = procs.gateway("--upstream", mock.url)
    ws_url = gateway.url.replace("http://", "ws://") + "/responses"
    async with websockets.connect(ws_url, additional_headers={"X-Request-ID": "ws-1"}) as ws:
        assert ws.response is not None
        assert ws.response.headers["x-request-id"] == "ws-1"
        for _ in range(2):  # two turns on one connection
            events = await _one_response(ws)
            deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
            assert "".join(deltas) == "mock mock mock "  # type: ignore[arg-type]
            assert [e["sequence_number"] for e in events] == list(range(len(events)))
        pool = gateway.get_json("/admin/pool")["backends"]
        assert pool[0]["state"] == "busy"  # the connection holds its backend
        assert pool[0]["serving"] == ["ws-1"]
    for _ in range(50):
        if gateway.get_json("/admin/pool")["backends"][0]["state"] == "idle":
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the backend was not released when the WebSocket closed")
    assert mock.get_json("/mock/stats")["credentials"]["anonymous"]["peak"] == 1


async def test_websocket_waits_for_a_single_flight_backend(procs: Processes) -> None:
    mock = procs.mock()
    gateway = procs.gateway("--upstream", mock.url)
    ws_url = gateway.url.replace("http://", "ws://") + "/responses"
    first = await websockets.connect(ws_url)
    second = asyncio.ensure_future(websockets.connect(ws_url))
    await asyncio.sleep(0.3)
    assert not second.done()  # waiting for the only backend
    assert gateway.get_json("/admin/queue")["waiting"] == 1
    await first.close()
    ws = await asyncio.wait_for(second, 5)
    assert (await _one_response(ws))[-1]["type"] == "response.completed"
    await ws.close()


async def test_websocket_to_dead_upstream_is_refused_in_openai_shape(procs: Processes) -> None:
    mock = procs.mock()
    gateway = procs.gateway("--upstream", mock.url)
    mock.popen.kill()
    mock.popen.wait(5)
    ws_url = gateway.url.replace("http://", "ws://") + "/responses"
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(ws_url)
    assert info.value.response.status_code == 502
    assert json.loads(info.value.response.body)["error"]["code"] == "upstream_error"


async def test_websocket_needs_the_client_key(procs: Processes, tmp_path) -> None:  # type: ignore[no-untyped-def]
    mock = procs.mock()
    keys = tmp_path / "keys"
    keys.write_text("k-1\n")
    gateway = procs.gateway("--upstream", mock.url, "--auth-keys-file", str(keys))
    ws_url = gateway.url.replace("http://", "ws://") + "/responses"
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(ws_url)
    assert info.value.response.status_code == 401
    async with websockets.connect(ws_url, additional_headers={"Authorization": "Bearer k-1"}) as ws:
        assert (await _one_response(ws))[-1]["type"] == "response.completed"
