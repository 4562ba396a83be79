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


TOOLS = [
    {
        "type": "function",
        "name": "exec_command",
        "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
    }
]


def done_items(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["item"] for e in events if e["type"] == "response.output_item.done"]


async def test_a_turn_after_a_tool_call_is_resolved_from_the_connections_own_turns(
    procs: Processes, tmp_path: Path
) -> None:
    """As the Codex CLI does: the next turn names the previous response and sends only the
    tool's output (store: false). The provider gets the whole conversation."""
    mock, gateway = chat_gateway(procs, tmp_path)
    url = gateway.url.replace("http://", "ws://") + "/responses"
    async with websockets.connect(url) as ws:
        first = await turn(
            ws,
            {
                "type": "response.create",
                "model": "m",
                "store": False,
                "input": [{"type": "message", "role": "user", "content": "list files"}],
                "tools": TOOLS,
            },
        )
        assert first[-1]["type"] == "response.completed"
        (call,) = done_items(first)
        assert call["type"] == "function_call"
        second = await turn(
            ws,
            {
                "type": "response.create",
                "model": "m",
                "store": False,
                "previous_response_id": first[-1]["response"]["id"],
                "input": [
                    {"type": "function_call_output", "call_id": call["call_id"], "output": "a.txt"}
                ],
                "tools": TOOLS,
            },
        )
        assert second[-1]["type"] == "response.completed", second[-1]
        (message,) = done_items(second)
        assert message["content"][0]["text"] == "tool said: a.txt"
        # and a third turn continues from the second, with a plain string input
        third = await turn(
            ws,
            {
                "type": "response.create",
                "model": "m",
                "previous_response_id": second[-1]["response"]["id"],
                "input": "thanks",
            },
        )
        assert third[-1]["type"] == "response.completed", third[-1]
    assert mock.get_json("/mock/stats")["requests"] == 3


async def test_a_warm_up_is_answered_without_a_backend(procs: Processes, tmp_path: Path) -> None:
    """``"generate": false`` opens a session: a response id to continue from, nothing billed;
    the next turn carries the warm-up's prompt to the provider."""
    mock, gateway = chat_gateway(procs, tmp_path)
    url = gateway.url.replace("http://", "ws://") + "/responses"
    system = {"type": "message", "role": "developer", "content": "you are a mock"}
    async with websockets.connect(url) as ws:
        warm = await turn(
            ws,
            {
                "type": "response.create",
                "model": "m",
                "input": [system],
                "tools": TOOLS,
                "generate": False,
            },
        )
        assert [e["type"] for e in warm] == [
            "response.created",
            "response.in_progress",
            "response.completed",
        ]
        assert warm[-1]["response"]["output"] == []
        assert mock.get_json("/mock/stats")["requests"] == 0  # no backend touched
        pool = gateway.get_json("/admin/pool")["backends"]
        assert pool[0]["leases_served"] == 0
        events = await turn(
            ws,
            {
                "type": "response.create",
                "model": "m",
                "previous_response_id": warm[-1]["response"]["id"],
                "input": "hello",
            },
        )
        assert events[-1]["type"] == "response.completed", events[-1]
    stats = mock.get_json("/mock/stats")
    assert stats["requests"] == 1


async def test_an_unknown_previous_response_is_an_error_frame_with_status_and_code(
    procs: Processes, tmp_path: Path
) -> None:
    """What Codex acts on: status 400 and previous_response_not_found (it resends the whole
    conversation). Another connection's response is unknown here: memory is per connection."""
    mock, gateway = chat_gateway(procs, tmp_path)
    url = gateway.url.replace("http://", "ws://") + "/responses"
    async with websockets.connect(url) as ws:
        done = await turn(ws, {"type": "response.create", "model": "m", "input": "hi"})
        earlier = done[-1]["response"]["id"]
    async with websockets.connect(url) as ws:
        refused = await turn(
            ws,
            {
                "type": "response.create",
                "model": "m",
                "previous_response_id": earlier,
                "input": "more",
            },
        )
        (error,) = refused
        assert error["type"] == "error"
        assert error["status"] == 400
        assert error["error"]["code"] == "previous_response_not_found"
        assert error["error"]["type"] == "invalid_request_error"
        assert error["error"]["param"] == "previous_response_id"
        # the connection stays open for the client's resend
        events = await turn(ws, {"type": "response.create", "model": "m", "input": "hi"})
        assert events[-1]["type"] == "response.completed"
    assert mock.get_json("/mock/stats")["requests"] == 2


async def test_every_error_frame_carries_a_status(procs: Processes, tmp_path: Path) -> None:
    """An upstream 500 is 502 (Codex retries, then reports it); a provider's 400 stays 400;
    a frame the gateway cannot read is 400; no backend at all is 503."""
    mock, gateway = chat_gateway(procs, tmp_path, "--fail-rate", "1", "--fail-status", "500")
    url = gateway.url.replace("http://", "ws://") + "/responses"
    async with websockets.connect(url) as ws:
        (failed,) = await turn(ws, {"type": "response.create", "model": "m", "input": "hi"})
        assert (failed["status"], failed["error"]["code"]) == (502, "upstream_error")
        assert failed["error"]["message"].startswith("backend answered 500")
        set_faults(mock, fail_status=400)
        (refused,) = await turn(ws, {"type": "response.create", "model": "m", "input": "hi"})
        assert (refused["status"], refused["error"]["type"]) == (400, "invalid_request_error")
        await ws.send("not json")
        (unreadable,) = [json.loads(await ws.recv())]
        assert (unreadable["type"], unreadable["status"]) == ("error", 400)
        (invalid,) = await turn(ws, {"type": "response.create", "input": {"not": "valid"}})
        assert invalid["status"] == 400
        for frame in (failed, refused, unreadable, invalid):
            assert set(frame["error"]) >= {"type", "code", "message"}
