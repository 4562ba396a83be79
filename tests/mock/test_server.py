"""The mock upstream over real sockets: answers, faults set at runtime, counters."""

from __future__ import annotations

import json

import aiohttp

from tests.conftest import Processes


async def test_faults_and_counters(procs: Processes) -> None:
    mock = procs.mock("--name", "m1")
    root = mock.root
    headers = {"Authorization": "Bearer sk-one"}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            root + "/mock/faults", json={"fail_rate": 1.0, "fail_status": 429}
        ) as r:
            assert (await r.json())["fail_status"] == 429
        async with session.post(root + "/v1/chat/completions", json={}, headers=headers) as r:
            assert r.status == 429
            assert (await r.json())["error"]["code"] == "mock_failure"
        async with session.post(root + "/mock/faults", json={"no_such": 1}) as r:
            assert r.status == 400
            assert "no_such" in (await r.json())["error"]["message"]
        async with session.post(root + "/mock/faults", json={"fail_rate": 0}) as r:
            assert r.status == 200
        async with session.post(root + "/v1/chat/completions", data=b"{oops", headers=headers) as r:
            assert r.status == 400
        async with session.get(root + "/v1/models") as r:
            models = await r.json()
        async with session.get(root + "/mock/stats") as r:
            stats = await r.json()
    assert [m["id"] for m in models["data"]] == ["mock-gpt", "mock-gpt-mini"]
    assert stats["requests"] == 3
    assert stats["credentials"].pop("anonymous")["requests"] == 1  # the models request
    ((label, counter),) = stats["credentials"].items()
    assert label.startswith("cred-")
    assert counter == {"requests": 2, "inflight": 0, "peak": 1}
    assert "sk-one" not in json.dumps(stats) + mock.output()


async def test_chat_only_shapes(procs: Processes) -> None:
    mock = procs.mock("--chunks", "2", "--chunk-size", "3")
    async with (
        aiohttp.ClientSession() as session,
        session.post(mock.url + "/chat/completions", json={"stream": True, "model": "x"}) as r,
    ):
        text = (await r.read()).decode()
    frames = [json.loads(f[6:]) for f in text.split("\n\n") if f.startswith("data: {")]
    assert [f["choices"][0]["delta"].get("content") for f in frames] == ["", "moc", "k m", None]
    assert frames[-1]["choices"][0]["finish_reason"] == "stop"
    assert text.endswith("data: [DONE]\n\n")
