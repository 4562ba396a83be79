"""A connection's memory of its own turns (pure): previous_response_id resolved into the whole
conversation, an unknown id refused with the code a client resends on, bounded in count and
bytes, oldest forgotten first."""

from __future__ import annotations

from typing import Any

import pytest

from proxyfleet.errors import BadRequest
from proxyfleet.gateway.turns import MemoryLimits, PreviousResponseNotFound, TurnMemory


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


CALL = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
RESULT = {"type": "function_call_output", "call_id": "c1", "output": "done"}


def test_a_first_turn_passes_through_with_its_input_as_items() -> None:
    memory = TurnMemory(MemoryLimits())
    turn = memory.resolve({"model": "m", "input": "hi"})
    assert turn.params == {"model": "m", "input": "hi"}  # the translator reads it as it is
    assert turn.items == [user("hi")]


def test_previous_response_id_puts_that_conversation_before_the_new_items() -> None:
    memory = TurnMemory(MemoryLimits())
    first = memory.resolve({"model": "m", "input": [user("go")]})
    memory.remember("resp_1", first, [CALL])
    second = memory.resolve({"model": "m", "previous_response_id": "resp_1", "input": [RESULT]})
    assert "previous_response_id" not in second.params
    assert second.params["input"] == [user("go"), CALL, RESULT]
    memory.remember("resp_2", second, [{"type": "message", "role": "assistant", "content": "ok"}])
    third = memory.resolve({"model": "m", "previous_response_id": "resp_2", "input": "next"})
    assert [item.get("type") for item in third.params["input"]] == [
        "message",
        "function_call",
        "function_call_output",
        "message",
        "message",
    ]
    assert third.params["input"][-1] == user("next")
    # an earlier response still resolves to what it ended, not to what came after
    again = memory.resolve({"model": "m", "previous_response_id": "resp_1", "input": [RESULT]})
    assert again.params["input"] == [user("go"), CALL, RESULT]


def test_a_warm_up_kept_with_no_output_carries_its_prompt_into_the_next_turn() -> None:
    memory = TurnMemory(MemoryLimits())
    system = {"type": "message", "role": "developer", "content": "be brief"}
    warm = memory.resolve({"model": "m", "input": [system], "generate": False})
    memory.remember("resp_w", warm, [])
    turn = memory.resolve({"model": "m", "previous_response_id": "resp_w", "input": [user("x")]})
    assert turn.params["input"] == [system, user("x")]


def test_an_unknown_previous_response_is_refused_with_the_code_clients_resend_on() -> None:
    memory = TurnMemory(MemoryLimits())
    with pytest.raises(PreviousResponseNotFound) as info:
        memory.resolve({"model": "m", "previous_response_id": "resp_elsewhere", "input": "x"})
    assert isinstance(info.value, BadRequest)
    assert (info.value.status, info.value.code) == (400, "previous_response_not_found")
    assert "resp_elsewhere" in info.value.message


def test_the_oldest_responses_are_forgotten_beyond_the_count() -> None:
    memory = TurnMemory(MemoryLimits(responses=2))
    for n in range(3):
        memory.remember(f"resp_{n}", memory.resolve({"input": f"t{n}"}), [])
    assert len(memory) == 2
    with pytest.raises(PreviousResponseNotFound):
        memory.resolve({"previous_response_id": "resp_0", "input": "x"})
    memory.resolve({"previous_response_id": "resp_2", "input": "x"})


def test_the_oldest_responses_are_forgotten_beyond_the_bytes() -> None:
    memory = TurnMemory(MemoryLimits(responses=100, bytes=3000))
    big = "x" * 1000
    for n in range(5):
        memory.remember(f"resp_{n}", memory.resolve({"input": big}), [])
        assert memory.bytes <= 3000
    assert len(memory) == 2
    memory.resolve({"previous_response_id": "resp_4", "input": "x"})
    with pytest.raises(PreviousResponseNotFound):
        memory.resolve({"previous_response_id": "resp_2", "input": "x"})


def test_a_conversation_larger_than_the_budget_is_not_kept() -> None:
    memory = TurnMemory(MemoryLimits(responses=4, bytes=2048))
    memory.remember("resp_small", memory.resolve({"input": "hi"}), [])
    memory.remember("resp_big", memory.resolve({"input": "x" * 5000}), [])
    with pytest.raises(PreviousResponseNotFound):
        memory.resolve({"previous_response_id": "resp_big", "input": "x"})
    memory.resolve({"previous_response_id": "resp_small", "input": "x"})  # not pushed out


def test_no_memory_at_all_with_zero_responses() -> None:
    memory = TurnMemory(MemoryLimits(responses=0))
    memory.remember("resp_1", memory.resolve({"input": "hi"}), [])
    assert len(memory) == 0


def test_input_that_is_neither_text_nor_items_is_left_to_the_translator() -> None:
    memory = TurnMemory(MemoryLimits())
    turn = memory.resolve({"input": {"not": "valid"}})
    assert turn.params["input"] == {"not": "valid"}
    assert turn.items == []
