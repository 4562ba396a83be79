"""Reading debug logs: load, summarise, correlate two systems, tail. Pure over the entries,
except :func:`read` (:func:`load`) and :func:`follow`, which read files.

Any JSONL is read: a file given by its path whatever its name, or the ``.jsonl`` files of a
directory (ours are ``<session>_<category>.jsonl``; another system's may be called anything).
A line is an entry when it is a JSON object with a ``timestamp`` (or ``ts``, ``time``,
``@timestamp``) in any RFC 3339 form: ``Z`` or an offset (``+00:00`` as Python's
``isoformat()`` writes it), with or without a fraction of a second. What is left out is said,
with why (:attr:`Loaded.skipped`); only a last line still being written is left out quietly.
"""

from __future__ import annotations

import datetime
import heapq
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxyfleet.errors import ConfigError

__all__ = ["Entry", "Loaded", "correlate", "follow", "load", "parse_time", "read", "summary"]

_TIME_KEYS = ("timestamp", "ts", "time", "@timestamp")
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(\.\d+)?(?:([Zz])|([+-])(\d\d):(\d\d))"
)
_SESSION_FILE = re.compile(r"\d{8}_\d{6}_(.+)")  # <YYYYmmdd_HHMMSS>_<category>


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
        skip = {"session_id", "elapsed_seconds", "request_id", *_TIME_KEYS}
        fields = " ".join(f"{k}={v}" for k, v in self.data.items() if k not in skip)
        return f"{self.category}: {fields}"


def parse_time(stamp: object) -> float | None:
    """Unix seconds from an RFC 3339 timestamp (any offset, any fraction), else None."""
    match = _RFC3339.fullmatch(stamp) if isinstance(stamp, str) else None
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    fraction, zulu, sign, off_hours, off_minutes = match.groups()[6:]
    leap = second == 60  # 23:59:60: the second after :59
    try:
        base = datetime.datetime(
            year, month, day, hour, minute, 59 if leap else second, tzinfo=datetime.UTC
        )
    except ValueError:
        return None
    offset = 0
    if not zulu:
        if int(off_hours) > 23 or int(off_minutes) > 59:
            return None
        offset = (1 if sign == "+" else -1) * (int(off_hours) * 3600 + int(off_minutes) * 60)
    return base.timestamp() + leap - offset + (float("0" + fraction) if fraction else 0.0)


def _category(path: Path) -> str:
    """``<session>_<category>.jsonl`` names its category; any other file is its own."""
    match = _SESSION_FILE.fullmatch(path.stem)
    return match[1] if match else path.stem


def _paths(path: Path) -> list[Path]:
    """The files to read: ``path`` itself, or a directory's ``.jsonl`` files."""
    return [path] if path.is_file() else sorted(path.glob("*.jsonl"))


@dataclass(slots=True)
class Loaded:
    """What :func:`read` found: the entries, oldest first, and what it left out and why."""

    entries: list[Entry] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def read(path: Path, categories: Iterable[str] = ()) -> Loaded:
    """Every entry in ``path`` (a JSONL file, or a directory of them: every session), oldest
    first, and a note for everything left out."""
    loaded = Loaded()
    if path.is_dir():
        for child in sorted(path.iterdir()):
            if child.name.startswith("."):
                continue
            if child.is_dir():
                loaded.skipped.append(f"{child}: a directory (not read: give its path)")
            elif child.suffix != ".jsonl":
                loaded.skipped.append(
                    f"{child}: not a .jsonl file (give its path to read it anyway)"
                )
    elif not path.is_file():
        raise ConfigError(str(path), "", "no such file or directory")
    wanted = set(categories)
    for file in _paths(path):
        category = _category(file)
        if not wanted or category in wanted:
            _read_file(file, category, loaded)
    loaded.entries.sort(key=lambda e: e.at)
    return loaded


def load(path: Path, categories: Iterable[str] = ()) -> list[Entry]:
    """Every entry under ``path`` (see :func:`read`), oldest first."""
    return read(path, categories).entries


