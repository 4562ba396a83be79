"""``proxyfleet debug summary|correlate|tail``: read debug-mode logs."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from proxyfleet.errors import ConfigError


def add_debug_commands(commands: Any) -> None:
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


def _seconds(text: str) -> float:
    value = text.strip().lower()
    try:
        if value.endswith("ms"):
            return float(value[:-2]) / 1000
        return float(value.removesuffix("s"))
    except ValueError as exc:
        raise ConfigError("flag --within", text, "a duration such as 1s or 250ms") from exc


def run_debug(args: argparse.Namespace) -> int:
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
