"""Credentials directory: one backend per file; every bad file refused with its name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxyfleet.config import load_config, resolve_backends
from proxyfleet.errors import ConfigError
from proxyfleet.pool.backend import cookie_header

UPSTREAM = "https://chat.example.com/api/v1"


def _backends(directory: Path, upstream: str | None = UPSTREAM):  # type: ignore[no-untyped-def]
    overrides: dict[str, tuple[object, str]] = {"pool.credentials_dir": (directory, "flag")}
    if upstream:
        overrides["pool.upstreams"] = ([upstream], "flag --upstream")
    return resolve_backends(load_config(None, overrides=overrides))


def test_three_kinds_of_file(tmp_path: Path) -> None:
    (tmp_path / "a.key").write_text("sk-alpha\n")
    state = {
        "cookies": [
            {"name": "sid", "value": "s1", "domain": ".example.com", "path": "/"},
            {"name": "api", "value": "s2", "domain": "chat.example.com", "path": "/api"},
            {"name": "other", "value": "x", "domain": "other.org", "path": "/"},
            {"name": "old", "value": "x", "domain": "example.com", "path": "/", "expires": 1},
            {"name": "deep", "value": "x", "domain": "example.com", "path": "/admin"},
        ],
        "origins": [],
    }
    (tmp_path / "b.json").write_text(json.dumps(state))
    (tmp_path / "c.json").write_text(
        json.dumps({"headers": {"X-Token": "t"}, "upstream": "http://127.0.0.1:9/v1"})
    )
    (tmp_path / ".hidden").write_text("ignored")
    a, b, c = _backends(tmp_path)
    assert (a.id, a.base_url, a.headers) == ("a", UPSTREAM, (("Authorization", "Bearer sk-alpha"),))
    assert b.headers == ()  # a storage state keeps its cookies: the transport picks them
    assert cookie_header(b.cookies, b.base_url, 1000.0)[0] == "sid=s1; api=s2"
    assert "s1" not in repr(b)
    assert b.describe()["credential_headers"] == ["cookie"]
    assert (c.base_url, c.headers) == ("http://127.0.0.1:9/v1", (("X-Token", "t"),))
    assert "sk-alpha" not in repr(a)
    assert "sk-alpha" not in json.dumps(a.describe())


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        ({}, "is empty"),
        ({"a.key": ""}, "exactly one API key"),
        ({"a.key": "two words"}, "exactly one API key"),
        ({"a.json": "{not json"}, "invalid JSON"),
        ({"a.json": "[1]"}, "JSON object"),
        ({"a.json": '{"foo": 1}'}, "neither a Playwright storage state"),
        ({"a.json": '{"cookies": [{"name": "x"}]}'}, "list of {name, value, domain"),
        (
            {"a.json": '{"cookies": [{"name": "x", "value": "v", "domain": "elsewhere.org"}]}'},
            "no unexpired cookie matches",
        ),
        ({"a.json": '{"headers": {"X": 1}}'}, "string values"),
        ({"a.json": '{"headers": {}, "upstream": "ftp://x"}'}, "http:// or https://"),
        ({"a.json": '{"headers": {}, "extra": 1}'}, "unknown key"),
        ({"a.txt": "sk-x"}, "not a credential file"),
        ({"a.json": '{"headers": {"X-A": "v\\r\\nInjected: 1"}}'}, "control characters"),
        ({"a.json": '{"headers": {"Bad Name": "v"}}'}, "not a valid header name"),
    ],
)
def test_bad_directory_contents(tmp_path: Path, files: dict[str, str], needle: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as info:
        _backends(tmp_path)
    assert needle in str(info.value)
    if files:
        assert str(tmp_path / next(iter(files))) in str(info.value)


def test_missing_dir_and_missing_upstream(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        _backends(tmp_path / "nope")
    (tmp_path / "a.key").write_text("sk-1")
    with pytest.raises(ConfigError, match="no upstream for this credential"):
        _backends(tmp_path, upstream=None)


def test_empty_pool_and_duplicates(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no backends"):
        resolve_backends(load_config(None))
    (tmp_path / "a.key").write_text("sk-1")
    config = load_config(
        None,
        overrides={
            "pool.credentials_dir": (tmp_path, "flag"),
            "pool.backends": ([{"id": "a", "api_key": "sk-2"}], "flag"),
            "upstream.base_url": ("http://127.0.0.1:1/v1", "flag"),
        },
    )
    with pytest.raises(ConfigError, match="duplicate backend id 'a'"):
        resolve_backends(config)


def test_keyless_upstreams_get_distinct_ids() -> None:
    config = load_config(
        None,
        env={"PROXYFLEET_POOL__UPSTREAMS": "[http://127.0.0.1:9001/v1, http://127.0.0.1:9001/v2]"},
    )
    assert [b.id for b in resolve_backends(config)] == ["127.0.0.1:9001", "127.0.0.1:9001#2"]
