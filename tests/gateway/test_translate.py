"""The Responses API through both provider modes, with the real openai SDK.

``passthrough`` sends the SDK's requests to a mock that speaks Responses natively; ``chat``
translates them for a mock that only speaks Chat Completions (``--chat-only``). Every scenario
runs in both modes and must give the SDK the same result.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import websockets

from tests.conftest import Proc, Processes

TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    }
]
TEXT = "mock mock mock mock "


@pytest.fixture(params=["passthrough", "chat"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def start(procs: Processes, tmp_path: Path, mode: str) -> tuple[Proc, Proc]:
    if mode == "passthrough":
        mock = procs.mock("--chunks", "5", "--chunk-size", "4")
        return mock, procs.gateway("--upstream", mock.url)
    mock = procs.mock("--chunks", "5", "--chunk-size", "4", "--chat-only")
    config = tmp_path / "chat.yaml"
    config.write_text(
        json.dumps(
            {
                "pool": {
                    "provider": {
                        "mode": "chat",
                        "profile": "cerebras",
                        "model_map": {"gpt-5-codex": "gpt-oss-120b"},
                    }
                }
            }
        )
    )
    return mock, procs.gateway("--config", str(config), "--upstream", mock.url)


@pytest.fixture
def client(procs: Processes, tmp_path: Path, mode: str) -> Iterator[tuple[openai.OpenAI, Proc]]:
    mock, gateway = start(procs, tmp_path, mode)
    with openai.OpenAI(base_url=gateway.url, api_key="x", max_retries=0) as sdk:
        yield sdk, mock


def _calls(response: Any) -> list[tuple[str, str, str]]:
    return [(o.name, o.arguments, o.call_id) for o in response.output if o.type == "function_call"]


def test_text_non_streaming(client: tuple[openai.OpenAI, Proc], mode: str) -> None:
    sdk, mock = client
    response = sdk.responses.create(model="gpt-5-codex", input="hi", instructions="be brief")
    assert response.output_text == TEXT
    assert response.status == "completed"
    assert response.model == "gpt-5-codex"
    assert response.usage is not None
    assert response.usage.total_tokens > 0
    seen = mock.get_json("/mock/stats")["recent"][-1]
    if mode == "chat":
        assert (seen["path"], seen["model"]) == ("/v1/chat/completions", "gpt-oss-120b")
    else:
        assert (seen["path"], seen["model"]) == ("/v1/responses", "gpt-5-codex")


def test_text_streaming(client: tuple[openai.OpenAI, Proc]) -> None:
    sdk, _ = client
    with sdk.responses.stream(model="gpt-5-codex", input="hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == TEXT
    assert final.output_text == TEXT
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"


def _round_trip(sdk: openai.OpenAI, create: Callable[..., Any]) -> tuple[Any, Any]:
    first = create(model="gpt-5-codex", input="weather in Paris?", tools=TOOLS)
    ((name, arguments, call_id),) = _calls(first)
    assert (name, json.loads(arguments)) == ("get_weather", {"city": "mock"})
    history: list[Any] = [
        {"role": "user", "content": "weather in Paris?"},
        {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments},
        {"type": "function_call_output", "call_id": call_id, "output": "sunny, 21C"},
    ]
    second = create(model="gpt-5-codex", input=history, tools=TOOLS)
    return first, second


def test_tool_call_round_trip(client: tuple[openai.OpenAI, Proc]) -> None:
    sdk, _ = client
    _first, second = _round_trip(sdk, sdk.responses.create)
    assert second.output_text == "tool said: sunny, 21C"
    assert not _calls(second)


def test_tool_call_round_trip_streaming(client: tuple[openai.OpenAI, Proc]) -> None:
    sdk, _ = client

    def streamed(**kwargs: Any) -> Any:
        with sdk.responses.stream(**kwargs) as stream:
            events = list(stream)
            final = stream.get_final_response()
        kinds = [e.type for e in events]
        if _calls(final):
            assert "response.function_call_arguments.delta" in kinds
            assert "response.function_call_arguments.done" in kinds
        return final

    _first, second = _round_trip(sdk, streamed)
    assert second.output_text == "tool said: sunny, 21C"


def test_both_modes_give_the_same_answers(procs: Processes, tmp_path: Path) -> None:
    results = {}
    for mode in ("passthrough", "chat"):
        _, gateway = start(procs, tmp_path, mode)
        with openai.OpenAI(base_url=gateway.url, api_key="x", max_retries=0) as sdk:
            text = sdk.responses.create(model="gpt-5-codex", input="hi").output_text
            first, second = _round_trip(sdk, sdk.responses.create)
        results[mode] = (text, _calls(first), second.output_text)
    assert results["passthrough"] == results["chat"]


def test_chat_mode_lists_mapped_models(procs: Processes, tmp_path: Path) -> None:
    _, gateway = start(procs, tmp_path, "chat")
    with openai.OpenAI(base_url=gateway.url, api_key="x") as sdk:
        assert [m.id for m in sdk.models.list()] == ["gpt-5-codex"]


def test_chat_mode_refuses_what_it_cannot_translate(procs: Processes, tmp_path: Path) -> None:
    mock, gateway = start(procs, tmp_path, "chat")
    with openai.OpenAI(base_url=gateway.url, api_key="x", max_retries=0) as sdk:
        with pytest.raises(openai.BadRequestError, match="previous_response_id"):
            sdk.responses.create(model="m", input="hi", previous_response_id="resp_1")
        with pytest.raises(openai.BadRequestError, match=r"input\[0\]"):
            sdk.responses.create(model="m", input=[{"type": "wat"}])  # type: ignore[list-item]
    assert mock.get_json("/mock/stats")["requests"] == 0


async def _ws_turn(ws: Any, frame: dict[str, Any]) -> list[dict[str, Any]]:
    await ws.send(json.dumps(frame))
    events = []
    while True:
        event = json.loads(await ws.recv())
        events.append(event)
        if event["type"] in ("response.completed", "response.failed", "error"):
            return events


async def test_websocket_responses_in_both_modes(
    procs: Processes, tmp_path: Path, mode: str
) -> None:
    _, gateway = start(procs, tmp_path, mode)
    url = gateway.url.replace("http://", "ws://") + "/responses"
    async with websockets.connect(url) as ws:
        text = await _ws_turn(
            ws, {"type": "response.create", "model": "gpt-5-codex", "input": "hi"}
        )
        deltas = [e["delta"] for e in text if e["type"] == "response.output_text.delta"]
        assert "".join(deltas) == TEXT
        assert text[-1]["type"] == "response.completed"
        call = await _ws_turn(
            ws,
            {
                "type": "response.create",
                "model": "gpt-5-codex",
                "input": [{"role": "user", "content": "weather?"}],
                "tools": TOOLS,
            },
        )
        items = call[-1]["response"]["output"]
        assert [i["type"] for i in items] == ["function_call"]
        assert json.loads(items[0]["arguments"]) == {"city": "mock"}
        bad = await _ws_turn(ws, {"type": "nonsense"})
        assert bad[-1]["type"] == "error"
        again = await _ws_turn(ws, {"type": "response.create", "model": "m", "input": "hi"})
        assert again[-1]["type"] == "response.completed"  # the connection survived the error


def test_dropped_fields_are_noted_in_the_debug_log(procs: Processes, tmp_path: Path) -> None:
    mock = procs.mock("--chat-only")
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"pool": {"provider": "chat"}}))
    gateway = procs.gateway("--config", str(config), "--upstream", mock.url, "--log-level", "debug")
    with openai.OpenAI(base_url=gateway.url, api_key="x", max_retries=0) as sdk:
        response = sdk.responses.create(
            model="m",
            input="hi",
            store=False,
            tools=[{"type": "web_search"}, *TOOLS],  # type: ignore[list-item]
        )
    assert response.status == "completed"
    gateway.stop()
    notes = [
        json.loads(line)
        for line in gateway.output().splitlines()
        if '"translation_dropped"' in line
    ]
    assert len(notes) == 1
    assert notes[0]["fields"] == ["tools[0] (type 'web_search')", "store"]
