"""``proxyfleet …``: parse, build the config, dispatch. No business logic lives here."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from proxyfleet import __version__
from proxyfleet._cli_config import add_config_flags, load_from, serve_flags
from proxyfleet._cli_debug import add_debug_commands, run_debug
from proxyfleet._cli_fleet import COMMANDS as FLEET_COMMANDS
from proxyfleet._cli_fleet import add_deploy_commands, add_fleet_commands
from proxyfleet.errors import ConfigError, ListenError

if TYPE_CHECKING:
    from proxyfleet.config.model import Config

__all__ = ["main"]

_EPILOG = """\
examples:
  proxyfleet demo                                    mock pool + gateway + live view, no config
  proxyfleet serve --credentials-dir ./accounts --upstream https://api.example.com/v1
  proxyfleet serve --config proxyfleet.yaml
  proxyfleet mock --port 9001                        OpenAI-compatible mock upstream
  proxyfleet mock-orchestrator --port 8000           mock orchestrator for elastic pools
  proxyfleet mcp stdio --upstream URL                stdio MCP client -> remote MCP server
  proxyfleet start --port 10001 --config chat.yaml   a detached instance (status, stop, logs)
  proxyfleet status --json                           the instances as JSON, for scripts
  proxyfleet up -f deploy.yaml                       workers behind a generated nginx
  proxyfleet ps -f deploy.yaml --json                a deployment's processes as JSON
  proxyfleet debug summary ./debug_logs              read what --debug recorded

Clients point at http://127.0.0.1:2048/v1 (the openai SDK's base_url, curl, Codex CLI).
Every config field can also be set with PROXYFLEET_<SECTION>__<FIELD>, e.g.
PROXYFLEET_POOL__SELECTION=round-robin; precedence: defaults < file < environment < flags.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proxyfleet",
        description="A pooled, OpenAI-compatible proxy gateway: one public port, many clients, "
        "upstream backends leased one request at a time.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"proxyfleet {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    serve = commands.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway in the foreground until SIGTERM or "
        "Ctrl+C (in-flight requests drain first).",
    )
    add_config_flags(serve)
    serve.add_argument(
        "--instance-dir",
        type=Path,
        metavar="DIR",
        help="hold proxy_<port>.lock and write proxy_<port>.pid there (used by 'proxyfleet start')",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="N gateway processes on the one port (SO_REUSEPORT), restarted when one dies; "
        "needs a shared pool store (pool.store.redis): with the memory store each worker "
        "would hold its own pool",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)

    check = commands.add_parser(
        "config",
        help="validate a config and print the effective one",
        description="Load the config exactly as 'serve' would and print "
        "it with its backends (secrets never shown). Exit "
        "code 2 when it is invalid.",
    )
    add_config_flags(check)

    mock = commands.add_parser(
        "mock",
        help="run the built-in OpenAI-compatible mock upstream",
        description="An OpenAI-compatible upstream with SSE, latency and "
        "fault injection; GET /mock/stats reports requests "
        "and peak concurrency per credential.",
    )
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=9001, help="0 picks a free port (default 9001)")
    mock.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="S",
        help="delay of a non-streamed answer and between stream chunks",
    )
    mock.add_argument(
        "--ttft", type=float, default=0.0, metavar="S", help="delay before the first streamed chunk"
    )
    mock.add_argument("--chunks", type=int, default=8, help="content chunks per answer")
    mock.add_argument("--chunk-size", type=int, default=8, help="characters per chunk")
    mock.add_argument(
        "--fail-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="fraction of requests answered with --fail-status",
    )
    mock.add_argument("--fail-status", type=int, default=500)
    mock.add_argument("--hang", action="store_true", help="accept requests, never answer")
    mock.add_argument(
        "--drop-after", type=int, metavar="N", help="cut the connection after N stream chunks"
    )
    mock.add_argument("--name", default="mock", help="name reported in answers")
    mock.add_argument(
        "--chat-only",
        action="store_true",
        help="answer /v1/responses with 404, like a Chat-Completions-only provider",
    )
    mock.add_argument(
        "--debug-dir",
        type=Path,
        metavar="DIR",
        help="write the mock's own debug log (requests by X-Request-ID) there",
    )
    mock.add_argument(
        "--deterministic",
        action="store_true",
        help="ids from a digest of the request and timestamps 0: the same request gets the "
        "same bytes (for comparing answers straight and through a proxy)",
    )

    orch = commands.add_parser(
        "mock-orchestrator",
        help="run a mock orchestrator that provisions mock upstreams",
        description="The orchestrator API (POST /provision/acestream, GET /engines, "
        "GET /orchestrator/status, POST /events/stream_started|stream_ended, "
        "DELETE /containers/{id}) backed by real 'proxyfleet mock' processes on free "
        "ports, with fault injection for demos and tests. GET /mock/stats and "
        "GET /mock/events show what happened; POST /mock/faults changes faults live.",
    )
    orch.add_argument("--host", default="127.0.0.1")
    orch.add_argument("--port", type=int, default=8000, help="0 picks a free port (default 8000)")
    orch.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on POST/DELETE")
    orch.add_argument("--max-engines", type=int, default=20, help="engines at most (default 20)")
    orch.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="F",
        help="slow=S (seconds per provisioning), blocked=ETA, breaker=ETA, degraded, "
        "fail=N (next N fail; -1 = all), refuse (not retryable), reject_events (every "
        "stream start refused with 422); repeatable",
    )
    orch.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="passed to each 'proxyfleet mock' engine, e.g. --engine-arg=--latency=0.2",
    )
    orch.add_argument(
        "--debug-dir",
        type=Path,
        metavar="DIR",
        help="write the orchestrator's own debug log (by X-Request-ID) there",
    )

    mcp = commands.add_parser("mcp", help="MCP tools: a stdio bridge to a remote MCP server")
    mcp_actions = mcp.add_subparsers(dest="mcp_command", metavar="ACTION", required=True)
    stdio = mcp_actions.add_parser(
        "stdio",
        help="speak stdio locally, streamable HTTP to --upstream",
        description="For a local MCP client that only speaks stdio: JSON-RPC lines on stdin go "
        "to the MCP server at --upstream (one session), its messages come out on stdout. "
        "Point --upstream at a proxyfleet MCP route to share one server among many agents.",
    )
    stdio.add_argument(
        "--upstream", required=True, metavar="URL", help="e.g. http://127.0.0.1:2048/mcp"
    )
    stdio.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME: VALUE",
        help="sent with every request (e.g. 'Authorization: Bearer KEY'); repeatable",
    )

    add_fleet_commands(commands)
    add_deploy_commands(commands)
    add_debug_commands(commands)

    demo = commands.add_parser(
        "demo",
        help="mock pool + gateway + live view (no config needed)",
        description="Start the mock with 4 accounts and the gateway, send "
        "a burst of concurrent streaming requests while showing "
        "the pool live, then keep serving until Ctrl+C.",
    )
    demo.add_argument("--port", type=int, default=2048, help="gateway port (default 2048)")
    demo.add_argument("--accounts", type=int, default=4, help="mock accounts (default 4)")
    demo.add_argument("--burst", type=int, default=24, help="concurrent requests (default 24)")
    demo.add_argument(
        "--no-serve",
        action="store_true",
        help="exit after the burst instead of serving until Ctrl+C",
    )
    return parser


