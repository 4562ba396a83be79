"""What the mock decides to answer (pure): the reply text, a call of the first offered tool with
arguments made from its schema, the quoted tool result, for chat and Responses bodies alike."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyfleet.mock.plan import Plan, ToolCall, plan_chat, plan_responses, reply_text
from proxyfleet.providers.profiles import PROFILES
from proxyfleet.providers.request import TranslateOptions, responses_to_chat

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "celsius": {"type": "boolean"},
        "ratio": {"type": "number"},
        "tags": {"type": "array"},
    },
}


def chat_tool(name: str, parameters: Any = WEATHER) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def responses_tool(name: str, parameters: Any = WEATHER) -> dict[str, Any]:
    return {"type": "function", "name": name, "parameters": parameters}


def test_reply_text_pieces() -> None:
    assert reply_text(3, 4) == ["mock", " moc", "k mo"]
    assert reply_text(1, 12) == ["mock mock mo"]
    assert reply_text(0, 8) == []


@given(chunks=st.integers(0, 40), size=st.integers(1, 40))
def test_reply_text_is_chunks_pieces_of_chunk_size_reading_mock(chunks: int, size: int) -> None:
    pieces = reply_text(chunks, size)
    assert len(pieces) == chunks
    assert all(len(piece) == size for piece in pieces)
    text = "".join(pieces)
    assert text == ("mock " * len(text))[: len(text)]


def test_plain_conversation_gets_the_reply_text() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    plan = plan_chat(body, 2, 5)
    assert plan == Plan(("mock ", "mock "))
    assert plan.call is None
    assert plan.text == "mock mock "
    assert plan_chat({}, 1, 4) == Plan(("mock",))  # no messages at all


def test_offered_tools_and_a_user_turn_give_a_call_of_the_first_tool() -> None:
    body = {
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": [chat_tool("get_weather"), chat_tool("other")],
    }
    plan = plan_chat(body, 8, 8)
    assert plan.pieces == ()
    assert plan.text == ""
    assert plan.call is not None
    assert plan.call.name == "get_weather"
    assert plan.call.call_id.startswith("call_")
    assert len(plan.call.call_id) == len("call_") + 16
    assert json.loads(plan.call.arguments) == {
        "city": "mock",
        "days": 1,
        "celsius": True,
        "ratio": 1,
        "tags": None,  # a type it has no value for
    }
    assert " " not in plan.call.arguments  # compact JSON


def test_call_ids_are_deterministic_per_user_content() -> None:
    def call_of(content: str) -> ToolCall | None:
        body = {"messages": [{"role": "user", "content": content}], "tools": [chat_tool("f")]}
        return plan_chat(body, 1, 1).call

    first, again, other = call_of("a"), call_of("a"), call_of("b")
    assert first is not None
    assert other is not None
    assert first == again
    assert first.call_id != other.call_id


@pytest.mark.parametrize("parameters", [None, {}, "not a schema", {"properties": {"x": 5}}])
def test_tools_without_a_usable_schema_get_plain_arguments(parameters: Any) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "tools": [chat_tool("f", parameters)]}
    call = plan_chat(body, 1, 1).call
    assert call is not None
    expected = {"x": None} if isinstance(parameters, dict) and parameters.get("properties") else {}
    assert json.loads(call.arguments) == expected


def test_tools_but_the_last_turn_is_not_the_users_give_text() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "thinking"},
        ],
        "tools": [chat_tool("f")],
    }
    assert plan_chat(body, 1, 4) == Plan(("mock",))


def test_a_tool_result_is_quoted_in_chunk_size_pieces() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "call_1", "function": {"name": "f"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        "tools": [chat_tool("f")],  # tools still offered: the result wins
    }
    plan = plan_chat(body, 8, 4)
    assert plan.call is None
    assert plan.text == "tool said: sunny"
    assert plan.pieces == ("tool", " sai", "d: s", "unny")


def test_messages_that_are_not_objects_are_skipped() -> None:
    call = {"role": "assistant", "tool_calls": [{"id": "c"}]}
    body = {"messages": [call, {"role": "tool", "tool_call_id": "c", "content": "r"}, "junk", 3]}
    assert plan_chat(body, 1, 100).text == "tool said: r"


def test_responses_string_input_and_tool_call() -> None:
    assert plan_responses({"input": "hi"}, 2, 4) == Plan(("mock", " moc"))
    body = {"input": "weather?", "tools": [responses_tool("get_weather")]}
    call = plan_responses(body, 1, 1).call
    assert call is not None
    assert call.name == "get_weather"
    assert json.loads(call.arguments)["city"] == "mock"


def test_responses_only_function_tools_count() -> None:
    body = {"input": "q", "tools": [{"type": "web_search"}, responses_tool("lookup")]}
    call = plan_responses(body, 1, 1).call
    assert call is not None
    assert call.name == "lookup"
    assert plan_responses({"input": "q", "tools": [{"type": "web_search"}]}, 1, 4).call is None


def test_responses_function_call_output_is_quoted() -> None:
    body = {
        "input": [
            {"role": "user", "content": "q"},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "42 degrees"},
        ],
        "tools": [responses_tool("f")],
    }
    assert plan_responses(body, 1, 100) == Plan(("tool said: 42 degrees",))


def test_responses_sdk_content_parts_seed_the_same_call_as_plain_text() -> None:
    parts = [{"type": "input_text", "text": "wea"}, {"type": "input_text", "text": "ther"}]
    tools = [responses_tool("f")]
    as_parts = plan_responses({"input": [{"role": "user", "content": parts}], "tools": tools}, 1, 1)
    as_text = plan_responses({"input": "weather", "tools": tools}, 1, 1)
    assert as_parts.call is not None
    assert as_parts.call == as_text.call


def test_empty_responses_input_gives_text() -> None:
    assert plan_responses({}, 1, 4) == Plan(("mock",))
    assert plan_responses({"input": []}, 1, 4) == Plan(("mock",))


CONVERSATIONS: list[dict[str, Any]] = [
    {"model": "m", "input": "hello"},
    {"model": "m", "input": "weather in Paris?", "tools": [responses_tool("get_weather")]},
    {
        "model": "m",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "weather?"}]}],
        "tools": [responses_tool("get_weather")],
    },
    {
        "model": "m",
        "input": [
            {"role": "user", "content": "weather?"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": "{}",
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 21C"},
        ],
        "tools": [responses_tool("get_weather")],
    },
]


@pytest.mark.parametrize("body", CONVERSATIONS)
def test_native_responses_and_translated_chat_plan_the_same(body: dict[str, Any]) -> None:
    """What the module promises: a client sees the same answer from /v1/responses and
    through a gateway translating it to /v1/chat/completions."""
    chat = responses_to_chat(body, TranslateOptions(PROFILES["generic"])).body
    assert plan_chat(chat, 3, 5) == plan_responses(body, 3, 5)


def test_a_chat_tool_result_that_answers_no_tool_call_is_refused() -> None:
    """A real provider refuses a conversation that lost its history: so does the mock."""
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    whole = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
    ]
    assert plan_chat({"messages": whole}, 1, 5).text == "tool said: ok"
    with pytest.raises(ValueError, match=r"messages\[1\].*'call_1'"):
        plan_chat({"messages": [whole[0], whole[2]]}, 1, 5)
    with pytest.raises(ValueError, match="role 'tool'"):  # a call of another id is no answer
        plan_chat({"messages": [whole[0], whole[1], dict(whole[2], tool_call_id="x")]}, 1, 5)


def test_an_enum_argument_takes_a_value_the_schema_allows() -> None:
    schema = {"type": "object", "properties": {"mode": {"type": "string", "enum": ["a", "b"]}}}
    body = {"messages": [{"role": "user", "content": "x"}], "tools": [chat_tool("f", schema)]}
    call = plan_chat(body, 1, 4).call
    assert call is not None
    assert json.loads(call.arguments) == {"mode": "a"}
