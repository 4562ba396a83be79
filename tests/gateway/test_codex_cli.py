"""The Codex CLI itself, over WebSocket, through ``provider: chat``, with a tool call.

Codex opens a WebSocket at ``/v1/responses``, warms it up (``"generate": false``), sends the
user's turn, runs the tool the model called (the chat-only mock calls the first tool offered:
``exec_command``), and sends the tool's output as the next turn on the same connection with
``previous_response_id``. The turn must complete, on that one connection, with the answer that
quotes the tool's output; the warm-up must never reach the provider.

Codex's own network calls beyond the gateway (update checks, telemetry) go to a proxy address on
loopback where nothing listens, so nothing leaves the machine. Needs ``codex`` on PATH
(``npm install -g @openai/codex``); .ci/run installs it, so under CI its absence is a failure.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.codex import codex_exec
from tests.conftest import Processes


async def test_codex_completes_a_tool_call_turn_over_websocket_through_provider_chat(
    procs: Processes, tmp_path: Path
) -> None:
    mock = procs.mock("--chat-only")
    config = tmp_path / "chat.yaml"
    config.write_text(json.dumps({"pool": {"provider": "chat"}}))
    gateway = procs.gateway("--config", str(config), "--upstream", mock.url)
    events = codex_exec(gateway.url, tmp_path / "codex-home", tmp_path / "work", "run a command")
    items = [e["item"] for e in events if e.get("type") == "item.completed"]
    commands = [i for i in items if i.get("type") == "command_execution"]
    assert commands, events  # the model's tool call ran
    (answer,) = [i for i in items if i.get("type") == "agent_message"]
    assert answer["text"].startswith("tool said: "), answer  # it quotes the tool's output
    assert any(e.get("type") == "turn.completed" for e in events), events
    # at the provider: the two generations of the turn and nothing else (the warm-up is not
    # billed), both from one WebSocket connection (one request id, numbered per turn)
    stats = mock.get_json("/mock/stats")
    chats = [r for r in stats["recent"] if r["path"] == "/v1/chat/completions"]
    assert len(chats) == stats["requests"] == 2, stats["recent"]
    ids = [re.fullmatch(r"(.+)-(\d+)", r["request_id"] or "") for r in chats]
    assert all(ids), chats
    assert len({m.group(1) for m in ids if m}) == 1, chats  # one connection
    assert [r["method"] for r in stats["recent"]] == ["POST", "POST"]  # no HTTP fallback here
    for chat in chats:  # the client's WebSocket handshake is not the provider's business
        assert not [h for h in chat["headers"] if h.startswith("sec-websocket-")], chat