def _serve(args: argparse.Namespace) -> int:
    """As uvicorn's main does: the instance's lock and pid record are held here, around the
    listening socket, and the gateway serves on that socket."""
    import contextlib

    from proxyfleet._net import bind, raise_fd_limit
    from proxyfleet.fleet.lifecycle import InstanceSpec, hold_instance_lock, instance_record
    from proxyfleet.fleet.records import InstanceFiles
    from proxyfleet.gateway.server import check_serving, run_gateway
    from proxyfleet.logs import configure_logging

    config, backends = load_from(args)
    configure_logging(config.log.level, config.log.format)
    check_serving(config)
    raise_fd_limit()
    if args.workers != 1:
        return _serve_workers(args, config)
    host, port = config.server.host, config.server.port
    with contextlib.ExitStack() as stack:
        instance = None
        if args.instance_dir is not None:
            files = InstanceFiles(args.instance_dir, port)
            path = str(args.config.resolve()) if args.config else None
            instance = InstanceSpec(files, path, tuple(serve_flags(args)))
            stack.enter_context(hold_instance_lock(files))
        if args.reuse_port:  # one of a supervisor's workers
            from proxyfleet.gateway.supervisor import reuse_port_socket

            sock = reuse_port_socket(host, port, listen=True)
        else:
            sock = bind(host, port)
        if instance is not None:
            stack.enter_context(instance_record(instance, host))
        return run_gateway(config, backends, sock)


