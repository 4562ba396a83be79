"""What the mock says: a :class:`~proxyfleet.mock.plan.Plan` rendered as OpenAI-shaped bodies
and stream events, built without I/O.

Ids are random and timestamps the clock's, unless a ``seed`` is given (the mock's
``--deterministic``): then ids are digests of it and every timestamp is 0, so the same request
gets the same bytes (what a parity test compares)."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from proxyfleet.mock.plan import Plan

__all__ = ["chat_completion", "chat_frames", "response_events", "response_object", "sse"]


def _id(seed: str | None) -> str:
    if seed is None:
        return uuid.uuid4().hex[:24]
    return hashlib.sha256(seed.encode()).hexdigest()[:24]


def _now(seed: str | None) -> int:
    return 0 if seed is not None else int(time.time())


def sse(data: dict[str, Any] | str, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def _usage(plan: Plan) -> dict[str, int]:
    completion = max(1, len(plan.text) // 4) if plan.call is None else 8
    return {"prompt_tokens": 8, "completion_tokens": completion, "total_tokens": 8 + completion}


def chat_completion(
    model: str, plan: Plan, credential: str, seed: str | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": plan.text if plan.pieces else None}
    if plan.call is not None:
        message["tool_calls"] = [
            {
                "id": plan.call.call_id,
                "type": "function",
                "function": {"name": plan.call.name, "arguments": plan.call.arguments},
            }
        ]
    return {
        "id": f"chatcmpl-{_id(seed)}",
        "object": "chat.completion",
        "created": _now(seed),
        "model": model,
        "system_fingerprint": credential,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "stop" if plan.call is None else "tool_calls",
            }
        ],
        "usage": _usage(plan),
    }


def _frame(
    cid: str,
    model: str,
    delta: dict[str, Any],
    finish: str | None = None,
    usage: dict[str, int] | None = None,
    created: int = 0,
) -> bytes:
    data: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        data["choices"] = []
        data["usage"] = usage
    return sse(data)


def chat_frames(
    model: str, plan: Plan, include_usage: bool, seed: str | None = None
) -> list[bytes]:
    cid = f"chatcmpl-{_id(seed)}"
    created = _now(seed)

    def _chunk(
        cid: str,
        model: str,
        delta: dict[str, Any],
        finish: str | None = None,
        usage: dict[str, int] | None = None,
    ) -> bytes:
        return _frame(cid, model, delta, finish, usage, created)

    frames = [_chunk(cid, model, {"role": "assistant", "content": ""})]
    frames += [_chunk(cid, model, {"content": p}) for p in plan.pieces]
    if plan.call is not None:
        call = plan.call
        half = len(call.arguments) // 2
        frames.append(
            _chunk(
                cid,
                model,
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call.call_id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": ""},
                        }
                    ]
                },
            )
        )
        for piece in (call.arguments[:half], call.arguments[half:]):
            frames.append(
                _chunk(cid, model, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            )
    frames.append(_chunk(cid, model, {}, "stop" if plan.call is None else "tool_calls"))
    if include_usage:
        frames.append(_chunk(cid, model, {}, usage=_usage(plan)))
    frames.append(sse("[DONE]"))
    return frames


def _items(rid: str, plan: Plan) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if plan.pieces:
        items.append(
            {
                "type": "message",
                "id": f"msg_{rid[5:]}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": plan.text, "annotations": []}],
            }
        )
    if plan.call is not None:
        items.append(
            {
                "type": "function_call",
                "id": f"fc_{rid[5:]}",
                "call_id": plan.call.call_id,
                "name": plan.call.name,
                "arguments": plan.call.arguments,
                "status": "completed",
            }
        )
    return items


def response_object(
    model: str, plan: Plan, rid: str | None = None, seed: str | None = None
) -> dict[str, Any]:
    rid = rid or f"resp_{_id(seed)}"
    usage = _usage(plan)
    return {
        "id": rid,
        "object": "response",
        "created_at": _now(seed),
        "status": "completed",
        "model": model,
        "output": _items(rid, plan),
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


def response_events(model: str, plan: Plan, seed: str | None = None) -> Iterator[dict[str, Any]]:
    """The Responses API stream for a plan, with increasing ``sequence_number``."""
    final = response_object(model, plan, seed=seed)
    started = dict(final, status="in_progress", output=[], usage=None)
    seq = 0

    def event(kind: str, **fields: Any) -> dict[str, Any]:
        nonlocal seq
        seq += 1
        return {"type": kind, "sequence_number": seq - 1, **fields}

    yield event("response.created", response=started)
    yield event("response.in_progress", response=started)
    for index, item in enumerate(final["output"]):
        if item["type"] == "message":
            yield event(
                "response.output_item.added",
                output_index=index,
                item=dict(item, status="in_progress", content=[]),
            )
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            part = {"type": "output_text", "text": "", "annotations": []}
            yield event("response.content_part.added", **where, part=part)
            for piece in plan.pieces:
                yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
            yield event("response.output_text.done", **where, text=plan.text, logprobs=[])
            yield event("response.content_part.done", **where, part=dict(part, text=plan.text))
        else:
            yield event(
                "response.output_item.added",
                output_index=index,
                item=dict(item, status="in_progress", arguments=""),
            )
            yield event(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=index,
                delta=item["arguments"],
            )
            yield event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                arguments=item["arguments"],
                name=item["name"],
            )
        yield event("response.output_item.done", output_index=index, item=item)
    yield event("response.completed", response=final)
