"""Responses → Chat Completions request translation, table by table (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from proxyfleet.errors import BadRequest
from proxyfleet.providers.profiles import PROFILES
from proxyfleet.providers.request import TranslateOptions, responses_to_chat

GENERIC = TranslateOptions(PROFILES["generic"])


def chat(body: dict[str, Any], options: TranslateOptions = GENERIC) -> dict[str, Any]:
    return responses_to_chat(body, options).body


def test_string_input_and_instructions() -> None:
    assert chat({"model": "m", "input": "hi", "instructions": "be brief"}) == {
        "model": "m",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    }


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"role": "user", "content": "a"}, {"role": "user", "content": "a"}),
        (
            {"type": "message", "role": "developer", "content": "d"},
            {"role": "system", "content": "d"},
        ),
        (
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "a"},
                    {"type": "input_text", "text": "b"},
                ],
            },
            {"role": "user", "content": "ab"},
        ),
        (
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": "data:x", "detail": "low"},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:x", "detail": "low"}},
                ],
            },
        ),
        (
            {"role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
            {"role": "assistant", "content": "ok"},
        ),
        (
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ),
        (
            {
                "type": "function_call_output",
                "call_id": "c1",
                "output": [
                    {"type": "input_text", "text": "4"},
                    {"type": "input_text", "text": "2"},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ),
    ],
)
def test_input_items(item: dict[str, Any], message: dict[str, Any]) -> None:
    assert chat({"model": "m", "input": [item]})["messages"] == [message]


def test_multi_turn_tool_calls_merge_into_assistant_messages() -> None:
    items: list[dict[str, Any]] = [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "two calls"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "c1", "name": "w", "arguments": '{"c":"Paris"}'},
        {"type": "function_call", "call_id": "c2", "name": "w", "arguments": '{"c":"Rome"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "c2", "output": "rain"},
        {"role": "assistant", "content": "Paris sunny, Rome rain."},
        {"role": "user", "content": "thanks"},
    ]
    assert chat({"model": "m", "input": items})["messages"] == [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "w", "arguments": '{"c":"Paris"}'},
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "w", "arguments": '{"c":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
        {"role": "assistant", "content": "Paris sunny, Rome rain."},
        {"role": "user", "content": "thanks"},
    ]


def test_reasoning_kept_when_asked() -> None:
    options = TranslateOptions(PROFILES["generic"], reasoning="keep")
    items = [
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "think"}]},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
    ]
    (message,) = chat({"model": "m", "input": items}, options)["messages"]
    assert message["reasoning_content"] == "think"
    dropped = responses_to_chat({"model": "m", "input": items}, GENERIC).dropped
    assert dropped == ["input[0] (reasoning item)"]


def test_tools_choice_and_options() -> None:
    body = {
        "model": "gpt-5-codex",
        "input": "x",
        "stream": True,
        "temperature": 0.2,
        "top_p": 0.9,
        "max_output_tokens": 100,
        "parallel_tool_calls": False,
        "store": False,
        "tool_choice": {"type": "function", "name": "f"},
        "tools": [
            {
                "type": "function",
                "name": "f",
                "description": "d",
                "parameters": {"type": "object"},
                "strict": True,
            },
            {"type": "web_search"},
            {"type": "namespace", "name": "mcp"},
        ],
        "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}},
        "reasoning": {"effort": "low"},
    }
    options = TranslateOptions(PROFILES["generic"], {"gpt-5-codex": "gpt-oss-120b"})
    result = responses_to_chat(body, options)
    assert result.body == {
        "model": "gpt-oss-120b",
        "messages": [{"role": "user", "content": "x"}],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "f",
                    "description": "d",
                    "parameters": {"type": "object"},
                    "strict": True,
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "temperature": 0.2,
        "top_p": 0.9,
        "parallel_tool_calls": False,
        "max_tokens": 100,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "s", "schema": {"type": "object"}},
        },
        "reasoning_effort": "low",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert result.stream
    assert result.requested_model == "gpt-5-codex"
    assert result.dropped == [
        "tools[1] (type 'web_search')",
        "tools[2] (type 'namespace')",
        "store",
    ]


def test_cerebras_profile_drops_what_it_refuses() -> None:
    options = TranslateOptions(PROFILES["cerebras"], default_model="gpt-oss-120b")
    result = responses_to_chat(
        {
            "model": "anything",
            "input": "x",
            "parallel_tool_calls": True,
            "max_output_tokens": 5,
            "tools": [{"type": "function", "name": "f"}],
            "tool_choice": "required",
        },
        options,
    )
    assert result.body == {
        "model": "gpt-oss-120b",
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "max_completion_tokens": 5,
    }
    assert result.dropped == ["tool_choice 'required' (cerebras)", "parallel_tool_calls (cerebras)"]
    extra = TranslateOptions(PROFILES["generic"].with_drops(("temperature",)))
    assert "temperature" not in chat({"model": "m", "input": "x", "temperature": 1}, extra)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"input": "x"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": 5}, "input"),
        ({"model": "m", "input": [5]}, "input[0]"),
        ({"model": "m", "input": [{"type": "wat"}]}, "input[0]"),
        ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input[0]"),
        ({"model": "m", "input": [{"role": "user"}]}, "input[0]"),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_file"}]}]},
            "input[0].content[0]",
        ),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input[0].content[0]",
        ),
        ({"model": "m", "input": [{"type": "function_call", "name": "f"}]}, "input[0]"),
        ({"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0]"),
        ({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}, "input[0]"),
        ({"model": "m", "input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"model": "m", "input": "x", "instructions": 3}, "instructions"),
        ({"model": "m", "input": "x", "tools": {}}, "tools"),
        ({"model": "m", "input": "x", "tools": [{"type": "function"}]}, "tools[0]"),
    ],
)
def test_malformed_requests_are_clear_400s(body: dict[str, Any], where: str) -> None:
    with pytest.raises(BadRequest) as info:
        responses_to_chat(body, GENERIC)
    assert info.value.status == 400
    assert info.value.message.startswith(where + ":")
