"""Provider profiles: every name the config accepts has one, ``with_drops`` adds to a profile
without losing the rest of it, and what each profile says shapes the translated request."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest

from proxyfleet.config.model import ProviderConfig
from proxyfleet.providers.profiles import PROFILES, ProfileName, ProviderProfile
from proxyfleet.providers.request import TranslateOptions, responses_to_chat

BODY: dict[str, Any] = {
    "model": "m",
    "input": "hi",
    "stream": True,
    "max_output_tokens": 64,
    "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
    "tool_choice": "required",
    "parallel_tool_calls": False,
    "service_tier": "flex",
}


def translated(profile: str, body: dict[str, Any] = BODY) -> tuple[dict[str, Any], list[str]]:
    chat = responses_to_chat(body, TranslateOptions(PROFILES[profile]))
    return chat.body, chat.dropped


def test_every_profile_name_has_a_profile_of_that_name() -> None:
    names = set(typing.get_args(ProfileName))
    assert set(PROFILES) == names
    config_names = typing.get_args(ProviderConfig.model_fields["profile"].annotation)
    assert set(config_names) == names  # what a config may name exists
    assert all(profile.name == name for name, profile in PROFILES.items())


def test_generic_drops_nothing_and_takes_every_tool_choice() -> None:
    generic = PROFILES["generic"]
    assert generic == ProviderProfile("generic")
    assert generic.drop_fields == frozenset()
    assert generic.tool_choices == {"auto", "none", "required"}
    assert generic.named_tool_choice
    assert generic.max_tokens_field == "max_tokens"
    assert generic.stream_usage


def test_profiles_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROFILES["generic"].name = "changed"  # type: ignore[misc]


def test_with_drops_adds_and_keeps_everything_else() -> None:
    cerebras = PROFILES["cerebras"]
    extended = cerebras.with_drops(("seed", "top_p"))
    assert extended.drop_fields == cerebras.drop_fields | {"seed", "top_p"}
    for field in dataclasses.fields(ProviderProfile):
        if field.name != "drop_fields":
            assert getattr(extended, field.name) == getattr(cerebras, field.name), field.name
    assert "seed" not in cerebras.drop_fields  # the shared profile is untouched


def test_with_no_extra_drops_is_the_same_profile() -> None:
    ollama = PROFILES["ollama"]
    assert ollama.with_drops(()) is ollama


def test_generic_passes_what_it_is_given() -> None:
    body, dropped = translated("generic")
    assert body["tool_choice"] == "required"
    assert body["max_tokens"] == 64
    assert body["parallel_tool_calls"] is False
    assert body["service_tier"] == "flex"
    assert body["stream_options"] == {"include_usage": True}
    assert dropped == []


def test_cerebras_shapes_the_request() -> None:
    body, dropped = translated("cerebras")
    assert "tool_choice" not in body  # "required" is not one it accepts
    assert body["max_completion_tokens"] == 64
    assert "max_tokens" not in body
    assert "parallel_tool_calls" not in body
    assert "service_tier" not in body
    assert "tool_choice 'required' (cerebras)" in dropped
    assert "parallel_tool_calls (cerebras)" in dropped
    assert "service_tier (cerebras)" in dropped
    named = dict(BODY, tool_choice={"type": "function", "name": "f"})
    body, dropped = translated("cerebras", named)
    assert "tool_choice" not in body
    assert "tool_choice function (cerebras)" in dropped
    body, _ = translated("cerebras", dict(BODY, tool_choice="auto"))
    assert body["tool_choice"] == "auto"


def test_groq_and_vllm_take_a_named_tool_choice() -> None:
    named = dict(BODY, tool_choice={"type": "function", "name": "f"})
    for profile in ("groq", "vllm"):
        body, _ = translated(profile, named)
        assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    body, dropped = translated("groq")
    assert "service_tier" not in body
    assert body["parallel_tool_calls"] is False
    assert dropped == ["service_tier (groq)"]


def test_ollama_is_not_asked_for_stream_usage() -> None:
    body, dropped = translated("ollama")
    assert body["stream"] is True
    assert "stream_options" not in body
    assert "parallel_tool_calls (ollama)" in dropped


def test_configured_drop_fields_reach_the_request() -> None:
    provider = ProviderConfig(mode="chat", profile="vllm", drop_fields=("max_tokens",))
    options = TranslateOptions.of(provider)
    assert options is not None
    assert options.profile.drop_fields == {"max_tokens"}
    chat = responses_to_chat(BODY, options)
    assert "max_tokens" not in chat.body
    assert "max_tokens (vllm)" in chat.dropped
