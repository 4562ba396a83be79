"""Log events: one JSON object per line, secrets masked wherever they hide."""

from __future__ import annotations

import json
import logging

from proxyfleet.logs import JsonFormatter, TextFormatter, redact


def test_redact_masks_fields_and_tokens() -> None:
    data = {
        "authorization": "Bearer sk-abcdefgh12345678",
        "nested": {"Cookie": "sid=1", "note": "used Bearer abc.def-ghi then sk-live12345678xyz"},
        "list": [{"x-api-key": "k"}, "plain"],
        "count": 3,
    }
    out = redact(data)
    assert out["authorization"] == "[redacted]"
    assert out["nested"]["Cookie"] == "[redacted]"
    assert out["nested"]["note"] == "used Bearer [redacted] then sk-[redacted]"
    assert out["list"] == [{"x-api-key": "[redacted]"}, "plain"]
    assert out["count"] == 3


def test_formatters_write_one_event_per_line() -> None:
    record = logging.LogRecord("proxyfleet.x", logging.INFO, __file__, 1, "request", None, None)
    record.fields = {"status": 200, "api_key": "sk-secret-value-1"}
    line = JsonFormatter().format(record)
    event = json.loads(line)
    assert (event["event"], event["status"], event["api_key"]) == ("request", 200, "[redacted]")
    assert event["ts"].endswith("Z")
    text = TextFormatter().format(record)
    assert "status=200" in text
    assert "sk-secret" not in text
    assert "\n" not in line + text
