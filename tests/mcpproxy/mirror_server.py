"""A tiny stdio JSON-RPC server (standard library only, starts in milliseconds) whose every
behaviour a test can ask for, for the tests of children, sessions and routes:

    python tests/mcpproxy/mirror_server.py [--delay S] [--stderr TEXT] [--ignore-eof]
                                           [--ignore-term] [--name NAME] [--fail-if PATH]

``--delay``: sleep before reading stdin (a slow start-up); ``--stderr``: write a line to stderr
at start; ``--ignore-eof``: keep running when stdin closes; ``--ignore-term``: ignore SIGTERM;
``--name``: the ``serverInfo`` name; ``--fail-if``: exit at once with code 1 (and a line on
stderr) while PATH exists, as a server that cannot start does. Requests (by method):

- ``ping``: ``{}``; ``initialize``: a minimal MCP answer;
- ``whoami``: ``{"pid", "cwd", "env": {name: value}}`` for the names in ``params.env``;
- ``notify``: a ``notifications/message`` carrying ``params.text`` first, then the answer;
- ``later``: the answer, then that notification ``params.delay`` seconds later;
- ``ask``: a request of the server's own (id ``"srv-1"``, ``roots/list``), then the answer;
- ``slow``: the answer after ``params.seconds``, without holding other requests up;
- ``silent``: no answer at all; ``raw``: ``{"line": the request line exactly as it came}``;
- ``garbage``: lines that are not JSON-RPC (and a blank one), then the answer;
- ``spawn``: starts ``sleep 60`` (in this process group, or in a session of its own with
  ``params.own_session``), which keeps this server's stdin, stdout and stderr, and answers its
  pid;
- ``heard``: ``{"notifications": [...]}``, every notification received so far;
- ``exit``: writes ``params.stderr`` to stderr and exits with ``params.code``;
- anything else: ``{"method", "params"}``.

A response from the client (to ``ask``) comes back as a ``notifications/answered`` carrying it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

_lock = threading.Lock()
_heard: list[dict[str, Any]] = []  # the notifications received


def write(message: dict[str, Any]) -> None:
    line = json.dumps(message, separators=(",", ":"))
    with _lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def answer(ident: Any, result: Any) -> None:
    write({"jsonrpc": "2.0", "id": ident, "result": result})


def note(text: str) -> None:
    write({"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": text}})


def after(seconds: float, action: Any) -> None:
    threading.Timer(seconds, action).start()


def _initialize(ident: Any, params: dict[str, Any], name: str) -> None:
    version = params.get("protocolVersion", "2025-06-18")
    server = {"name": name, "version": "0"}
    answer(ident, {"protocolVersion": version, "capabilities": {}, "serverInfo": server})


def _whoami(ident: Any, params: dict[str, Any]) -> None:
    env = {key: os.environ.get(key) for key in params.get("env", [])}
    answer(ident, {"pid": os.getpid(), "cwd": os.getcwd(), "env": env})


def _notify(ident: Any, params: dict[str, Any]) -> None:
    note(params["text"])
    answer(ident, {"text": params["text"]})


def _later(ident: Any, params: dict[str, Any]) -> None:
    answer(ident, "scheduled")
    after(float(params.get("delay", 0.2)), lambda: note(params["text"]))


def _ask(ident: Any, params: dict[str, Any]) -> None:
    write({"jsonrpc": "2.0", "id": "srv-1", "method": "roots/list"})
    answer(ident, "asked")


def _garbage(ident: Any, params: dict[str, Any]) -> None:
    with _lock:
        sys.stdout.write('not json\n\n{"no": "jsonrpc"}\n{"jsonrpc": "2.0"}\n')
        sys.stdout.flush()
    answer(ident, "after garbage")


def _spawn(ident: Any, params: dict[str, Any]) -> None:
    own = bool(params.get("own_session"))
    grandchild = subprocess.Popen(["sleep", "60"], start_new_session=own)
    answer(ident, {"pid": grandchild.pid})


def _exit(ident: Any, params: dict[str, Any]) -> None:
    if params.get("stderr"):
        sys.stderr.write(params["stderr"] + "\n")
        sys.stderr.flush()
    os._exit(int(params.get("code", 0)))


_METHODS = {
    "ping": lambda ident, params: answer(ident, {}),
    "whoami": _whoami,
    "notify": _notify,
    "later": _later,
    "ask": _ask,
    "slow": lambda ident, params: after(float(params["seconds"]), lambda: answer(ident, "done")),
    "silent": lambda ident, params: None,
    "garbage": _garbage,
    "spawn": _spawn,
    "heard": lambda ident, params: answer(ident, {"notifications": _heard}),
    "exit": _exit,
}


def handle(raw: str, name: str) -> None:
    message = json.loads(raw)
    ident = message.get("id")
    method = message.get("method")
    params = message.get("params") or {}
    if method is None:  # a response from the client
        write({"jsonrpc": "2.0", "method": "notifications/answered", "params": message})
    elif ident is None:  # a notification
        _heard.append(message)
    elif method == "initialize":
        _initialize(ident, params, name)
    elif method == "raw":
        answer(ident, {"line": raw})
    elif method in _METHODS:
        _METHODS[method](ident, params)
    else:
        answer(ident, {"method": method, "params": params})


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--stderr")
    parser.add_argument("--ignore-eof", action="store_true")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--name", default="mirror")
    parser.add_argument("--fail-if")
    args = parser.parse_args(argv)
    if args.fail_if and os.path.exists(args.fail_if):
        sys.stderr.write(f"cannot start: {args.fail_if} exists\n")
        sys.stderr.flush()
        sys.exit(1)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.stderr:
        sys.stderr.write(args.stderr + "\n")
        sys.stderr.flush()
    time.sleep(args.delay)
    for line in sys.stdin:
        if line.strip():
            handle(line.rstrip("\n"), args.name)
    if args.ignore_eof:
        while True:
            time.sleep(60)


if __name__ == "__main__":
    main(sys.argv[1:])
