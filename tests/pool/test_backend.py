"""What a backend is: specs keep their secrets out of repr and admin output, members carry
nothing secret, public URLs, and which cookies apply to a URL."""

from __future__ import annotations

import json

from proxyfleet.pool import BackendSpec, BackendState, Cookie, Member
from proxyfleet.pool.backend import cookie_header, public_url


def test_public_url_drops_user_info_and_query() -> None:
    assert public_url("https://user:pw@api.example.com:8443/v1?key=s") == (
        "https://api.example.com:8443/v1"
    )
    assert public_url("http://[::1]:9/v1") == "http://[::1]:9/v1"


def test_a_spec_hides_its_credentials_and_its_member_is_secret_free() -> None:
    spec = BackendSpec(
        "acct",
        "https://u:pw@api.example.com/v1",
        (("Authorization", "Bearer sk-secret-1"),),
        2,
        "accounts/acct.key",
        cookies=(Cookie("sid", "cookie-secret", "api.example.com"),),
    )
    shown = repr(spec) + json.dumps(spec.describe()) + repr(spec.member)
    for secret in ("sk-secret-1", "cookie-secret", "pw"):
        assert secret not in shown
    assert spec.describe()["credential_headers"] == ["authorization", "cookie"]
    assert spec.member == Member("acct", 2, "http", "https://api.example.com/v1")


def test_a_member_from_elsewhere_becomes_a_credential_free_spec() -> None:
    spec = BackendSpec.of_member(Member("engine-7", 3, "http", "http://10.0.0.5:9001/v1"), "store")
    assert (spec.id, spec.base_url, spec.headers, spec.max_concurrency, spec.source) == (
        "engine-7",
        "http://10.0.0.5:9001/v1",
        (),
        3,
        "store",
    )


def test_which_states_can_serve() -> None:
    assert {s for s in BackendState if s.usable} == {
        BackendState.IDLE,
        BackendState.BUSY,
        BackendState.HALF_OPEN,
    }
    assert json.dumps({"state": BackendState.HALF_OPEN}) == '{"state": "half_open"}'


def test_cookies_by_domain_path_secure_and_expiry() -> None:
    cookies = (
        Cookie("sid", "1", ".example.com"),
        Cookie("api", "2", "chat.example.com", "/api"),
        Cookie("deep", "3", "example.com", "/admin"),
        Cookie("old", "4", "example.com", expires=100.0),
        Cookie("later", "5", "example.com", expires=5000.0),
        Cookie("tls", "6", "example.com", secure=True),
        Cookie("other", "7", "other.org"),
    )
    value, until = cookie_header(cookies, "http://chat.example.com/api/v1", now=1000.0)
    assert value == "sid=1; api=2; later=5"
    assert until == 5000.0  # when the header must be worked out again
    value, until = cookie_header(cookies, "https://chat.example.com/api/v1", now=6000.0)
    assert value == "sid=1; api=2; tls=6"
    assert until == float("inf")
