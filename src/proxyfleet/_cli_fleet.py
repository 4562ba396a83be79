"""``start``/``stop``/``status``/``restart``/``logs`` and ``up``/``ps``/``down``/``nginx``:
parse and dispatch to :mod:`proxyfleet.fleet`.

Paths from the command line and the environment are made absolute here, once, against the
directory the command runs in: the fleet hands them to other processes (instances, workers,
nginx) that would read a relative path against another directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from proxyfleet._cli_config import add_config_flags, load_from, serve_flags

if TYPE_CHECKING:
    from proxyfleet.fleet.instances import Fleet
    from proxyfleet.fleet.manager import Manager


def _runtime_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runtime-dir",
        type=Path,
        metavar="DIR",
        help="where proxy_<port>.pid/.lock/.log live (also PROXYFLEET_RUNTIME_DIR; default "
        "$XDG_RUNTIME_DIR/proxyfleet or a per-user temp folder)",
    )


def add_fleet_commands(commands: Any) -> None:
    start = commands.add_parser(
        "start",
        help="start a detached gateway on a port (proxies side by side)",
        description="Start 'proxyfleet serve' detached, keyed by its port: its own pid, lock and "
        "log file in the runtime dir. Refuses a port held by another process; a "
        "no-op when our instance already serves it. Waits for /ready.",
    )
    add_config_flags(start)
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
    status.add_argument(
        "--json",
        action="store_true",
        help="one JSON document: a list of {port, pid, state, uptime, health, config, log} "
        "(stable keys; uptime in seconds, null when not running)",
    )
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
        help="the deployment file (nginx, redis, servers, routing)",
    )
    _runtime_flag(parser)


def add_deploy_commands(commands: Any) -> None:
    up = commands.add_parser(
        "up",
        help="multi-process mode: workers behind a generated nginx",
        description="Validate the deployment and its servers' configs, pre-check every port, "
        "start the deployment's Redis (its 'redis:'), start the workers, wait for their "
        "health endpoints, then start nginx. Any failure rolls back what was started. "
        "Stays in the foreground (Ctrl+C stops everything in order) unless --detach.",
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
    ps.add_argument(
        "--json",
        action="store_true",
        help="one JSON document: a list of {role, server, port, pid, state, log} (stable keys)",
    )
    down = commands.add_parser(
        "down", help="stop a deployment: nginx, servers, the core, then redis"
    )
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


def _runtime_dir(args: argparse.Namespace) -> Path:
    from proxyfleet.fleet.records import default_runtime_dir

    directory = args.runtime_dir or (
        Path(os.environ["PROXYFLEET_RUNTIME_DIR"])
        if os.environ.get("PROXYFLEET_RUNTIME_DIR")
        else default_runtime_dir()
    )
    return directory.resolve()


def _fleet(args: argparse.Namespace, to: TextIO | None = None) -> Fleet:
    from proxyfleet.fleet.instances import Fleet

    return Fleet(_runtime_dir(args), lambda line: print(line, file=to, flush=True))


def _start(args: argparse.Namespace) -> int:
    from proxyfleet.gateway.server import check_serving

    config, _ = load_from(args)  # a bad config fails here, with exit code 2, before anything starts
    check_serving(config)
    path = str(args.config.resolve()) if args.config else None
    return _fleet(args).start(
        config.server.port, config.server.host, serve_flags(args), path, args.wait
    )


def _stop(args: argparse.Namespace) -> int:
    fleet = _fleet(args)
    return fleet.stop_all(args.timeout) if args.all else fleet.stop(args.port, args.timeout)


def _status(args: argparse.Namespace) -> int:
    rows = _fleet(args, to=sys.stderr).status()  # what it cleans is said apart from the data
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


def _manager(args: argparse.Namespace) -> Manager:
    from proxyfleet.fleet.manager import Manager

    return Manager(
        args.file.resolve(),
        _runtime_dir(args),
        lambda line: print(line, flush=True),
        environ=os.environ,
    )


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
    rows = [
        {
            "role": p.role,
            "server": p.server,
            "port": p.port,
            "pid": p.pid,
            "state": "running" if p.alive() else "gone",
            "log": p.log,
        }
        for p in processes
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("not up")
        return 0
    print(f"{'ROLE':7} {'SERVER':12} {'PORT':>6} {'PID':>8} {'STATE':8} LOG")
    for r in rows:
        print(
            f"{r['role']:7} {r['server']:12} {r['port']:>6} {r['pid']:>8} {r['state']:8} {r['log']}"
        )
    return 0


def _down(args: argparse.Namespace) -> int:
    return _manager(args).down(args.timeout)


def _nginx(args: argparse.Namespace) -> int:
    from proxyfleet.fleet.deploy import load_deployment
    from proxyfleet.fleet.nginx import find_nginx, render_nginx, validate_nginx

    manager = _manager(args)
    deployment = load_deployment(manager.deploy_path)
    text = render_nginx(deployment, manager.prefix)
    target = args.output.resolve() if args.output is not None else None
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


COMMANDS = {
    "start": _start,
    "stop": _stop,
    "status": _status,
    "restart": _restart,
    "logs": _logs,
    "up": _up,
    "ps": _ps,
    "down": _down,
    "nginx": _nginx,
}
