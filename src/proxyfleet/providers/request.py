"""Responses API request → Chat Completions request. Pure: no I/O, no clock.

Every malformed item is a :class:`~proxyfleet.errors.BadRequest` naming where it is; anything the
provider cannot take is dropped and listed in :attr:`ChatRequest.dropped` (for the debug log),
never a crash.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from proxyfleet.config.model import ProviderConfig
from proxyfleet.errors import BadRequest
from proxyfleet.providers.profiles import PROFILES, ProviderProfile

__all__ = ["ChatRequest", "TranslateOptions", "responses_to_chat"]

_COPIED = (
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "seed",
    "stop",
    "top_logprobs",
    "service_tier",
)
#: Responses fields with no Chat Completions counterpart: dropped, and said so.
_IGNORED = (
    "store",
    "metadata",
    "include",
    "truncation",
    "prompt_cache_key",
    "safety_identifier",
    "background",
    "user",
    "prompt",
    "context_management",
    "conversation",
    "stream_options",
    "max_tool_calls",
    "service_tier_preference",
)
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})


@dataclass(frozen=True, slots=True)
class TranslateOptions:
    profile: ProviderProfile
    model_map: Mapping[str, str] = field(default_factory=dict)
    default_model: str | None = None
    reasoning: Literal["drop", "keep"] = "drop"

    def model(self, requested: str) -> str:
        if requested in self.model_map:
            return self.model_map[requested]
        return self.default_model or requested

    @classmethod
    def of(cls, provider: ProviderConfig) -> TranslateOptions | None:
        """The options of ``provider: chat`` (None for passthrough)."""
        if provider.mode != "chat":
            return None
        return cls(
            PROFILES[provider.profile].with_drops(provider.drop_fields),
            provider.model_map,
            provider.default_model,
            provider.reasoning,
        )


@dataclass(slots=True)
class ChatRequest:
    body: dict[str, Any]
    stream: bool
    requested_model: str
    dropped: list[str] = field(default_factory=list)


def _bad(where: str, reason: str) -> BadRequest:
    return BadRequest(f"{where}: {reason}", code="invalid_request")


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(where, "content must be a string or a list of parts")
    texts = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS | {"refusal"}:
            raise _bad(f"{where}[{i}]", "expected a text part")
        texts.append(str(part.get("text", part.get("refusal", ""))))
    return "".join(texts)


def _content(content: Any, where: str) -> str | list[dict[str, Any]]:
    """Message content: a plain string when it is all text, else Chat Completions parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(where, "content must be a string or a list of parts")
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS:
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal", ""))})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                reason = "input_image needs an image_url (a chat provider cannot use file_id)"
                raise _bad(f"{where}[{i}]", reason)
            image: dict[str, Any] = {"url": url}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise _bad(f"{where}[{i}]", f"content part type {kind!r} is not supported")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


class _Messages:
    """Builds the chat message list, merging consecutive assistant output and tool calls."""

    def __init__(self, options: TranslateOptions) -> None:
        self.options = options
        self.messages: list[dict[str, Any]] = []
        self.pending_reasoning: list[str] = []

    def _assistant(self) -> dict[str, Any]:
        last = self.messages[-1] if self.messages else None
        if last is None or last["role"] != "assistant":
            last = {"role": "assistant", "content": None}
            self.messages.append(last)
        if self.pending_reasoning:
            last["reasoning_content"] = "".join(self.pending_reasoning)
            self.pending_reasoning = []
        return last

    def message(self, item: dict[str, Any], where: str) -> None:
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise _bad(where, f"role must be user, assistant, system or developer, not {role!r}")
        if "content" not in item:
            raise _bad(where, "message without content")
        if role == "assistant":
            text = _text_of(item["content"], f"{where}.content")
            target = self._assistant()
            if target.get("tool_calls"):  # text after tool calls starts a new message
                target = {"role": "assistant", "content": None}
                self.messages.append(target)
            target["content"] = (target["content"] or "") + text
            return
        chat_role = "system" if role == "developer" else role
        self.messages.append(
            {"role": chat_role, "content": _content(item["content"], f"{where}.content")}
        )

    def function_call(self, item: dict[str, Any], where: str) -> None:
        for key in ("call_id", "name", "arguments"):
            if not isinstance(item.get(key), str):
                raise _bad(where, f"function_call needs a string {key!r}")
        target = self._assistant()
        target.setdefault("tool_calls", []).append(
            {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
        )

    def function_output(self, item: dict[str, Any], where: str) -> None:
        if not isinstance(item.get("call_id"), str):
            raise _bad(where, "function_call_output needs a string 'call_id'")
        output = item.get("output")
        if output is None:
            raise _bad(where, "function_call_output needs an 'output'")
        text = output if isinstance(output, str) else _text_of(output, f"{where}.output")
        self.messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})

    def reasoning(self, item: dict[str, Any], where: str, dropped: list[str]) -> None:
        if self.options.reasoning == "drop":
            dropped.append(f"{where} (reasoning item)")
            return
        summary = item.get("summary") or []
        content = item.get("content") or []
        parts = [p for p in [*summary, *content] if isinstance(p, dict)]
        self.pending_reasoning.append("".join(str(p.get("text", "")) for p in parts))


