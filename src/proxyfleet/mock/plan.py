"""What the mock answers, decided from the conversation (pure).

- The last turn is a tool result → text that quotes it: ``tool said: <output>``. A chat tool
  result that answers no earlier tool call is refused (400), as real providers do.
- Tools are offered and the last turn is the user's → a call of the first tool, with
  arguments made from its JSON schema (strings ``"mock"``, numbers ``1``, booleans ``true``,
  an enum's first value).
- Otherwise → ``mock mock mock …`` in ``chunks`` pieces of ``chunk_size`` characters.

The same plan is rendered as a chat completion or as a Responses answer, so a client sees the
same result from the mock's native ``/v1/responses`` and through a translating gateway.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["Plan", "ToolCall", "check_chat_messages", "plan_chat", "plan_responses", "reply_text"]


def reply_text(chunks: int, chunk_size: int) -> list[str]:
    """Deterministic reply pieces: ``chunks`` pieces of ``chunk_size`` characters that read, put
    together, as ``mock mock mock …``."""
    total = chunks * chunk_size
    text = ("mock " * (total // 5 + 1))[:total]
    return [text[i : i + chunk_size] for i in range(0, total, chunk_size)]


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Plan:
    pieces: tuple[str, ...] = ()
    call: ToolCall | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def _value(spec: dict[str, Any], values: dict[str, object]) -> object:
    enum = spec.get("enum")
    if isinstance(enum, list) and enum:  # a value the schema allows
        return enum[0]
    return values.get(str(spec.get("type")))


def _arguments(parameters: Any) -> str:
    properties = parameters.get("properties", {}) if isinstance(parameters, dict) else {}
    values: dict[str, object] = {"string": "mock", "number": 1, "integer": 1, "boolean": True}
    args = {
        name: _value(spec, values) if isinstance(spec, dict) else None
        for name, spec in properties.items()
    }
    return json.dumps(args, separators=(",", ":"))


def _call(name: str, parameters: Any, seed: str) -> ToolCall:
    call_id = "call_" + hashlib.sha256(seed.encode()).hexdigest()[:16]
    return ToolCall(call_id, name, _arguments(parameters))


def _pieces(text: str, size: int) -> tuple[str, ...]:
    return tuple(text[i : i + size] for i in range(0, len(text), size)) or ("",)


def check_chat_messages(messages: list[dict[str, Any]]) -> None:
    """Refuse what a real provider refuses (ValueError): a tool result that answers no tool
    call of an earlier assistant message: a conversation that lost its history."""
    called: set[str] = set()
    for n, message in enumerate(messages):
        for call in message.get("tool_calls") or []:
            if isinstance(call, dict):
                called.add(str(call.get("id")))
        if message.get("role") == "tool" and str(message.get("tool_call_id")) not in called:
            raise ValueError(
                f"messages[{n}]: a message with role 'tool' must answer a tool call of an "
                f"earlier assistant message (no tool_call {message.get('tool_call_id')!r})"
            )


def plan_chat(body: dict[str, Any], chunks: int, chunk_size: int) -> Plan:
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    check_chat_messages(messages)
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        return Plan(_pieces(f"tool said: {last.get('content')}", chunk_size))
    tools = [t.get("function", {}) for t in body.get("tools") or [] if isinstance(t, dict)]
    if tools and last.get("role") == "user":
        return Plan(
            call=_call(
                str(tools[0].get("name")),
                tools[0].get("parameters"),
                json.dumps(last.get("content"), default=str),
            )
        )
    return Plan(tuple(reply_text(chunks, chunk_size)))


def plan_responses(body: dict[str, Any], chunks: int, chunk_size: int) -> Plan:
    items = body.get("input")
    items = [{"role": "user", "content": items}] if isinstance(items, str) else items or []
    last = items[-1] if items and isinstance(items[-1], dict) else {}
    if last.get("type") == "function_call_output":
        return Plan(_pieces(f"tool said: {last.get('output')}", chunk_size))
    tools = [
        t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"
    ]
    if tools and last.get("role") == "user":
        content = last.get("content")
        if isinstance(content, list):  # the SDK sends [{"type": "input_text", "text": …}]
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return Plan(
            call=_call(
                str(tools[0].get("name")),
                tools[0].get("parameters"),
                json.dumps(content, default=str),
            )
        )
    return Plan(tuple(reply_text(chunks, chunk_size)))
