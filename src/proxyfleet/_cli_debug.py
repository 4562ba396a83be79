"""``proxyfleet debug summary|correlate|tail``: read debug-mode logs (or any JSONL log).

What was left out of a log is said on stderr, with why; a log of which nothing could be read
is an error (exit 1)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxyfleet.errors import ConfigError

if TYPE_CHECKING:
    from proxyfleet.debuglog.reader import Entry


def add_debug_commands(commands: Any) -> None:
    debug = commands.add_parser("debug", help="read debug-mode logs: summary, correlate, tail")
    actions = debug.add_subparsers(dest="debug_command", metavar="ACTION", required=True)
    summary = actions.add_parser(
        "summary", help="per-category counts, slowest requests, stress timeline"
    )
    summary.add_argument("dir", type=Path, help="a debug directory, or a JSONL file")
    summary.add_argument("--slowest", type=int, default=10)
    correlate = actions.add_parser(
        "correlate",
        help="join two systems' logs: by request id, then by time",
        description="Pair the entries of two systems' logs (say the gateway's and an "
        "orchestrator's; a debug directory or any JSONL file each), one to one, the nearest "
        "in time first: entries sharing a request_id, then what is left within --within.",
    )
    correlate.add_argument("dir_a", type=Path, help="a debug directory, or a JSONL file")
    correlate.add_argument("dir_b", type=Path, help="the other system's")
    correlate.add_argument(
        "--within",
        default="1s",
        help="time window for pairs without a shared request id (1s, 250ms)",
    )
    tail = actions.add_parser("tail", help="the latest entries, merged by time")
    tail.add_argument("dir", type=Path, help="a debug directory, or a JSONL file")
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


def _read(path: Path, categories: list[str] | None = None) -> list[Entry] | None:
    """The entries of ``path``, having said on stderr what was left out; None (and said so)
    when something was there but nothing of it could be read."""
    from proxyfleet.debuglog import reader

    loaded = reader.read(path, categories or ())
    for note in loaded.skipped:
        print(f"proxyfleet: skipped {note}", file=sys.stderr)
    if not loaded.entries and loaded.skipped and not categories:
        print(f"proxyfleet: nothing could be read from {path}", file=sys.stderr)
        return None
    return loaded.entries


def run_debug(args: argparse.Namespace) -> int:
    from proxyfleet.debuglog import reader

    if args.debug_command == "summary":
        entries = _read(args.dir)
        if entries is None:
            return 1
        print(reader.summary(entries, args.slowest))
    elif args.debug_command == "correlate":
        within = _seconds(args.within)
        a, b = _read(args.dir_a), _read(args.dir_b)
        for side, path in ((a, args.dir_a), (b, args.dir_b)):
            if side == []:  # nothing there at all: nothing to pair with
                print(f"proxyfleet: nothing could be read from {path}", file=sys.stderr)
        if not a or not b:
            return 1
        pairs = reader.correlate(a, b, within)
        for pair in pairs:
            print(pair.describe())
        by_id = sum(1 for p in pairs if p.by == "request_id")
        print(f"{len(pairs)} pairs: {by_id} by request id, {len(pairs) - by_id} by time")
    else:
        entries = _read(args.dir, args.category)
        if entries is None and not args.follow:
            return 1
        for entry in (entries or [])[-args.lines :] if args.lines else []:
            print(entry.describe())
        if args.follow:
            sys.stdout.flush()  # the tail now, not when the buffer fills
            end = time.monotonic() + args.seconds if args.seconds else None
            reader.follow(
                args.dir,
                args.category,
                lambda line: print(line, flush=True),
                lambda: end is not None and time.monotonic() >= end,
            )
    return 0
