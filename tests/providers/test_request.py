"""Responses → Chat Completions request translation, table by table (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

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


# -- hostile input: whatever a client sends, the answer is a translation or a 400 ----------------

_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
_KEYS = [
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "stream",
    "temperature",
    "top_p",
    "max_output_tokens",
    "text",
    "reasoning",
    "previous_response_id",
    "store",
    "metadata",
    "parallel_tool_calls",
    "user",
    "include",
]
_ITEM_KEYS = ["type", "role", "content", "call_id", "name", "arguments", "output", "summary", "id"]
_ITEM_TYPES = ["message", "function_call", "function_call_output", "reasoning", "item_reference"]
_PART_TYPES = ["input_text", "output_text", "input_image", "refusal", "input_file", "weird"]
_part = st.fixed_dictionaries(
    {"type": st.sampled_from(_PART_TYPES) | _SCALARS},
    optional={"text": _JSON, "image_url": _JSON, "refusal": _JSON, "detail": _JSON},
)
_item = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(_ITEM_TYPES) | _SCALARS,
        "role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]) | _JSON,
        "content": st.text() | st.lists(_part | _JSON, max_size=4) | _JSON,
        "call_id": _JSON,
        "name": _JSON,
        "arguments": _JSON,
        "output": _JSON,
        "summary": _JSON,
    },
)
_tool = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["function", "web_search", "custom"]) | _JSON,
        "name": _JSON,
        "parameters": _JSON,
        "description": _JSON,
        "strict": _JSON,
    },
)
_request = st.fixed_dictionaries(
    {},
    optional={
        "model": st.text() | _JSON,
        "input": st.text() | st.lists(_item | _JSON, max_size=5) | _JSON,
        "tools": st.lists(_tool | _JSON, max_size=3) | _JSON,
        "tool_choice": st.sampled_from(["auto", "none", "required"]) | _JSON,
        "text": st.fixed_dictionaries({}, optional={"format": _JSON}) | _JSON,
        "reasoning": _JSON,
        **{key: _JSON for key in _KEYS if key not in ("model", "input", "tools", "tool_choice")},
    },
)


@hypothesis_settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(data=_request, keep=st.booleans())
def test_hostile_responses_input_is_translated_or_refused_with_400(
    data: dict[str, Any], keep: bool
) -> None:
    options = TranslateOptions(PROFILES["generic"], reasoning="keep" if keep else "drop")
    refused: BadRequest | None = None
    try:
        chat = responses_to_chat(data, options)
    except BadRequest as exc:  # the one way to refuse; anything else fails the test
        refused = exc
    if refused is not None:
        assert (refused.status, bool(refused.message)) == (400, True)
        return
    assert isinstance(chat.body["messages"], list)
    assert isinstance(chat.body["model"], str)
