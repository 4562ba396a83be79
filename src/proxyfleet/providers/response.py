"""Chat Completions answers → Responses API answers. Pure: ids and time are given, not taken.

:func:`chat_to_response` turns a whole ``chat.completion`` into a ``response`` object;
:class:`StreamTranslator` turns ``chat.completion.chunk`` objects, one by one, into the typed
Responses event sequence (every ``…added`` has its ``…done``, ``sequence_number`` increases,
exactly one terminal event).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ResponseShape", "StreamTranslator", "chat_to_response", "usage_of"]

_ECHOED = (
    "instructions",
    "temperature",
    "top_p",
    "max_output_tokens",
    "parallel_tool_calls",
    "tool_choice",
    "tools",
    "metadata",
    "text",
    "reasoning",
    "store",
    "user",
)


@dataclass(frozen=True, slots=True)
class ResponseShape:
    """What the final ``response`` object repeats from the request, and its identity."""

    response_id: str
    created_at: int
    model: str  # the model the client asked for
    echo: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, request: Mapping[str, Any], response_id: str, created_at: int) -> ResponseShape:
        echo = {k: request[k] for k in _ECHOED if k in request}
        return cls(response_id, created_at, str(request.get("model", "")), echo)

    def response(self, status: str, output: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        echo = dict(self.echo)
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "model": self.model,
            "output": output,
            "error": None,
            "incomplete_details": None,
            "instructions": echo.pop("instructions", None),
            "parallel_tool_calls": echo.pop("parallel_tool_calls", True),
            "tool_choice": echo.pop("tool_choice", "auto"),
            "tools": echo.pop("tools", []),
            "usage": None,
            **echo,
            **extra,
        }


def usage_of(chat_usage: Any) -> dict[str, Any] | None:
    if not isinstance(chat_usage, dict):
        return None
    prompt = int(chat_usage.get("prompt_tokens") or 0)
    completion = int(chat_usage.get("completion_tokens") or 0)
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (chat_usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": int(cached), "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": int(reasoning)},
        "total_tokens": int(chat_usage.get("total_tokens") or prompt + completion),
    }


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def _call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def _incomplete(finish: str | None) -> dict[str, Any]:
    if finish == "length":
        return {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
    if finish == "content_filter":
        return {"status": "incomplete", "incomplete_details": {"reason": "content_filter"}}
    return {}


def chat_to_response(chat: Mapping[str, Any], shape: ResponseShape) -> dict[str, Any]:
    """A whole ``chat.completion`` as a ``response`` object."""
    choices = chat.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    suffix = shape.response_id.removeprefix("resp_")
    text = message.get("content")
    if isinstance(text, str) and text:
        output.append(_message_item(f"msg_{suffix}", text))
    for n, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        output.append(
            _call_item(
                f"fc_{suffix}_{n}",
                str(call.get("id") or f"call_{suffix}_{n}"),
                str(function.get("name", "")),
                str(function.get("arguments") or ""),
                "completed",
            )
        )
    extra = _incomplete(choice.get("finish_reason"))
    status = extra.pop("status", "completed")
    return shape.response(status, output, usage=usage_of(chat.get("usage")), **extra)


@dataclass(slots=True)
class _Call:
    output_index: int
    item: dict[str, Any]
    arguments: list[str] = field(default_factory=list)


class StreamTranslator:
    """Feed chat chunks, get Responses events. ``start()`` first; then ``feed`` for each chunk;
    then ``finish()`` (or ``fail()`` when the upstream broke off)."""

    def __init__(self, shape: ResponseShape) -> None:
        self._shape = shape
        self._suffix = shape.response_id.removeprefix("resp_")
        self._seq = 0
        self._events: list[dict[str, Any]] = []
        self._output: list[dict[str, Any]] = []
        self._text: list[str] | None = None
        self._text_index = -1
        self._calls: dict[int, _Call] = {}
        self._open_call: int | None = None
        self._usage: dict[str, Any] | None = None
        self._finish: str | None = None
        self.ended = False

    # -- public ------------------------------------------------------------------------------
    @property
    def output(self) -> list[dict[str, Any]]:
        """The output items closed so far (all of them after ``finish``)."""
        return list(self._output)

    def start(self) -> list[dict[str, Any]]:
        created = self._shape.response("in_progress", [])
        self._emit("response.created", response=created)
        self._emit("response.in_progress", response=created)
        return self._flush()

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        if self.ended:
            return []
        usage = usage_of(chunk.get("usage"))
        if usage is not None:
            self._usage = usage
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str) and content:
                self._text_delta(content)
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict):
                    self._call_delta(call)
            if choice.get("finish_reason"):
                self._finish = str(choice["finish_reason"])
        return self._flush()

    def finish(self) -> list[dict[str, Any]]:
        if self.ended:
            return []
        self._close_all("completed")
        extra = _incomplete(self._finish)
        status = extra.pop("status", "completed")
        final = self._shape.response(status, list(self._output), usage=self._usage, **extra)
        self._emit(
            "response.incomplete" if status == "incomplete" else "response.completed",
            response=final,
        )
        self.ended = True
        return self._flush()

    def fail(self, code: str, message: str) -> list[dict[str, Any]]:
        """The upstream broke off: close what is open, then one ``response.failed``."""
        if self.ended:
            return []
        self._close_all("incomplete")
        final = self._shape.response(
            "failed",
            list(self._output),
            usage=self._usage,
            error={"code": code, "message": message},
        )
        self._emit("response.failed", response=final)
        self.ended = True
        return self._flush()

    # -- items ---------------------------------------------------------------------------------
    def _text_delta(self, content: str) -> None:
        if self._text is None:
            self._close_call("completed")
            self._text = []
            self._text_index = len(self._output)
            item = _message_item(self._msg_id, "", "in_progress")
            item["content"] = []
            self._emit("response.output_item.added", output_index=self._text_index, item=item)
            self._emit(
                "response.content_part.added",
                **self._where,
                part={"type": "output_text", "text": "", "annotations": []},
            )
        self._text.append(content)
        self._emit("response.output_text.delta", **self._where, delta=content, logprobs=[])

    def _call_delta(self, call: dict[str, Any]) -> None:
        index = int(call.get("index", 0))
        function = call.get("function") or {}
        state = self._calls.get(index)
        if state is None:
            self._close_text("completed")
            self._close_call("completed")
            n = len(self._calls)
            item = _call_item(
                f"fc_{self._suffix}_{n}",
                str(call.get("id") or f"call_{self._suffix}_{n}"),
                str(function.get("name") or ""),
                "",
                "in_progress",
            )
            state = self._calls[index] = _Call(len(self._output), item)
            self._open_call = index
            self._emit("response.output_item.added", output_index=state.output_index, item=item)
        elif self._open_call != index:
            return  # a call that was already closed does not reopen
        if function.get("name") and not state.item["name"]:
            state.item["name"] = str(function["name"])
        piece = function.get("arguments")
        if isinstance(piece, str) and piece:
            state.arguments.append(piece)
            self._emit(
                "response.function_call_arguments.delta",
                item_id=state.item["id"],
                output_index=state.output_index,
                delta=piece,
            )

    def _close_text(self, status: str) -> None:
        if self._text is None:
            return
        text = "".join(self._text)
        part = {"type": "output_text", "text": text, "annotations": []}
        self._emit("response.output_text.done", **self._where, text=text, logprobs=[])
        self._emit("response.content_part.done", **self._where, part=part)
        item = _message_item(self._msg_id, text, status)
        self._emit("response.output_item.done", output_index=self._text_index, item=item)
        self._output.append(item)
        self._text = None

    def _close_call(self, status: str) -> None:
        if self._open_call is None:
            return
        state = self._calls[self._open_call]
        arguments = "".join(state.arguments)
        item = dict(state.item, arguments=arguments, status=status)
        self._emit(
            "response.function_call_arguments.done",
            item_id=item["id"],
            output_index=state.output_index,
            arguments=arguments,
            name=item["name"],
        )
        self._emit("response.output_item.done", output_index=state.output_index, item=item)
        self._output.append(item)
        self._open_call = None

    def _close_all(self, status: str) -> None:
        self._close_text(status)
        self._close_call(status)

    @property
    def _msg_id(self) -> str:
        return f"msg_{self._suffix}_{self._text_index}"

    @property
    def _where(self) -> dict[str, Any]:
        return {"item_id": self._msg_id, "output_index": self._text_index, "content_index": 0}

    def _emit(self, kind: str, **fields: Any) -> None:
        self._events.append({"type": kind, "sequence_number": self._seq, **fields})
        self._seq += 1

    def _flush(self) -> list[dict[str, Any]]:
        events, self._events = self._events, []
        return events
