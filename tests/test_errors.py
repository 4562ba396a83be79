"""The one exception hierarchy: each client-facing error's status, OpenAI type, code and body;
the tree drawn in the module docstring is the real class tree; ConfigError's message."""

from __future__ import annotations

import inspect
import json
import re

import pytest

from proxyfleet import errors
from proxyfleet.errors import (
    BadRequest,
    ConfigError,
    GatewayError,
    LeaseTimeout,
    ListenError,
    ProvisionerError,
    ProxyfleetError,
    UpstreamError,
    UpstreamRefused,
)

_BRANCH = re.compile(r"^(?P<indent>[ │]*)(?P<branch>├── |└── )?(?P<name>[A-Z]\w+)\s+(?P<text>.*)$")


def _drawn_tree() -> dict[str, tuple[str | None, str]]:
    """``{class name: (parent name, its description)}`` from the docstring's drawing."""
    doc = errors.__doc__
    assert doc is not None
    drawing = doc.split("::", 1)[1].split("\n\n")[1]  # the indented block after '::'
    tree: dict[str, tuple[str | None, str]] = {}
    stack: list[str] = []
    for line in drawing.splitlines():
        line = line[4:]  # the literal block's own indent
        match = _BRANCH.match(line)
        assert match, f"cannot read the drawing's line {line!r}"
        depth = len(match["indent"]) // 4 + (1 if match["branch"] else 0)
        del stack[depth:]
        tree[match["name"]] = (stack[-1] if stack else None, match["text"])
        stack.append(match["name"])
    return tree


def _classes() -> dict[str, type[ProxyfleetError]]:
    return {
        name: cls
        for name, cls in vars(errors).items()
        if inspect.isclass(cls)
        and issubclass(cls, ProxyfleetError)
        and cls.__module__ == errors.__name__
    }


def test_the_drawing_names_every_class_and_nothing_else() -> None:
    tree = _drawn_tree()
    assert set(tree) == set(_classes())
    assert set(tree) == set(errors.__all__)
    assert tree["ProxyfleetError"][0] is None  # the root


def test_every_class_sits_where_the_drawing_puts_it() -> None:
    tree = _drawn_tree()
    classes = _classes()
    for name, (parent, _) in tree.items():
        cls = classes[name]
        if parent is None:
            assert cls.__bases__ == (Exception,)
            continue
        assert cls.__bases__ == (classes[parent],), f"{name} should derive from {parent}"
        assert classes[parent] in cls.__mro__
    for name, cls in classes.items():  # and every drawn child is a real direct subclass
        drawn = {child for child, (parent, _) in tree.items() if parent == name}
        real = {sub.__name__ for sub in cls.__subclasses__() if sub.__module__ == errors.__name__}
        assert drawn == real, name


def test_statuses_written_in_the_drawing_are_the_classes_statuses() -> None:
    classes = _classes()
    checked = 0
    for name, (_, text) in _drawn_tree().items():
        status = re.match(r"(\d{3})\b", text)
        if status:
            cls = classes[name]
            assert issubclass(cls, GatewayError)
            assert cls.status == int(status[1]), name
            checked += 1
            words = text.split()
            if len(words) > 1 and words[1].endswith(("_error", "_key")):
                assert words[1] in (cls.error_type, cls.code), name
    assert checked >= 8


def _gateway_errors() -> list[type[GatewayError]]:
    return [cls for cls in _classes().values() if issubclass(cls, GatewayError)]


# status, OpenAI error type, code: the README's error table
EXPECTED = {
    "GatewayError": (500, "server_error", "internal_error"),
    "BadRequest": (400, "invalid_request_error", "invalid_request"),
    "PayloadTooLarge": (413, "invalid_request_error", "payload_too_large"),
    "UpgradeRequired": (426, "invalid_request_error", "websocket_required"),
    "Unauthorized": (401, "invalid_request_error", "invalid_api_key"),
    "NotFound": (404, "invalid_request_error", "not_found"),
    "Overloaded": (503, "server_error", "too_many_sessions"),
    "SessionLimit": (503, "server_error", "too_many_sessions"),
    "PoolError": (503, "server_error", "pool_unavailable"),
    "LeaseTimeout": (503, "server_error", "lease_timeout"),
    "QueueFull": (503, "server_error", "queue_full"),
    "NoHealthyBackend": (503, "server_error", "no_healthy_backend"),
    "PoolClosed": (503, "server_error", "shutting_down"),
    "ProvisioningBlocked": (503, "server_error", "provisioning_blocked"),
    "ProvisioningFailed": (503, "server_error", "provisioning_failed"),
    "StoreUnavailable": (503, "server_error", "store_unavailable"),
    "ProvisioningUnauthorized": (503, "server_error", "provisioning_unauthorized"),
    "UpstreamError": (502, "server_error", "upstream_error"),
    "UpstreamTimeout": (504, "server_error", "upstream_timeout"),
    "UpstreamClosed": (502, "server_error", "upstream_error"),
    "UpstreamProtocolError": (502, "server_error", "upstream_error"),
    "UpstreamRefused": (502, "server_error", "upstream_error"),
    "SpawnFailed": (502, "server_error", "upstream_unavailable"),
}