def _read_file(path: Path, category: str, loaded: Loaded) -> None:
    lines = path.read_text(errors="replace").split("\n")
    last = len(lines)  # the text after the last newline: empty, or a line being written
    problems: dict[str, list[int]] = {}
    example: object = None
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except ValueError:
            if number != last:
                problems.setdefault("that is not JSON", []).append(number)
            continue
        if not isinstance(data, dict):
            problems.setdefault("that is not a JSON object", []).append(number)
            continue
        key = next((k for k in _TIME_KEYS if k in data), None)
        at = None if key is None else parse_time(data[key])
        if at is not None:
            loaded.entries.append(Entry(category, at, data))
        elif key is None:
            problems.setdefault("without a timestamp", []).append(number)
        else:
            if "whose timestamp is not RFC 3339" not in problems:
                example = data[key]
            problems.setdefault("whose timestamp is not RFC 3339", []).append(number)
    for what, numbers in problems.items():
        count = len(numbers)
        shown = ", ".join(str(n) for n in numbers[:5]) + (", …" if count > 5 else "")
        eg = f", e.g. {example!r}" if what.endswith("RFC 3339") else ""
        loaded.skipped.append(
            f"{path}: {count} line{'s' if count > 1 else ''} {what}{eg} "
            f"({'lines' if count > 1 else 'line'} {shown})"
        )


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
    """Pairs of entries of two systems, one to one, the nearest in time first: entries sharing
    a request id, however far apart; then, among the rest, entries within ``within`` seconds.
    An entry whose request id the other side has too pairs by that id or not at all; session
    lines never pair by time."""
    shared = ({e.request_id for e in a} & {e.request_id for e in b}) - {None}
    pairs: list[Pair] = []
    for rid in shared:
        mine = [e for e in a if e.request_id == rid]
        theirs = [e for e in b if e.request_id == rid]
        pairs += [Pair(x, y, "request_id") for x, y in _nearest_first(mine, theirs, None)]
    rest_a, rest_b = (
        [e for e in side if e.request_id not in shared and e.category != "session"]
        for side in (a, b)
    )
    pairs += [Pair(x, y, "time") for x, y in _nearest_first(rest_a, rest_b, within)]
    pairs.sort(key=lambda p: (p.a.at, p.b.at))
    return pairs


def _nearest_first(
    a: list[Entry], b: list[Entry], within: float | None
) -> list[tuple[Entry, Entry]]:
    """Pair the entries of ``a`` and ``b`` one to one, greedily: the two unpaired ones (one of
    each side) nearest in time first, the earlier on a tie, while at most ``within`` apart
    (None: any distance). The nearest two are always neighbours in time order, so only
    neighbours are weighed; when two are paired, their neighbours become neighbours."""
    points = sorted([(e.at, 0, e) for e in a] + [(e.at, 1, e) for e in b], key=lambda p: p[:2])
    n = len(points)
    left, right = list(range(-1, n - 1)), list(range(1, n + 1))
    alive = [True] * n
    heap: list[tuple[float, float, int, int]] = []

    def weigh(i: int, j: int) -> None:
        if i >= 0 and j < n and points[i][1] != points[j][1]:
            gap = points[j][0] - points[i][0]
            if within is None or gap <= within:
                heapq.heappush(heap, (gap, points[i][0], i, j))

    for i in range(n - 1):
        weigh(i, i + 1)
    found = []
    while heap:
        _, _, i, j = heapq.heappop(heap)
        if not (alive[i] and alive[j]):
            continue
        alive[i] = alive[j] = False
        before, after = left[i], right[j]
        if before >= 0:
            right[before] = after
        if after < n:
            left[after] = before
        weigh(before, after)
        first, second = points[i], points[j]
        found.append((first[2], second[2]) if first[1] == 0 else (second[2], first[2]))
    return found


def follow(
    directory: Path,
    categories: Iterable[str],
    write: Callable[[str], None],
    stop: Callable[[], bool],
    interval: float = 0.2,
) -> None:
    """Print entries written from now on (what the files hold already is not repeated), until
    ``stop()`` says so. A file that appears later is read from its start."""
    seen = {path: path.stat().st_size for path in _paths(directory)}
    wanted = set(categories)
    while not stop():
        for line in _new_lines(directory, wanted, seen):
            write(line)
        time.sleep(interval)


def _new_lines(directory: Path, wanted: set[str], seen: dict[Path, int]) -> Iterator[str]:
    for path in _paths(directory):
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
