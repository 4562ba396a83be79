"""Client authentication: keys kept as digests, both header forms, identities for limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxyfleet.errors import ConfigError, Unauthorized
from proxyfleet.gateway.auth import ClientAuth, load_keys


def scope(*headers: tuple[bytes, bytes], client: tuple[str, int] = ("10.0.0.7", 1)) -> dict:  # type: ignore[type-arg]
    return {"headers": list(headers), "client": client}


def test_keys_file_comments_blank_lines_and_digests(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# team\n\nalpha-key\n  beta-key  \n")
    keys = load_keys(path)
    assert len(keys) == 2
    assert "alpha-key" not in "".join(keys)  # only digests are kept


@pytest.mark.parametrize(
    ("content", "reason"), [("# only comments\n", "holds no key"), (b"\xff\xfe", "cannot read")]
)
def test_a_bad_keys_file_names_the_field(tmp_path: Path, content: str | bytes, reason: str) -> None:
    path = tmp_path / "keys"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=reason) as info:
        load_keys(path)
    assert info.value.source == "server.auth_keys_file"
    with pytest.raises(ConfigError, match="cannot read"):
        load_keys(tmp_path / "missing")


def test_authorize_takes_bearer_or_x_api_key(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("k-1\n")
    auth = ClientAuth.from_file(path)
    assert auth.enabled
    auth.authorize(scope((b"authorization", b"Bearer k-1")))
    auth.authorize(scope((b"x-api-key", b"k-1")))
    with pytest.raises(Unauthorized, match="missing API key"):
        auth.authorize(scope())
    with pytest.raises(Unauthorized, match="invalid API key"):
        auth.authorize(scope((b"authorization", b"Bearer k-2")))


def test_without_keys_everyone_is_in_and_known_by_address() -> None:
    auth = ClientAuth.from_file(None)
    assert not auth.enabled
    auth.authorize(scope())
    assert auth.identity(scope((b"authorization", b"Bearer x"))) == "10.0.0.7"
    assert auth.identity({"headers": [], "client": None}) == "unknown"


def test_with_keys_a_client_is_known_by_a_digest_of_its_key(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("k-1\n")
    auth = ClientAuth.from_file(path)
    who = auth.identity(scope((b"x-api-key", b"k-1")))
    assert who.startswith("key-")
    assert "k-1" not in who
    assert who == auth.identity(scope((b"authorization", b"Bearer k-1"), client=("1.1.1.1", 2)))
