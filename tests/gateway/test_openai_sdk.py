"""The real openai SDK through a pool of 3 credential files, streaming and not."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from proxyfleet.mock.server import credential_label
from tests.conftest import Processes, write_keys

REPLY = "mock mock mock mock "  # 5 chunks of 4 characters
KEYS = {"alice": "sk-test-alice-0001", "bob": "sk-test-bob-0002", "carol": "sk-test-carol-0003"}


@pytest.fixture
def sdk() -> Iterator[Callable[[str], openai.OpenAI]]:
    clients: list[openai.OpenAI] = []

    def make(url: str) -> openai.OpenAI:
        clients.append(openai.OpenAI(base_url=url, api_key="client-key", max_retries=0))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def pool3(procs: Processes, tmp_path: Path):  # type: ignore[no-untyped-def]
    mock = procs.mock("--chunks", "5", "--chunk-size", "4")
    creds = write_keys(tmp_path / "accounts", KEYS)
    gateway = procs.gateway("--credentials-dir", str(creds), "--upstream", mock.url)
    return mock, gateway


def test_chat_completion_non_streaming(pool3, sdk) -> None:  # type: ignore[no-untyped-def]
    _mock, gateway = pool3
    client = sdk(gateway.url)
    answer = client.chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == REPLY
    labels = {credential_label(f"Bearer {k}") for k in KEYS.values()}
    assert answer.system_fingerprint in labels  # the mock saw one of our three credentials


def test_chat_completion_streaming(pool3, sdk) -> None:  # type: ignore[no-untyped-def]
    _, gateway = pool3
    client = sdk(gateway.url)
    stream = client.chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == REPLY
    assert len([p for p in pieces if p]) == 5


def test_responses_non_streaming_and_streaming(pool3, sdk) -> None:  # type: ignore[no-untyped-def]
    _, gateway = pool3
    client = sdk(gateway.url)
    response = client.responses.create(model="mock-gpt", input="hi")
    assert response.output_text == REPLY
    with client.responses.stream(model="mock-gpt", input="hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == REPLY
    assert final.output_text == REPLY


def test_models_and_passthrough(pool3, sdk) -> None:  # type: ignore[no-untyped-def]
    _mock, gateway = pool3
    client = sdk(gateway.url)
    assert [m.id for m in client.models.list()] == ["mock-gpt", "mock-gpt-mini"]
    echoed = client.get("/files/abc?purpose=x", cast_to=object)
    assert echoed == {
        "method": "GET",
        "path": "/v1/files/abc",
        "query": "purpose=x",
        "body_bytes": 0,
        "mock": "mock",
    }


def test_request_id_round_trips(pool3, sdk) -> None:  # type: ignore[no-untyped-def]
    mock, gateway = pool3
    client = sdk(gateway.url)
    raw = client.chat.completions.with_raw_response.create(
        model="mock-gpt",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-Request-ID": "my-trace-42"},
    )
    assert raw.headers["x-request-id"] == "my-trace-42"
    seen = mock.get_json("/mock/stats")["recent"]
    assert any(r["request_id"] == "my-trace-42" for r in seen)
    generated = client.chat.completions.with_raw_response.create(
        model="mock-gpt", messages=[{"role": "user", "content": "hi"}]
    )
    assert len(generated.headers["x-request-id"]) == 32
