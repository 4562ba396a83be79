"""Parsing the orchestrator's answers (the acestream-orchestrator API shapes)."""

from __future__ import annotations

import pytest

from proxyfleet.errors import ProvisionerAuthError, ProvisionerError
from proxyfleet.orchestrator.api import (
    parse_command_output,
    parse_engines,
    parse_provisioned,
    parse_refusal,
    parse_status,
)


def test_provisioned_engine_becomes_a_backend_url() -> None:
    engine = parse_provisioned(
        {"container_id": "abc", "host_http_port": 19023, "container_http_port": 40117},
        "127.0.0.1",
        "/v1",
    )
    assert (engine.id, engine.url) == ("abc", "http://127.0.0.1:19023/v1")
    assert parse_provisioned({"container_id": "x", "host_http_port": 1}, "::1", "").url == (
        "http://[::1]:1"
    )


@pytest.mark.parametrize(
    "answer", [{}, {"container_id": "a"}, {"container_id": "a", "host_http_port": "80"}, []]
)
def test_a_provisioning_answer_without_id_or_port_is_an_error(answer: object) -> None:
    with pytest.raises(ProvisionerError, match=r"container_id|port"):
        parse_provisioned(answer, "127.0.0.1", "/v1")


def test_structured_refusal_keeps_code_eta_and_waitability() -> None:
    error = parse_refusal(
        503,
        {
            "detail": {
                "error": "provisioning_blocked",
                "code": "vpn_disconnected",
                "message": "VPN is disconnected",
                "recovery_eta_seconds": 60,
                "can_retry": True,
                "should_wait": True,
            }
        },
    )
    assert (error.code, error.eta, error.retryable) == ("vpn_disconnected", 60.0, True)
    assert "VPN is disconnected" in error.message
    refused = parse_refusal(
        400, {"detail": {"code": "bad_image", "can_retry": False, "should_wait": False}}
    )
    assert not refused.retryable


@pytest.mark.parametrize(
    ("status", "detail", "code", "retryable"),
    [
        (503, "VPN disconnected", "vpn_disconnected", True),
        (503, "Circuit breaker is open", "circuit_breaker", True),
        (503, "At max capacity", "max_capacity", True),
        (500, "Some other error", "general_error", True),
        (401, "invalid API key", "unauthorized", False),
        (403, "invalid token", "unauthorized", False),
    ],
)
def test_legacy_refusals(status: int, detail: str, code: str, retryable: bool) -> None:
    error = parse_refusal(status, {"detail": detail})
    assert (error.code, error.retryable) == (code, retryable)
    assert str(status) in error.message


def test_status_with_blocked_details() -> None:
    status = parse_status(
        {
            "status": "degraded",
            "provisioning": {
                "can_provision": False,
                "blocked_reason": "Circuit breaker is open",
                "blocked_reason_details": {
                    "code": "circuit_breaker",
                    "recovery_eta_seconds": 180,
                    "should_wait": True,
                },
            },
            "engines": {"total": 3},
            "streams": {"active": 2},
        }
    )
    assert status.status == "degraded"
    assert not status.can_provision
    assert (status.code, status.recovery_eta_seconds, status.should_wait) == (
        "circuit_breaker",
        180.0,
        True,
    )
    assert (status.engines, status.streams) == (3, 2)
    assert parse_status({"status": "healthy"}).can_provision
    with pytest.raises(ProvisionerError):
        parse_status(["not", "an", "object"])


def test_engine_list_skips_unusable_entries() -> None:
    engines = parse_engines(
        [
            {"container_id": "a", "port": 19001},
            {"container_id": "b", "port": 19002, "health_status": "unhealthy"},
            {"container_id": "c"},
            "junk",
        ],
        "127.0.0.1",
        "/v1",
    )
    assert [e.id for e in engines] == ["a"]


def test_command_output_must_name_an_allowed_host() -> None:
    out = b'starting...\n{"id": "w1", "url": "http://127.0.0.1:9001/v1/"}\n'
    engine = parse_command_output(out, ("127.0.0.1",))
    assert (engine.id, engine.url) == ("w1", "http://127.0.0.1:9001/v1")
    with pytest.raises(ProvisionerError, match="allowed_hosts") as info:
        parse_command_output(b'{"url": "http://10.1.2.3:80"}', ("127.0.0.1",))
    assert not info.value.retryable
    with pytest.raises(ProvisionerError, match="no JSON"):
        parse_command_output(b"", ("127.0.0.1",))
    with pytest.raises(ProvisionerError, match="must print"):
        parse_command_output(b'{"id": "x"}', ("127.0.0.1",))


def test_a_422_keeps_the_orchestrators_reason_for_each_field() -> None:
    detail = [
        {
            "type": "literal_error",
            "loc": ["body", "stream", "key_type"],
            "msg": "Input should be 'content_id', 'infohash', 'url' or 'magnet'",
            "input": "request_id",
        },
        {"type": "missing", "loc": ["body", "session", "stat_url"], "msg": "Field required"},
        {"type": "json_invalid", "loc": ["body", 0], "msg": "JSON decode error"},
        "junk",
    ]
    error = parse_refusal(422, {"detail": detail})
    assert error.message == (
        "orchestrator refused (422): stream.key_type: Input should be 'content_id', "
        "'infohash', 'url' or 'magnet' (got 'request_id'); session.stat_url: Field required; "
        "body: JSON decode error"
    )
    assert (error.code, error.retryable) == ("invalid_request", False)  # the same again fails


@pytest.mark.parametrize(
    ("status", "detail", "retryable", "eta"),
    [
        # its own breaker open: wait for the ETA, do not retry (what it sends while open)
        (
            503,
            {
                "error": "provisioning_blocked",
                "code": "circuit_breaker",
                "message": "Circuit breaker is open due to repeated failures",
                "recovery_eta_seconds": 300,
                "can_retry": False,
                "should_wait": True,
            },
            False,
            300.0,
        ),
        # half-open: one may try
        (503, {"code": "circuit_breaker", "recovery_eta_seconds": 0, "can_retry": True}, True, 0.0),
        # a general failure: neither retry nor wait
        (
            500,
            {
                "error": "provisioning_failed",
                "code": "general_error",
                "message": "Failed to provision engine: boom",
                "recovery_eta_seconds": None,
                "can_retry": False,
                "should_wait": False,
            },
            False,
            None,
        ),
        (503, {"code": "vpn_error", "recovery_eta_seconds": 60, "can_retry": True}, True, 60.0),
        (503, {"code": "something"}, True, None),  # it did not say: a 5xx may pass
        (409, {"code": "something"}, False, None),  # a 4xx will not
    ],
)
def test_can_retry_decides_and_should_wait_keeps_the_eta(
    status: int, detail: dict[str, object], retryable: bool, eta: float | None
) -> None:
    error = parse_refusal(status, {"detail": detail})
    assert (error.retryable, error.eta) == (retryable, eta)


@pytest.mark.parametrize(
    ("status", "detail"), [(401, "missing bearer token"), (403, "invalid token")]
)
def test_a_refused_key_is_its_own_error(status: int, detail: str) -> None:
    error = parse_refusal(status, {"detail": detail})
    assert isinstance(error, ProvisionerAuthError)
    assert (error.status, error.code, error.retryable) == (status, "unauthorized", False)
    assert "pool.provisioner.api_key" in error.message
    assert f"{status} {detail}" in error.message
