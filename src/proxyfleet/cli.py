"""``proxyfleet …``: parse, build the config, dispatch. No business logic lives here."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxyfleet import __version__
from proxyfleet.errors import ConfigError, ListenError

if TYPE_CHECKING:
    from proxyfleet.config import Config
    from proxyfleet.fleet.instances import Fleet
    from proxyfleet.fleet.manager import Manager
    from proxyfleet.pool import BackendSpec

__all__ = ["main"]

_EPILOG = """\
examples:
  proxyfleet demo                                    mock pool + gateway + live view, no config
  proxyfleet serve --credentials-dir ./accounts --upstream https://api.example.com/v1
  proxyfleet serve --config proxyfleet.yaml
  proxyfleet mock --port 9001                        OpenAI-compatible mock upstream

Clients point at http://127.0.0.1:2048/v1 (the openai SDK's base_url, curl, Codex CLI).
Every config field can also be set with PROXYFLEET_<SECTION>__<FIELD>, e.g.
PROXYFLEET_POOL__SELECTION=round-robin; precedence: defaults < file < environment < flags.
"""

# flag destination -> dotted config field
_SERVE_FIELDS = {
    "host": "server.host",
    "port": "server.port",
    "credentials_dir": "pool.credentials_dir",
    "upstream": "pool.upstreams",
    "selection": "pool.selection",
    "max_concurrency": "pool.max_concurrency",
    "queue_limit": "pool.queue_limit",
    "lease_timeout": "pool.lease_timeout",
    "retries": "pool.retries",
    "auth_keys_file": "server.auth_keys_file",
    "log_level": "log.level",
    "log_format": "log.format",
    "access_log": "log.access",
    "debug": "debug.enabled",
    "debug_dir": "debug.dir",
}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help="YAML config file (also PROXYFLEET_CONFIG)",
    )
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 2048)")
    parser.add_argument(
        "--credentials-dir",
        type=Path,
        metavar="DIR",
        help="one backend per NAME.key / NAME.json file",
    )
    parser.add_argument(
        "--upstream",
        action="append",
        metavar="URL",
        help="upstream base URL, e.g. https://api.openai.com/v1; with credentials "
        "the URL they are for, without them one keyless backend per "
        "--upstream (repeatable)",
    )
    parser.add_argument(
        "--selection",
        choices=["lru", "round-robin", "least-busy"],
        help="backend selection (default lru)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        metavar="N",
        help="requests at once per backend (default 1: strict single-flight)",
    )
    parser.add_argument(
        "--queue-limit",
        type=int,
        metavar="N",
        help="requests that may wait for a backend (default 1000)",
    )
    parser.add_argument(
        "--lease-timeout",
        type=float,
        metavar="SECONDS",
        help="longest wait for a backend before 503 (default 30)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        metavar="N",
        help="failovers to another backend before the first byte (default 2)",
    )
    parser.add_argument(
        "--auth-keys-file",
        type=Path,
        metavar="FILE",
        help="client keys, one per line; clients must send one",
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", choices=["json", "text"])
    parser.add_argument(
        "--access-log", action="store_true", default=None, help="log one JSON line per request"
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=None,
        help="debug mode: per-category JSONL timing logs and stress detection "
        "(also DEBUG_MODE=true)",
    )
    parser.add_argument(
        "--debug-dir",
        type=Path,
        metavar="DIR",
        help="where debug logs go (default ./debug_logs; also DEBUG_LOG_DIR)",
    )


def _runtime_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runtime-dir",
        type=Path,
        metavar="DIR",
        help="where proxy_<port>.pid/.lock/.log live (also PROXYFLEET_RUNTIME_DIR; default "
        "$XDG_RUNTIME_DIR/proxyfleet or a per-user temp folder)",
    )


def _add_fleet_commands(commands: Any) -> None:
    start = commands.add_parser(
        "start",
        help="start a detached gateway on a port (proxies side by side)",
        description="Start 'proxyfleet serve' detached, keyed by its port: its own pid, lock and "
        "log file in the runtime dir. Refuses a port held by another process; a "
        "no-op when our instance already serves it. Waits for /ready.",
    )
    _add_config_flags(start)
    _runtime_flag(start)
    start.add_argument(
        "--wait",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="how long to wait for /ready (default 20)",
    )
    stop = commands.add_parser(
        "stop",
        help="stop the instance on a port (or all)",
        description="SIGTERM to the instance's process group, SIGKILL after --timeout. Only the "
        "process recorded for the port, checked to be alive and ours, is signalled.",
    )
    target = stop.add_mutually_exclusive_group(required=True)
    target.add_argument("--port", type=int)
    target.add_argument("--all", action="store_true", help="every recorded instance")
    stop.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="drain time before SIGKILL (default 10)",
    )
    _runtime_flag(stop)
    status = commands.add_parser("status", help="the instances: port, pid, state, health, …")
    status.add_argument("--json", action="store_true", help="one JSON document")
    _runtime_flag(status)
    restart = commands.add_parser("restart", help="stop, then start with the same flags")
    restart.add_argument("--port", type=int, required=True)
    restart.add_argument("--wait", type=float, default=20.0, metavar="SECONDS")
    _runtime_flag(restart)
    logs = commands.add_parser("logs", help="show (or follow) an instance's log")
    logs.add_argument("--port", type=int, required=True)
    logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing until the instance stops or Ctrl+C",
    )
    logs.add_argument("-n", "--lines", type=int, default=50)
    _runtime_flag(logs)


def _deploy_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f",
        "--file",
        type=Path,
        required=True,
        metavar="DEPLOY_YAML",
        help="the deployment file (nginx, servers, routing)",
    )
    _runtime_flag(parser)


def _add_deploy_commands(commands: Any) -> None:
    up = commands.add_parser(
        "up",
        help="multi-process mode: workers behind a generated nginx",
        description="Validate the deployment, pre-check every port, start the workers, wait for "
        "their health endpoints, then start nginx. Any failure rolls back what was "
        "started. Stays in the foreground (Ctrl+C stops everything in order) unless "
        "--detach.",
    )
    _deploy_flag(up)
    up.add_argument("--detach", action="store_true", help="return once everything is up")
    up.add_argument(
        "--watch",
        action="store_true",
        help="re-validate and apply changes to the deployment and configs it names",
    )
    up.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long each process may take to become healthy (default 30)",
    )
    ps = commands.add_parser("ps", help="the processes of a deployment")
    _deploy_flag(ps)
    down = commands.add_parser("down", help="stop a deployment: nginx, servers, core last")
    _deploy_flag(down)
    down.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="per group, before SIGKILL (default 10)",
    )
    nginx = commands.add_parser("nginx", help="nginx config for a deployment")
    actions = nginx.add_subparsers(dest="nginx_command", metavar="ACTION", required=True)
    render = actions.add_parser("render", help="print (or write) the generated nginx.conf")
    _deploy_flag(render)
    render.add_argument("-o", "--output", type=Path, metavar="FILE")
    render.add_argument("--validate", action="store_true", help="check it with the real nginx -t")


def _add_debug_commands(commands: Any) -> None:
    debug = commands.add_parser("debug", help="read debug-mode logs: summary, correlate, tail")
    actions = debug.add_subparsers(dest="debug_command", metavar="ACTION", required=True)
    summary = actions.add_parser(
        "summary", help="per-category counts, slowest requests, stress timeline"
    )
    summary.add_argument("dir", type=Path)
    summary.add_argument("--slowest", type=int, default=10)
    correlate = actions.add_parser(
        "correlate",
        help="join two systems' logs: by request id, then by time",
        description="Pair the entries of two debug directories (say the gateway's and an "
        "orchestrator's): entries sharing a request_id first, then what is left by "
        "the nearest timestamp within --within.",
    )
    correlate.add_argument("dir_a", type=Path)
    correlate.add_argument("dir_b", type=Path)
    correlate.add_argument(
        "--within",
        default="1s",
        help="time window for pairs without a shared request id (1s, 250ms)",
    )
    tail = actions.add_parser("tail", help="the latest entries, merged by time")
    tail.add_argument("dir", type=Path)
    tail.add_argument("-n", "--lines", type=int, default=20)
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new entries")
    tail.add_argument(
        "--for",
        dest="seconds",
        type=float,
        metavar="SECONDS",
        help="with -f: stop after this long (default: until Ctrl+C)",
    )
    tail.add_argument(
        "--category",
        action="append",
        default=[],
        metavar="NAME",
        help="only these categories (repeatable)",
    )


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
    _add_config_flags(serve)
    serve.add_argument(
        "--instance-dir",
        type=Path,
        metavar="DIR",
        help="hold proxy_<port>.lock and write proxy_<port>.pid there (used by 'proxyfleet start')",
    )

    check = commands.add_parser(
        "config",
        help="validate a config and print the effective one",
        description="Load the config exactly as 'serve' would and print "
        "it with its backends (secrets never shown). Exit "
        "code 2 when it is invalid.",
    )
    _add_config_flags(check)

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

    _add_fleet_commands(commands)
    _add_deploy_commands(commands)
    _add_debug_commands(commands)

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


def _load(args: argparse.Namespace) -> tuple[Config, tuple[BackendSpec, ...]]:
    from proxyfleet.config import load_config, resolve_backends

    path = args.config or (
        Path(os.environ["PROXYFLEET_CONFIG"]) if os.environ.get("PROXYFLEET_CONFIG") else None
    )
    overrides: dict[str, tuple[object, str]] = {}
    for dest, dotted in _SERVE_FIELDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            flag = "--" + dest.replace("_", "-")
            overrides[dotted] = (value, f"flag {flag}")
    config = load_config(path, env=os.environ, overrides=overrides)
    return config, resolve_backends(config)


def _serve(args: argparse.Namespace) -> int:
    from proxyfleet.fleet.lifecycle import InstanceSpec
    from proxyfleet.fleet.records import InstanceFiles
    from proxyfleet.gateway.server import run_gateway
    from proxyfleet.logs import configure_logging

    config, backends = _load(args)
    configure_logging(config.log.level, config.log.format)
    instance = None
    if args.instance_dir is not None:
        files = InstanceFiles(args.instance_dir, config.server.port)
        path = str(args.config.resolve()) if args.config else None
        instance = InstanceSpec(files, path, tuple(_serve_flags(args)))
    return run_gateway(config, backends, instance)


def _serve_flags(args: argparse.Namespace) -> list[str]:
    """The config flags given, as a 'serve' command line (paths made absolute)."""
    out: list[str] = []
    if args.config is not None:
        out += ["--config", str(args.config.resolve())]
    for dest in _SERVE_FIELDS:
        value = getattr(args, dest, None)
        if value is None or dest in ("host", "port"):
            continue
        flag = "--" + dest.replace("_", "-")
        if value is True:
            out.append(flag)
        elif isinstance(value, list):
            for item in value:
                out += [flag, str(item)]
        else:
            out += [flag, str(value.resolve() if isinstance(value, Path) else value)]
    return out


def _fleet(args: argparse.Namespace) -> Fleet:
    from proxyfleet.fleet.instances import Fleet
    from proxyfleet.fleet.records import default_runtime_dir

    directory = args.runtime_dir or (
        Path(os.environ["PROXYFLEET_RUNTIME_DIR"])
        if os.environ.get("PROXYFLEET_RUNTIME_DIR")
        else default_runtime_dir()
    )
    return Fleet(directory, lambda line: print(line, flush=True))


def _start(args: argparse.Namespace) -> int:
    from proxyfleet.gateway.app import load_keys

    config, _ = _load(args)  # a bad config fails here, with exit code 2, before anything starts
    if config.server.auth_keys_file is not None:
        load_keys(config.server.auth_keys_file)
    path = str(args.config.resolve()) if args.config else None
    return _fleet(args).start(
        config.server.port, config.server.host, _serve_flags(args), path, args.wait
    )


def _stop(args: argparse.Namespace) -> int:
    fleet = _fleet(args)
    return fleet.stop_all(args.timeout) if args.all else fleet.stop(args.port, args.timeout)


def _status(args: argparse.Namespace) -> int:
    rows = _fleet(args).status()
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    if not rows:
        print("no instances recorded")
        return 0
    print(f"{'PORT':>6} {'PID':>8} {'STATE':8} {'UPTIME':>9} {'HEALTH':14} CONFIG / LOG")
    for r in rows:
        uptime = f"{r.uptime:.0f}s" if r.uptime is not None else "-"
        print(
            f"{r.port:>6} {r.pid or '-':>8} {r.state:8} {uptime:>9} {r.health:14} "
            f"{r.config or '(flags)'}  {r.log}"
        )
    return 0


def _restart(args: argparse.Namespace) -> int:
    return _fleet(args).restart(args.port, args.wait)


def _logs(args: argparse.Namespace) -> int:
    return _fleet(args).logs(
        args.port, args.follow, args.lines, lambda text: print(text, end="", flush=True)
    )


def _config(args: argparse.Namespace) -> int:
    config, backends = _load(args)
    print(
        json.dumps(
            {
                "config": json.loads(config.model_dump_json()),
                "backends": [b.describe() for b in backends],
            },
            indent=2,
        )
    )
    return 0


def _mock(args: argparse.Namespace) -> int:
    import uvloop

    from proxyfleet.gateway.server import bind
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
    )
    bind(args.host, args.port, "mock").close()  # a busy port is a clear error, not a traceback
    uvloop.run(serve_mock(args.host, args.port, settings, args.debug_dir))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from proxyfleet.demo import run_demo

    return run_demo(args.port, args.accounts, args.burst, serve=not args.no_serve)


def _manager(args: argparse.Namespace) -> Manager:
    from proxyfleet.fleet.manager import Manager

    return Manager(args.file, _fleet(args).directory, lambda line: print(line, flush=True))


def _up(args: argparse.Namespace) -> int:
    from proxyfleet.fleet.manager import Supervisor

    manager = _manager(args)
    code, deployment = manager.up(args.wait)
    if code or deployment is None or args.detach:
        return code
    supervisor = Supervisor(manager, deployment)
    tick = None
    if args.watch:
        from proxyfleet.fleet.watch import Watcher

        tick = Watcher(manager, supervisor).tick
    print("running in the foreground; Ctrl+C stops everything", flush=True)
    return supervisor.run(tick)


def _ps(args: argparse.Namespace) -> int:
    processes, _ = _manager(args).load_state()
    if not processes:
        print("not up")
        return 0
    print(f"{'ROLE':7} {'SERVER':12} {'PORT':>6} {'PID':>8} {'STATE':8} LOG")
    for p in processes:
        state = "running" if p.alive() else "gone"
        print(f"{p.role:7} {p.server:12} {p.port:>6} {p.pid:>8} {state:8} {p.log}")
    return 0


def _down(args: argparse.Namespace) -> int:
    return _manager(args).down(args.timeout)


def _nginx(args: argparse.Namespace) -> int:
    from proxyfleet.fleet.deploy import load_deployment
    from proxyfleet.fleet.nginx import find_nginx, render_nginx, validate_nginx

    deployment = load_deployment(args.file)
    manager = _manager(args)
    text = render_nginx(deployment, manager.prefix)
    target = args.output
    if args.validate:
        check = target or manager.state_dir / "nginx-check.conf"
        check.parent.mkdir(parents=True, exist_ok=True)
        check.write_text(text)
        validate_nginx(find_nginx(deployment.nginx.binary), check, manager.prefix)
        print(f"nginx -t: {check} is valid", file=sys.stderr)
    if target is not None:
        target.write_text(text)
    else:
        print(text, end="")
    return 0


def _seconds(text: str) -> float:
    value = text.strip().lower()
    try:
        if value.endswith("ms"):
            return float(value[:-2]) / 1000
        return float(value.removesuffix("s"))
    except ValueError as exc:
        raise ConfigError("flag --within", text, "a duration such as 1s or 250ms") from exc


def _debug(args: argparse.Namespace) -> int:
    from proxyfleet.debuglog import reader

    if args.debug_command == "summary":
        print(reader.summary(reader.load(args.dir), args.slowest))
    elif args.debug_command == "correlate":
        pairs = reader.correlate(
            reader.load(args.dir_a), reader.load(args.dir_b), _seconds(args.within)
        )
        for pair in pairs:
            print(pair.describe())
        by_id = sum(1 for p in pairs if p.by == "request_id")
        print(f"{len(pairs)} pairs: {by_id} by request id, {len(pairs) - by_id} by time")
    else:
        entries = reader.load(args.dir, args.category)
        for entry in entries[-args.lines :] if args.lines else []:
            print(entry.describe())
        if args.follow:
            end = time.monotonic() + args.seconds if args.seconds else None
            reader.follow(
                args.dir,
                args.category,
                lambda line: print(line, flush=True),
                lambda: end is not None and time.monotonic() >= end,
            )
    return 0


_COMMANDS = {
    "serve": _serve,
    "config": _config,
    "mock": _mock,
    "demo": _demo,
    "start": _start,
    "stop": _stop,
    "status": _status,
    "restart": _restart,
    "logs": _logs,
    "up": _up,
    "ps": _ps,
    "down": _down,
    "nginx": _nginx,
    "debug": _debug,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"proxyfleet: config error: {exc}", file=sys.stderr)
        return ConfigError.exit_code
    except ListenError as exc:
        print(f"proxyfleet: {exc}", file=sys.stderr)
        return ListenError.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