def _serve_workers(args: argparse.Namespace, config: Config) -> int:
    """``serve --workers N``: the port reserved here, N workers serving it, supervised."""
    import contextlib

    from proxyfleet.fleet.lifecycle import InstanceSpec, hold_instance_lock, instance_record
    from proxyfleet.fleet.records import InstanceFiles
    from proxyfleet.gateway.supervisor import Supervisor, reserve_port

    if args.workers < 1:
        raise ConfigError("flag --workers", "", "must be 1 or more")
    if config.pool.store.redis is None:
        raise ConfigError(
            "flag --workers",
            "pool.store",
            f"--workers {args.workers} needs a shared pool store: with the memory store each "
            "worker would hold its own pool, and one account would serve up to "
            f"{args.workers} requests at once; set pool.store.redis (see 'Many processes, "
            "one pool' in the README)",
        )
    host = config.server.host
    with contextlib.ExitStack() as stack:
        instance = None
        if args.instance_dir is not None:
            files = InstanceFiles(args.instance_dir, config.server.port)
            path = str(args.config.resolve()) if args.config else None
            instance = InstanceSpec(files, path, tuple(serve_flags(args)))
            stack.enter_context(hold_instance_lock(files))
        reserved = stack.enter_context(reserve_port(host, config.server.port))
        port = reserved.getsockname()[1]
        if instance is not None:
            stack.enter_context(instance_record(instance, host))
        flags = serve_flags(args)

        def command(number: int) -> list[str]:
            return [
                sys.executable, "-m", "proxyfleet", "serve", *flags,
                "--host", host, "--port", str(port), "--reuse-port",
            ]  # fmt: skip

        def announce(url: str) -> None:
            # one write, newline included: the workers write to this stream too
            print(f"proxyfleet serving {url} with {args.workers} workers\n", end="", flush=True)

        supervisor = Supervisor(
            command, args.workers, drain_grace=config.server.drain_grace, announce=announce
        )
        return supervisor.run()


def _config(args: argparse.Namespace) -> int:
    from proxyfleet.logs import redact

    config, backends = load_from(args)
    shown = {
        "config": json.loads(config.model_dump_json()),
        "backends": [b.describe() for b in backends],
    }
    print(json.dumps(redact(shown), indent=2))  # keys, bearer tokens, URL passwords masked
    return 0


def _mock(args: argparse.Namespace) -> int:
    import uvloop

    from proxyfleet._net import bind, raise_fd_limit
    from proxyfleet.mock.runner import serve_mock
    from proxyfleet.mock.server import MockSettings

    settings = MockSettings(
        latency=args.latency,
        ttft=args.ttft,
        chunks=args.chunks,
        chunk_size=args.chunk_size,
        fail_rate=args.fail_rate,
        fail_status=args.fail_status,
        hang=args.hang,
        drop_after=args.drop_after,
        chat_only=args.chat_only,
        name=args.name,
        deterministic=args.deterministic,
    )
    bind(args.host, args.port, "mock").close()  # a busy port is a clear error, not a traceback
    raise_fd_limit()  # a held stream is a descriptor
    uvloop.run(serve_mock(args.host, args.port, settings, args.debug_dir))
    return 0


def _mock_orchestrator(args: argparse.Namespace) -> int:
    import uvloop

    from proxyfleet._net import bind
    from proxyfleet.debuglog.writer import DebugLog
    from proxyfleet.mock.orchestrator import (
        Faults,
        OrchestratorMock,
        parse_fault,
        serve_orchestrator,
    )

    faults = Faults()
    try:
        for text in args.fault:
            faults = faults.updated(parse_fault(text))
    except ValueError as exc:
        raise ConfigError("--fault", "", str(exc)) from None
    if args.max_engines < 1:
        raise ConfigError("--max-engines", "", "must be at least 1")
    mock = OrchestratorMock(
        faults,
        api_key=args.api_key,
        max_engines=args.max_engines,
        engine_args=tuple(args.engine_arg),
        debug=DebugLog(args.debug_dir) if args.debug_dir is not None else None,
    )
    bind(args.host, args.port, "mock-orchestrator").close()
    uvloop.run(serve_orchestrator(args.host, args.port, mock))
    return 0


def _mcp(args: argparse.Namespace) -> int:
    import uvloop

    from proxyfleet.mcpproxy.bridge import bridge_stdio

    if not args.upstream.startswith(("http://", "https://")):
        raise ConfigError("--upstream", "", f"must be an http(s):// URL, got {args.upstream!r}")
    headers: dict[str, str] = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ConfigError("--header", "", "use 'Name: value'")
        headers[name.strip()] = value.strip()
    return uvloop.run(bridge_stdio(args.upstream, headers))


def _demo(args: argparse.Namespace) -> int:
    from proxyfleet.demo import run_demo

    return run_demo(args.port, args.accounts, args.burst, serve=not args.no_serve)


_COMMANDS = {
    "serve": _serve,
    "config": _config,
    "mock": _mock,
    "mock-orchestrator": _mock_orchestrator,
    "mcp": _mcp,
    "demo": _demo,
    "debug": run_debug,
    **FLEET_COMMANDS,
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            args = _parser().parse_args(argv)
            code = _COMMANDS[args.command](args)
        except SystemExit:  # --help, --version, a usage error: what they printed goes now
            sys.stdout.flush()
            raise
        sys.stdout.flush()  # a reader that left (| head) shows here, not at the exit
        return code
    except ConfigError as exc:
        print(f"proxyfleet: config error: {exc}", file=sys.stderr)
        return ConfigError.exit_code
    except ListenError as exc:
        print(f"proxyfleet: {exc}", file=sys.stderr)
        return ListenError.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_gone()


def _reader_gone() -> int:
    """stdout's reader went away: stop quietly, as a process killed by SIGPIPE would, with
    nothing left for the interpreter to flush into the closed pipe at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