def test_every_gateway_error_is_in_the_table() -> None:
    assert {cls.__name__ for cls in _gateway_errors()} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_status_type_code_and_body(name: str) -> None:
    cls = getattr(errors, name)
    status, error_type, code = EXPECTED[name]
    error = cls("went wrong", 418) if cls is UpstreamRefused else cls("went wrong")
    assert (error.status, error.error_type, error.code) == (status, error_type, code)
    assert error.message == "went wrong"
    assert str(error) == "went wrong"
    assert error.retry_after is None
    body = error.body()
    assert body == {"error": {"message": "went wrong", "type": error_type, "code": code}}
    assert json.loads(json.dumps(body)) == body  # plain JSON, as sent to clients
    assert isinstance(error, ProxyfleetError)


def test_code_and_retry_after_are_per_instance() -> None:
    special = LeaseTimeout("wait", code="custom_code", retry_after=2.5)
    assert special.code == "custom_code"
    assert special.retry_after == 2.5
    assert special.body()["error"]["code"] == "custom_code"
    assert LeaseTimeout("plain").code == "lease_timeout"  # the class keeps its own code
    assert LeaseTimeout.code == "lease_timeout"


def test_upstream_refused_keeps_the_upstream_status() -> None:
    refused = UpstreamRefused("the upstream refused the WebSocket with 403", 403)
    assert refused.upstream_status == 403
    assert refused.status == 502  # what the client gets: the gateway's own failure
    assert isinstance(refused, UpstreamError)
    assert refused.body()["error"]["message"] == "the upstream refused the WebSocket with 403"
    with pytest.raises(UpstreamError) as caught:
        raise refused
    assert caught.value.upstream_status == 403  # type: ignore[attr-defined]


def test_config_error_names_source_field_and_reason() -> None:
    error = ConfigError("proxyfleet.yaml", "pool.selection", "Input should be 'lru'")
    assert str(error) == "proxyfleet.yaml: pool.selection: Input should be 'lru'"
    assert (error.source, error.field, error.reason) == (
        "proxyfleet.yaml",
        "pool.selection",
        "Input should be 'lru'",
    )
    assert str(ConfigError("flag --within", "", "a duration")) == "flag --within: a duration"
    assert ConfigError.exit_code == 2
    assert ListenError.exit_code == 1
    assert not issubclass(ConfigError, GatewayError)  # never sent to a client


def test_provisioner_error_defaults_and_fields() -> None:
    plain = ProvisionerError("orchestrator unreachable")
    assert (plain.code, plain.retryable, plain.eta) == ("provisioner_error", True, None)
    refused = ProvisionerError("wrong key", code="unauthorized", retryable=False, eta=4.0)
    assert (refused.message, refused.code, refused.retryable, refused.eta) == (
        "wrong key",
        "unauthorized",
        False,
        4.0,
    )
    assert str(refused) == "wrong key"


def test_a_refused_key_is_a_provisioner_error_retrying_cannot_fix() -> None:
    refused = errors.ProvisionerAuthError("the orchestrator refused its key", status=403)
    assert isinstance(refused, ProvisionerError)
    assert (refused.code, refused.retryable, refused.eta, refused.status) == (
        "unauthorized",
        False,
        None,
        403,
    )
    # what a client gets meanwhile: no Retry-After, as a retry will not help
    client = errors.ProvisioningUnauthorized("provisioning is refused")
    assert isinstance(client, errors.PoolError)
    assert client.retry_after is None


def test_invalid_message_carries_a_json_rpc_code() -> None:
    assert errors.InvalidMessage("not an object").code == -32600
    assert errors.InvalidMessage("bad json", -32700).code == -32700


def test_subclasses_are_caught_as_their_parents() -> None:
    with pytest.raises(BadRequest):
        raise errors.PayloadTooLarge("too big")
    with pytest.raises(errors.PoolError):
        raise errors.ProvisioningBlocked("vpn down", retry_after=30)
    with pytest.raises(errors.Overloaded):
        raise errors.SessionLimit("too many sessions")
