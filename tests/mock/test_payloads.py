"""Plans rendered as OpenAI-shaped answers (pure): chat completions, chat SSE frames, Responses
objects and Responses stream events, each validated by the openai SDK's own types and
accumulated by the SDK's own stream helpers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai import omit
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from proxyfleet.mock.payloads import (
    chat_completion,
    chat_frames,
    response_events,
    response_object,
    sse,
)
from proxyfleet.mock.plan import Plan, ToolCall, reply_text
from proxyfleet.providers.sse import SSEParser

TEXT = Plan(tuple(reply_text(3, 4)))  # "mock", " moc", "k mo"
CALL = Plan(call=ToolCall("call_0123456789abcdef", "get_weather", '{"city":"mock","days":1}'))
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def frame_data(frames: list[bytes]) -> list[str]:
    """The ``data`` of every frame, parsed as a client would."""
    parser = SSEParser()
    out = [data for frame in frames for data in parser.feed(frame)]
    return out + parser.close()


def test_sse_frames() -> None:
    assert sse({"a": 1, "b": [1, 2]}) == b'data: {"a":1,"b":[1,2]}\n\n'
    assert sse("[DONE]") == b"data: [DONE]\n\n"
    assert sse({"type": "x"}, "x") == b'event: x\ndata: {"type":"x"}\n\n'


def test_chat_completion_of_text() -> None:
    body = chat_completion("mock-gpt", TEXT, "cred-abc")
    completion = ChatCompletion.model_validate(body)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "mock-gpt"
    assert completion.system_fingerprint == "cred-abc"  # which credential answered
    (choice,) = completion.choices
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == "mock mock mo"
    assert choice.message.tool_calls is None
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (8, 3)
    assert completion.usage.total_tokens == 11
    assert chat_completion("m", TEXT, "c")["id"] != body["id"]


def test_chat_completion_of_a_tool_call() -> None:
    completion = ChatCompletion.model_validate(chat_completion("m", CALL, "c"))
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.id == "call_0123456789abcdef"
    assert call.type == "function"
    assert (call.function.name, call.function.arguments) == (
        "get_weather",
        '{"city":"mock","days":1}',
    )
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 8


def test_usage_of_a_tiny_text_is_at_least_one_token() -> None:
    assert chat_completion("m", Plan(("ab",)), "c")["usage"]["completion_tokens"] == 1


def test_chat_frames_of_text() -> None:
    frames = chat_frames("mock-gpt", TEXT, include_usage=False)
    data = frame_data(frames)
    assert data[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(json.loads(d)) for d in data[:-1]]
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" and c.model == "mock-gpt" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chunks] == ["", "mock", " moc", "k mo", None]
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, None, None, "stop"]
    assert all(c.usage is None for c in chunks)


def test_chat_frames_with_usage_end_with_a_usage_chunk_without_choices() -> None:
    data = frame_data(chat_frames("m", TEXT, include_usage=True))
    usage = ChatCompletionChunk.model_validate(json.loads(data[-2]))
    assert usage.choices == []
    assert usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (8, 3)
    assert data[-1] == "[DONE]"


def test_chat_frames_of_a_tool_call_split_the_arguments() -> None:
    data = frame_data(chat_frames("m", CALL, include_usage=False))
    chunks = [ChatCompletionChunk.model_validate(json.loads(d)) for d in data[:-1]]
    calls = [c.choices[0].delta.tool_calls for c in chunks if c.choices[0].delta.tool_calls]
    assert len(calls) == 3  # the head (id, name), then the arguments in two halves
    head = calls[0][0]
    assert (head.index, head.id, head.type) == (0, "call_0123456789abcdef", "function")
    assert head.function is not None
    assert (head.function.name, head.function.arguments) == ("get_weather", "")
    halves = [c[0].function.arguments for c in calls[1:] if c[0].function is not None]
    assert all(halves)
    assert "".join(str(h) for h in halves) == '{"city":"mock","days":1}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("plan", [TEXT, CALL], ids=["text", "call"])
def test_the_sdk_accumulates_chat_frames_into_the_non_streamed_answer(plan: Plan) -> None:
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for data in frame_data(chat_frames("m", plan, include_usage=True))[:-1]:
        state.handle_chunk(ChatCompletionChunk.model_validate(json.loads(data)))
    streamed = state.get_final_completion()
    whole = ChatCompletion.model_validate(chat_completion("m", plan, "c"))
    assert streamed.choices[0].finish_reason == whole.choices[0].finish_reason
    assert (streamed.choices[0].message.content or "") == (whole.choices[0].message.content or "")
    assert [
        (t.id, t.function.name, t.function.arguments)
        for t in streamed.choices[0].message.tool_calls or []
    ] == [
        (t.id, t.function.name, t.function.arguments)  # type: ignore[union-attr]
        for t in whole.choices[0].message.tool_calls or []
    ]
    assert streamed.usage == whole.usage


def test_response_object_of_text() -> None:
    body = response_object("mock-gpt", TEXT, rid="resp_abc123")
    response = Response.model_validate(body)
    assert (response.id, response.object, response.status) == (
        "resp_abc123",
        "response",
        "completed",
    )
    assert response.model == "mock-gpt"
    assert response.output_text == "mock mock mo"
    (item,) = response.output
    assert item.type == "message"
    assert item.id == "msg_abc123"  # derived from the response id
    assert item.status == "completed"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (8, 3)
    assert response.usage.total_tokens == 11
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0


def test_response_object_of_a_tool_call() -> None:
    response = Response.model_validate(response_object("m", CALL))
    assert response.id.startswith("resp_")
    assert response.output_text == ""
    (item,) = response.output
    assert item.type == "function_call"
    assert item.id == "fc_" + response.id[5:]
    assert (item.call_id, item.name, item.arguments) == (
        "call_0123456789abcdef",
        "get_weather",
        '{"city":"mock","days":1}',
    )
    assert item.status == "completed"


def test_response_object_of_text_and_a_call_lists_both_in_order() -> None:
    both = Plan(("done",), CALL.call)
    response = Response.model_validate(response_object("m", both))
    assert [item.type for item in response.output] == ["message", "function_call"]


def events_of(plan: Plan) -> list[Any]:
    return [EVENTS.validate_python(e) for e in response_events("m", plan)]


def test_response_events_of_text() -> None:
    events = events_of(TEXT)
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    created, final = events[0].response, events[-1].response
    assert (created.status, created.output, created.usage) == ("in_progress", [], None)
    assert created.id == final.id
    assert final.status == "completed"
    assert final.output_text == "mock mock mo"
    item_id = final.output[0].id
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert [d.delta for d in deltas] == list(TEXT.pieces)
    assert all((d.item_id, d.output_index, d.content_index) == (item_id, 0, 0) for d in deltas)
    (done,) = [e for e in events if e.type == "response.output_text.done"]
    assert done.text == "".join(d.delta for d in deltas)
    added = events[2].item
    assert (added.id, added.status, added.content) == (item_id, "in_progress", [])
    assert events[8].part.text == "mock mock mo"
    assert events[9].item == final.output[0]


def test_response_events_of_a_tool_call() -> None:
    events = events_of(CALL)
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added, delta, done, item_done = events[2:6]
    assert (added.item.arguments, added.item.status) == ("", "in_progress")
    assert added.item.call_id == "call_0123456789abcdef"
    assert delta.delta == done.arguments == '{"city":"mock","days":1}'
    assert done.name == "get_weather"
    assert delta.item_id == done.item_id == item_done.item.id == events[-1].response.output[0].id


@pytest.mark.parametrize("plan", [TEXT, CALL], ids=["text", "call"])
def test_the_sdk_accumulates_response_events_into_the_final_response(plan: Plan) -> None:
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    handled = [out for event in events_of(plan) for out in state.handle_event(event)]
    completed = handled[-1]
    assert completed.type == "response.completed"
    whole = Response.model_validate(response_object("m", plan))
    assert completed.response.output_text == whole.output_text
    assert [item.type for item in completed.response.output] == [i.type for i in whole.output]


def test_response_events_as_sse_name_each_event_by_its_type() -> None:
    """As the mock server sends them: ``event:`` is the event's type."""
    frames = [sse(e, e["type"]) for e in response_events("m", TEXT)]
    for frame in frames:
        head, data = frame.decode().split("\n", 1)
        assert head == "event: " + json.loads(data.removeprefix("data: "))["type"]
    assert [json.loads(d)["type"] for d in frame_data(frames)][-1] == "response.completed"
