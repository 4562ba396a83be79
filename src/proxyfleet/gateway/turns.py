"""What one WebSocket connection remembers of its own turns, for ``previous_response_id``.

A chat provider stores nothing, but a Responses client on a WebSocket (the Codex CLI) sends each
turn after the first as ``previous_response_id`` plus only the new items (a tool's output, the
next user message). The connection keeps, per response it answered, the whole conversation that
response ended (its input, resolved, then its output items), so the next turn is resolved here
into the full input the provider needs. Bounded in count and bytes (oldest forgotten first),
gone when the connection closes; an id it does not know is ``previous_response_not_found``,
which a client answers by sending the whole conversation again. Pure: no I/O.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxyfleet.config.model import ProviderConfig
from proxyfleet.errors import BadRequest

__all__ = ["MemoryLimits", "PreviousResponseNotFound", "Turn", "TurnMemory"]


@dataclass(frozen=True, slots=True)
class MemoryLimits:
    """How much a connection remembers (``pool.provider.ws_responses`` / ``ws_memory_bytes``)."""

    responses: int = 8
    bytes: int = 16 * 1024 * 1024

    @classmethod
    def of(cls, provider: ProviderConfig) -> MemoryLimits:
        return cls(provider.ws_responses, provider.ws_memory_bytes)


class PreviousResponseNotFound(BadRequest):
    code = "previous_response_not_found"


@dataclass(frozen=True, slots=True)
class Turn:
    """A ``response.create`` resolved: the parameters to translate (full input, no
    ``previous_response_id``) and that input, to remember with the answer's output."""

    params: dict[str, Any]
    items: list[Any]
    size: int  # bytes of ``items`` as JSON


def _items(value: Any) -> list[Any] | None:
    """The input as a list of items (a string is one user message); None when it is neither:
    the translator refuses it with the reason."""
    if isinstance(value, str):
        return [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}
        ]
    if isinstance(value, list):
        return list(value)
    return None


def _size(items: list[Any]) -> int:
    return len(json.dumps(items, separators=(",", ":"), default=str))


class TurnMemory:
    """The conversations a connection's responses ended, newest last."""

    def __init__(self, limits: MemoryLimits) -> None:
        self._max_responses = limits.responses
        self._max_bytes = limits.bytes
        self._kept: OrderedDict[str, tuple[list[Any], int]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def bytes(self) -> int:
        return self._bytes

    def resolve(self, params: Mapping[str, Any]) -> Turn:
        """The turn with its history in front of its new input; raises
        :class:`PreviousResponseNotFound` for a ``previous_response_id`` this connection does
        not hold (never answered here, forgotten, or its turn failed)."""
        resolved = dict(params)
        previous = resolved.pop("previous_response_id", None)
        items = _items(resolved.get("input"))
        if not previous:
            if items is None:
                return Turn(resolved, [], 0)
            return Turn(resolved, items, _size(items))
        kept = self._kept.get(str(previous))
        if kept is None:
            raise PreviousResponseNotFound(
                f"previous_response_id {str(previous)[:100]!r} is not a response of this "
                "connection (a chat provider stores none; this connection remembers its last "
                f"{self._max_responses}); send the whole conversation as input"
            )
        history, size = kept
        new = items if items is not None else []
        resolved["input"] = [*history, *new]
        return Turn(resolved, resolved["input"], size + _size(new))

    def remember(self, response_id: str, turn: Turn, output: list[dict[str, Any]]) -> None:
        """Keep what ``response_id`` ended: ``turn``'s input and the answer's ``output`` items.
        A conversation larger than the whole budget is not kept (its next turn is
        ``previous_response_not_found``, and the client resends it)."""
        if self._max_responses <= 0:
            return
        items = [*turn.items, *output]
        size = turn.size + _size(output)
        if size > self._max_bytes:
            return
        self._kept[response_id] = (items, size)
        self._bytes += size
        while len(self._kept) > self._max_responses or self._bytes > self._max_bytes:
            _, (_, dropped) = self._kept.popitem(last=False)
            self._bytes -= dropped
