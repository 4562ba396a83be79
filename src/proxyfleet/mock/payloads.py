"""What the mock says: OpenAI-shaped bodies and stream events, built without I/O."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

__all__ = [
    "chat_chunk",
    "chat_completion",
    "reply_text",
    "response_events",
    "response_object",
    "sse",
]


def sse(data: dict[str, Any] | str, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def reply_text(chunks: int, chunk_size: int) -> list[str]:
    """Deterministic reply pieces: ``chunks`` pieces of ``chunk_size`` characters that read, put
    together, as ``mock mock mock …``."""
    total = chunks * chunk_size
    text = ("mock " * (total // 5 + 1))[:total]
    return [text[i : i + chunk_size] for i in range(0, total, chunk_size)]


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def chat_completion(model: str, text: str, credential: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": credential,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(8, max(1, len(text) // 4)),
    }


def chat_chunk(
    chunk_id: str, model: str, delta: dict[str, Any], finish: str | None = None
) -> dict[str, Any]:
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def response_object(model: str, text: str, status: str = "completed") -> dict[str, Any]:
    rid = f"resp_{uuid.uuid4().hex[:24]}"
    output = (
        [
            {
                "type": "message",
                "id": f"msg_{rid[5:]}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
        if status == "completed"
        else []
    )
    return {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 8,
            "output_tokens": max(1, len(text) // 4),
            "total_tokens": 8 + max(1, len(text) // 4),
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        if status == "completed"
        else None,
    }


def response_events(model: str, pieces: list[str]) -> Iterator[dict[str, Any]]:
    """The Responses API stream for one text message, with increasing ``sequence_number``."""
    text = "".join(pieces)
    final = response_object(model, text)
    started = dict(final, status="in_progress", output=[], usage=None)
    item = final["output"][0]
    item_id = item["id"]
    empty_item = dict(item, status="in_progress", content=[])
    part = {"type": "output_text", "text": "", "annotations": []}
    seq = 0

    def event(kind: str, **fields: Any) -> dict[str, Any]:
        nonlocal seq
        seq += 1
        return {"type": kind, "sequence_number": seq - 1, **fields}

    yield event("response.created", response=started)
    yield event("response.in_progress", response=started)
    yield event("response.output_item.added", output_index=0, item=empty_item)
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    yield event("response.content_part.added", **where, part=part)
    for piece in pieces:
        yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
    yield event("response.output_text.done", **where, text=text, logprobs=[])
    yield event("response.content_part.done", **where, part=dict(part, text=text))
    yield event("response.output_item.done", output_index=0, item=item)
    yield event("response.completed", response=final)
