"""Chat Completions → Responses answers: whole objects and streams, event by event."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from proxyfleet.providers.response import ResponseShape, StreamTranslator, chat_to_response
from proxyfleet.providers.sse import SSEParser, encode_event

SHAPE = ResponseShape.of({"model": "gpt-5-codex", "instructions": "i", "tools": []}, "resp_1", 7)
EVENT = TypeAdapter(ResponseStreamEvent)
USAGE = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_whole_completion_with_text_and_tool_calls() -> None:
    chat = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "w", "arguments": '{"c":"P"}'},
                        }
                    ],
                },
            }
        ],
        "usage": USAGE,
    }
    response = chat_to_response(chat, SHAPE)
    parsed = Response.model_validate(response)
    assert parsed.output_text == "Checking."
    assert [(o.type, getattr(o, "call_id", None)) for o in parsed.output] == [
        ("message", None),
        ("function_call", "c1"),
    ]
    assert response["usage"]["input_tokens"] == 3
    assert (parsed.model, parsed.instructions, parsed.status) == ("gpt-5-codex", "i", "completed")


def test_length_limit_is_incomplete() -> None:
    chat = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "length",
                "message": {"role": "assistant", "content": "cut"},
            }
        ]
    }
    response = chat_to_response(chat, SHAPE)
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_stream_text_then_tool_call_event_by_event() -> None:
    t = StreamTranslator(SHAPE)
    events = t.start()
    events += t.feed(_chunk({"role": "assistant", "content": ""}))
    events += t.feed(_chunk({"content": "Hi"}))
    events += t.feed(
        _chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "w", "arguments": ""},
                    }
                ]
            }
        )
    )
    events += t.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}))
    events += t.feed(_chunk({}, "tool_calls"))
    events += t.feed({"choices": [], "usage": USAGE})
    events += t.finish()
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    for e in events:
        EVENT.validate_python(e)
    final = events[-1]["response"]
    assert [o["type"] for o in final["output"]] == ["message", "function_call"]
    assert final["output"][1]["arguments"] == "{}"
    assert final["usage"]["total_tokens"] == 7
    assert t.finish() == []  # one terminal event, whatever is called after


def test_stream_failure_closes_open_items_then_fails() -> None:
    t = StreamTranslator(SHAPE)
    events = t.start() + t.feed(_chunk({"content": "par"})) + t.fail("server_error", "gone")
    assert [e["type"] for e in events][-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.failed",
    ]
    assert events[-1]["response"]["error"] == {"code": "server_error", "message": "gone"}
    for e in events:
        EVENT.validate_python(e)


def test_sse_parser_handles_split_and_multiline_events() -> None:
    parser = SSEParser()
    stream = b'data: {"a":1}\r\n\r\n: comment\n\ndata: x\ndata: y\n\nevent: e\ndata: [DONE]\n\n'
    out: list[str] = []
    for i in range(len(stream)):  # one byte at a time
        out += parser.feed(stream[i : i + 1])
    assert out == ['{"a":1}', "x\ny", "[DONE]"]
    assert parser.close() == []
    tail = SSEParser()
    assert tail.feed(b"data: last") == []
    assert tail.close() == ["last"]


# -- property: any valid chat stream becomes a well-formed Responses event sequence -----------
_TEXT = st.text(min_size=1, max_size=5)
_STEP = st.one_of(
    st.builds(lambda s: ("text", s), _TEXT),
    st.builds(lambda i, s: ("call", i, s), st.integers(0, 2), st.text(max_size=4)),
    st.just(("usage",)),
    st.just(("empty",)),
)


def _chunks(steps: list[tuple[Any, ...]], finish: str) -> list[dict[str, Any]]:
    chunks = [_chunk({"role": "assistant", "content": ""})]
    started: set[int] = set()
    for step in steps:
        if step[0] == "text":
            chunks.append(_chunk({"content": step[1]}))
        elif step[0] == "call":
            index, piece = step[1], step[2]
            call: dict[str, Any] = {"index": index, "function": {"arguments": piece}}
            if index not in started:
                started.add(index)
                call.update(id=f"call_{index}", type="function")
                call["function"]["name"] = f"fn{index}"
            chunks.append(_chunk({"tool_calls": [call]}))
        elif step[0] == "usage":
            chunks.append({"choices": [], "usage": USAGE})
        else:
            chunks.append({"choices": []})
    chunks.append(_chunk({}, finish))
    return chunks


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(_STEP, max_size=25),
    finish=st.sampled_from(["stop", "tool_calls", "length"]),
    broken=st.booleans(),
)
def test_any_chat_stream_gives_well_formed_events(
    steps: list[tuple[Any, ...]], finish: str, broken: bool
) -> None:
    t = StreamTranslator(SHAPE)
    events = t.start()
    parser = SSEParser()
    wire = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in _chunks(steps, finish))
    for data in parser.feed(wire):  # through the SSE parser, as the gateway does
        events += t.feed(json.loads(data))
    events += t.fail("server_error", "cut") if broken else t.finish()

    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    terminal = [
        e
        for e in events
        if e["type"] in ("response.completed", "response.failed", "response.incomplete")
    ]
    assert len(terminal) == 1
    assert events[-1] is terminal[0]
    added = [
        (e["output_index"], e["item"]["id"])
        for e in events
        if e["type"] == "response.output_item.added"
    ]
    done = [
        (e["output_index"], e["item"]["id"])
        for e in events
        if e["type"] == "response.output_item.done"
    ]
    assert added == done  # every item opened is closed, in order
    assert [i for i, _ in added] == list(range(len(added)))
    parts = [e["type"] for e in events if e["type"].startswith("response.content_part")]
    assert parts == ["response.content_part.added", "response.content_part.done"] * (
        len(parts) // 2
    )
    text = "".join(s[1] for s in steps if s[0] == "text")
    final = terminal[0]["response"]
    assert (
        "".join(c["text"] for o in final["output"] if o["type"] == "message" for c in o["content"])
        == text
    )
    for e in events:
        encode_event(e)
        EVENT.validate_python(e)
