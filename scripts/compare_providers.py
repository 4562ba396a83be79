"""Send the same scripted conversation through a passthrough and a chat-translating proxyfleet.

    python scripts/compare_providers.py                       # everything local, on the mock
    python scripts/compare_providers.py --passthrough-url http://127.0.0.1:10000/v1 \\
        --chat-url http://127.0.0.1:10001/v1 --model gpt-5-codex

Without URLs it starts, side by side, a mock that speaks the Responses API, a Chat-Completions-
only mock, and one proxyfleet in front of each (passthrough on the first, ``provider: chat`` on
the second). The script (a text turn, a tool call, the tool's result; each non-streamed and
streamed) runs against both; any difference in final text or tool calls is printed, and the exit
code is 1. Exit 0 means the two modes gave the client the same conversation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai

TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    }
]


def _start(args: list[str], log: Path, prefix: str) -> tuple[subprocess.Popen[bytes], str]:
    handle = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxyfleet", *args],
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return proc, line.split()[-1] if prefix.startswith("mock") else line.split()[2]
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"{' '.join(args)} did not start:\n{log.read_text(errors='replace')}")


@contextlib.contextmanager
def local_pair() -> Iterator[tuple[str, str]]:
    """A passthrough and a chat proxyfleet side by side, each on its own mock."""
    work = Path(tempfile.mkdtemp(prefix="proxyfleet-compare-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        native, native_url = _start(["mock", "--port", "0"], work / "native.log", "mock listening")
        chat, chat_url = _start(
            ["mock", "--port", "0", "--chat-only"], work / "chat-mock.log", "mock listening"
        )
        procs += [native, chat]
        config = work / "chat.yaml"
        config.write_text(json.dumps({"pool": {"provider": {"mode": "chat"}}}))
        passthrough, pass_url = _start(
            ["serve", "--port", "0", "--upstream", native_url],
            work / "passthrough.log",
            "proxyfleet serving",
        )
        translating, translate_url = _start(
            ["serve", "--port", "0", "--config", str(config), "--upstream", chat_url],
            work / "chat.log",
            "proxyfleet serving",
        )
        procs += [passthrough, translating]
        yield pass_url, translate_url
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)


def _summary(response: Any) -> dict[str, Any]:
    calls = [
        {"name": o.name, "arguments": json.loads(o.arguments or "{}")}
        for o in response.output
        if o.type == "function_call"
    ]
    return {"text": response.output_text, "tool_calls": calls, "status": response.status}


def _ask(client: openai.OpenAI, stream: bool, **kwargs: Any) -> Any:
    if not stream:
        return client.responses.create(**kwargs)
    with client.responses.stream(**kwargs) as events:
        for _ in events:
            pass
        return events.get_final_response()


def conversation(url: str, model: str, stream: bool) -> list[dict[str, Any]]:
    """The scripted conversation; returns what the client saw at each turn."""
    with openai.OpenAI(
        base_url=url, api_key=os.environ.get("OPENAI_API_KEY", "unused"), max_retries=0
    ) as client:
        seen = [
            _summary(
                _ask(client, stream, model=model, input="Say hello.", instructions="You are terse.")
            )
        ]
        question = "What is the weather in Paris? Use the tool."
        first = _ask(client, stream, model=model, input=question, tools=TOOLS)
        seen.append(_summary(first))
        calls = [o for o in first.output if o.type == "function_call"]
        if not calls:
            return seen
        history: list[Any] = [{"role": "user", "content": question}]
        for call in calls:
            history.append(
                {
                    "type": "function_call",
                    "call_id": call.call_id,
                    "name": call.name,
                    "arguments": call.arguments,
                }
            )
            history.append(
                {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"}
            )
        seen.append(_summary(_ask(client, stream, model=model, input=history, tools=TOOLS)))
        return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passthrough-url", help="a running passthrough proxyfleet (…/v1)")
    parser.add_argument("--chat-url", help="a running provider: chat proxyfleet (…/v1)")
    parser.add_argument("--model", default="mock-gpt")
    args = parser.parse_args()
    pair: contextlib.AbstractContextManager[tuple[str, str]]
    if args.passthrough_url and args.chat_url:
        pair = contextlib.nullcontext((args.passthrough_url, args.chat_url))
    elif args.passthrough_url or args.chat_url:
        parser.error("give both --passthrough-url and --chat-url, or neither")
    else:
        pair = local_pair()
    differences = 0
    with pair as (pass_url, chat_url):
        print(f"passthrough: {pass_url}\nchat:        {chat_url}")
        for stream in (False, True):
            left = conversation(pass_url, args.model, stream)
            right = conversation(chat_url, args.model, stream)
            mode = "streamed" if stream else "non-streamed"
            for turn, (a, b) in enumerate(zip(left, right, strict=False), 1):
                same = a == b
                differences += not same
                print(f"{mode:13} turn {turn}: {'same' if same else 'DIFFERENT'}")
                if not same:
                    print(f"  passthrough: {json.dumps(a)}\n  chat:        {json.dumps(b)}")
            if len(left) != len(right):
                differences += 1
                print(
                    f"{mode:13}: {len(left)} turns through passthrough, {len(right)} through chat"
                )
    print("no difference" if not differences else f"{differences} difference(s)")
    return 0 if not differences else 1


if __name__ == "__main__":
    sys.exit(main())