def _reference(built: _Messages, item: dict[str, Any], where: str) -> None:
    raise _bad(
        where,
        "item_reference needs stored responses, which a chat provider does not "
        "have; send the full input",
    )


_ITEMS = {
    "message": _Messages.message,
    "function_call": _Messages.function_call,
    "function_call_output": _Messages.function_output,
    "item_reference": _reference,
}


def _input(body: dict[str, Any], options: TranslateOptions, dropped: list[str]) -> _Messages:
    built = _Messages(options)
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _bad("instructions", "must be a string")
        built.messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        built.messages.append({"role": "user", "content": items})
        return built
    if not isinstance(items, list):
        raise _bad("input", "is required: a string or a list of items")
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(where, "must be an object")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "reasoning":
            built.reasoning(item, where, dropped)
            continue
        handler = _ITEMS.get(str(kind))
        if handler is None:
            raise _bad(where, f"item type {kind!r} is not supported by a chat provider")
        handler(built, item, where)
    return built


def _tools(body: dict[str, Any], dropped: list[str]) -> list[dict[str, Any]]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _bad("tools", "must be a list")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _bad(f"tools[{i}]", "must be an object")
        if tool.get("type") != "function":
            dropped.append(f"tools[{i}] (type {tool.get('type')!r})")
            continue
        if not isinstance(tool.get("name"), str):
            raise _bad(f"tools[{i}]", "a function tool needs a string 'name'")
        function = {
            k: tool[k]
            for k in ("name", "description", "parameters", "strict")
            if tool.get(k) is not None
        }
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, profile: ProviderProfile, dropped: list[str]) -> Any:
    if isinstance(choice, str):
        if choice in profile.tool_choices:
            return choice
        dropped.append(f"tool_choice {choice!r} ({profile.name})")
        return None
    if isinstance(choice, dict) and choice.get("type") == "function" and "name" in choice:
        if profile.named_tool_choice:
            return {"type": "function", "function": {"name": choice["name"]}}
        dropped.append(f"tool_choice function ({profile.name})")
        return None
    dropped.append("tool_choice (unsupported kind)")
    return None


def _response_format(text: Any, dropped: list[str]) -> dict[str, Any] | None:
    if not isinstance(text, dict) or not isinstance(text.get("format"), dict):
        return None
    fmt = text["format"]
    if fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") != "text":
        dropped.append(f"text.format {fmt.get('type')!r}")
    return None


def _options(
    data: dict[str, Any], chat: dict[str, Any], profile: ProviderProfile, dropped: list[str]
) -> None:
    """Sampling, limits, output format and reasoning effort."""
    for key in _COPIED:
        if data.get(key) is not None:
            chat[key] = data[key]
    if data.get("max_output_tokens") is not None:
        chat[profile.max_tokens_field] = data["max_output_tokens"]
    response_format = _response_format(data.get("text"), dropped)
    if response_format is not None:
        chat["response_format"] = response_format
    reasoning = data.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort"):
        chat["reasoning_effort"] = reasoning["effort"]


def responses_to_chat(body: Mapping[str, Any], options: TranslateOptions) -> ChatRequest:
    """Translate a ``POST /v1/responses`` body into a ``POST /v1/chat/completions`` body."""
    data = dict(body)
    if data.get("previous_response_id"):
        raise _bad(
            "previous_response_id",
            "a chat provider keeps no stored responses; send the full conversation as input",
        )
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "is required")
    dropped: list[str] = []
    profile = options.profile
    chat: dict[str, Any] = {
        "model": options.model(model),
        "messages": _input(data, options, dropped).messages,
    }
    tools = _tools(data, dropped)
    if tools:
        chat["tools"] = tools
        choice = _tool_choice(data.get("tool_choice", "auto"), profile, dropped)
        if choice is not None and "tool_choice" in data:
            chat["tool_choice"] = choice
    _options(data, chat, profile, dropped)
    stream = data.get("stream") is True
    if stream:
        chat["stream"] = True
        if profile.stream_usage:
            chat["stream_options"] = {"include_usage": True}
    dropped += [key for key in _IGNORED if key in data]
    for key in sorted(profile.drop_fields):
        if key in chat:
            del chat[key]
            dropped.append(f"{key} ({profile.name})")
    return ChatRequest(chat, stream, model, dropped)


def dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
