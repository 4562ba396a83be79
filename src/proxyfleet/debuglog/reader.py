"""Reading debug logs: load, summarise, correlate two systems, tail. Pure over the entries,
except :func:`load` and :func:`follow`, which read files."""

from __future__ import annotations

import bisect
import datetime
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxyfleet.errors import ConfigError

__all__ = ["Entry", "correlate", "follow", "load", "summary"]


@dataclass(frozen=True, slots=True)
class Entry:
    category: str
    at: float  # unix seconds, from the timestamp
    data: dict[str, Any]

    @property
    def request_id(self) -> str | None:
        rid = self.data.get("request_id")
        return str(rid) if rid is not None else None

    def describe(self) -> str:
        skip = {"session_id", "timestamp", "elapsed_seconds", "request_id"}
        fields = " ".join(f"{k}={v}" for k, v in self.data.items() if k not in skip)
        return f"{self.category}: {fields}"


def _parse_time(stamp: str) -> float:
    main, _, frac = stamp.rstrip("Z").partition(".")
    base = datetime.datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.UTC)
    return base.timestamp() + (float("0." + frac) if frac else 0.0)


def _category(path: Path) -> str:
    # <session>_<category>.jsonl, the session being YYYYmmdd_HHMMSS
    parts = path.stem.split("_", 2)
    return parts[2] if len(parts) == 3 else path.stem


def load(directory: Path, categories: Iterable[str] = ()) -> list[Entry]:
    """Every entry under ``directory`` (all sessions), oldest first."""
    if not directory.is_dir():
        raise ConfigError(str(directory), "", "not a directory of debug logs")
    wanted = set(categories)
    entries = []
    for path in sorted(directory.glob("*_*.jsonl")):
        category = _category(path)
        if wanted and category not in wanted:
            continue
        for line in path.read_text(errors="replace").splitlines():
            try:
                data = json.loads(line)
                entries.append(Entry(category, _parse_time(data["timestamp"]), data))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line of a live file
    entries.sort(key=lambda e: e.at)
    return entries


def summary(entries: list[Entry], slowest: int = 10) -> str:
    if not entries:
        return "no entries"
    counts = Counter(e.category for e in entries)
    sessions = sorted({str(e.data.get("session_id")) for e in entries})
    start = datetime.datetime.fromtimestamp(entries[0].at, datetime.UTC)
    end = datetime.datetime.fromtimestamp(entries[-1].at, datetime.UTC)
    out = [
        f"sessions: {', '.join(sessions)}",
        f"from {start:%Y-%m-%d %H:%M:%S} to "
        f"{end:%H:%M:%S} UTC ({entries[-1].at - entries[0].at:.1f}s)",
        "",
        "entries:",
    ]
    out += [f"  {category:20} {count}" for category, count in sorted(counts.items())]
    dropped = sum(int(e.data.get("entries_dropped", 0)) for e in entries if e.category == "session")
    out.append(f"  {'(dropped)':20} {dropped}")
    requests = [e for e in entries if e.category == "requests"]
    represented = sum(int(e.data.get("sample_weight") or 1) for e in requests) + sum(
        int(e.data.get("requests_unrecorded") or 0) for e in entries if e.category == "session"
    )
    if represented > len(requests):
        out.append(
            f"  {'(sampled)':20} {len(requests)} request lines stand for {represented} "
            "requests (ordinary ones sampled under load: sample_weight, and the last few in "
            "session_end's requests_unrecorded)"
        )
    if requests:
        out += ["", f"slowest requests (of {len(requests)}):"]
        for e in sorted(requests, key=lambda e: -float(e.data.get("duration_ms") or 0))[:slowest]:
            d = e.data
            out.append(
                f"  {d.get('duration_ms'):>10} ms  {d.get('status')}  "
                f"{d.get('method')} {d.get('path')}  backend={d.get('backend')}  "
                f"request_id={e.request_id}"
            )
    stress = [e for e in entries if e.category == "stress"]
    out += ["", "stress timeline:" if stress else "stress timeline: none"]
    for e in stress:
        out.append(
            f"  {datetime.datetime.fromtimestamp(e.at, datetime.UTC):%H:%M:%S.%f}  "
            f"{e.data.get('severity'):8} {e.data.get('event_type')}: "
            f"{e.data.get('description')}"
        )
    errors = Counter(str(e.data.get("error_type")) for e in entries if e.category == "errors")
    if errors:
        out += ["", "errors: " + ", ".join(f"{k} × {v}" for k, v in errors.most_common())]
    return "\n".join(out)


@dataclass(frozen=True, slots=True)
class Pair:
    a: Entry
    b: Entry
    by: str  # "request_id" or "time"

    def describe(self) -> str:
        delta = self.b.at - self.a.at
        stamp = datetime.datetime.fromtimestamp(self.a.at, datetime.UTC)
        key = f"request_id={self.a.request_id}" if self.by == "request_id" else "by time"
        return (
            f"{stamp:%H:%M:%S.%f} {key} (Δ {delta * 1000:+.1f} ms)\n"
            f"    A {self.a.describe()}\n    B {self.b.describe()}"
        )


def correlate(a: list[Entry], b: list[Entry], within: float) -> list[Pair]:
    """Pairs of entries of two systems: the same request id first; then, for what is left,
    the nearest entry of the other side within ``within`` seconds."""
    by_id: dict[str, list[Entry]] = {}
    for entry in b:
        if entry.request_id is not None:
            by_id.setdefault(entry.request_id, []).append(entry)
    pairs: list[Pair] = []
    used: set[int] = set()
    rest: list[Entry] = []
    for entry in a:
        matches = by_id.get(entry.request_id or "", [])
        if matches:
            for match in matches:
                pairs.append(Pair(entry, match, "request_id"))
                used.add(id(match))
        else:
            rest.append(entry)
    free = [e for e in b if id(e) not in used and e.category != "session"]
    times = [e.at for e in free]
    for entry in rest:
        if entry.category == "session" or not free:
            continue
        i = bisect.bisect_left(times, entry.at)
        near = [free[j] for j in (i - 1, i) if 0 <= j < len(free)]
        best = min(near, key=lambda e: abs(e.at - entry.at))
        if abs(best.at - entry.at) <= within:
            pairs.append(Pair(entry, best, "time"))
    pairs.sort(key=lambda p: p.a.at)
    return pairs


def follow(
    directory: Path,
    categories: Iterable[str],
    write: Callable[[str], None],
    stop: Callable[[], bool],
    interval: float = 0.2,
) -> None:
    """Print entries written from now on (what the files hold already is not repeated), until
    ``stop()`` says so. A file that appears later is read from its start."""
    seen = {path: path.stat().st_size for path in directory.glob("*_*.jsonl")}
    wanted = set(categories)
    while not stop():
        for line in _new_lines(directory, wanted, seen):
            write(line)
        time.sleep(interval)


def _new_lines(directory: Path, wanted: set[str], seen: dict[Path, int]) -> Iterator[str]:
    for path in sorted(directory.glob("*_*.jsonl")):
        if wanted and _category(path) not in wanted:
            continue
        with path.open("rb") as handle:
            handle.seek(seen.get(path, 0))
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        seen[path] = seen.get(path, 0) + len(complete)
        for raw in complete.decode(errors="replace").splitlines():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            yield Entry(_category(path), 0.0, entry).describe()
