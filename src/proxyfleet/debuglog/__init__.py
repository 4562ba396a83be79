"""Debug mode: per-category JSONL files that explain what happened under stress.

The gateway records through :class:`DebugRecorder` (categories, stress detection) and
:class:`RequestLog` (one call per finished request); rows go to an encoder process through
:class:`DebugLog` (the writer); :mod:`.reader` summarises, tails and correlates the files.
"""

from proxyfleet.debuglog.recorder import DebugRecorder
from proxyfleet.debuglog.requests import RequestLog
from proxyfleet.debuglog.writer import DebugLog

__all__ = ["DebugLog", "DebugRecorder", "RequestLog"]
