"""The config flags shared by ``serve``, ``config`` and ``start``, and loading from them."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxyfleet.config import Config
    from proxyfleet.pool import BackendSpec

# flag destination -> dotted config field
SERVE_FIELDS = {
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


def add_config_flags(parser: argparse.ArgumentParser) -> None:
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


def load_from(args: argparse.Namespace) -> tuple[Config, tuple[BackendSpec, ...]]:
    from proxyfleet.config import load_config, resolve_backends

    path = args.config or (
        Path(os.environ["PROXYFLEET_CONFIG"]) if os.environ.get("PROXYFLEET_CONFIG") else None
    )
    overrides: dict[str, tuple[object, str]] = {}
    for dest, dotted in SERVE_FIELDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            flag = "--" + dest.replace("_", "-")
            overrides[dotted] = (value, f"flag {flag}")
    config = load_config(path, env=os.environ, overrides=overrides)
    return config, resolve_backends(config)


def serve_flags(args: argparse.Namespace) -> list[str]:
    """The config flags given, as a 'serve' command line (paths made absolute)."""
    out: list[str] = []
    if args.config is not None:
        out += ["--config", str(args.config.resolve())]
    for dest in SERVE_FIELDS:
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
