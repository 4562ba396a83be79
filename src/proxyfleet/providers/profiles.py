"""What a Chat-Completions provider can take: one profile per provider family.

A profile lists the request fields the provider refuses (they are dropped, never sent), which
``tool_choice`` values it accepts, and how it names the output-token limit. ``generic`` assumes
an OpenAI-compatible server and drops nothing; ``provider.drop_fields`` adds to any profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["PROFILES", "ProfileName", "ProviderProfile"]

ProfileName = Literal["generic", "cerebras", "groq", "vllm", "ollama"]


@dataclass(frozen=True, slots=True)
class ProviderProfile:
    name: str
    drop_fields: frozenset[str] = frozenset()
    #: string tool_choice values the provider accepts ("auto", "none", "required")
    tool_choices: frozenset[str] = frozenset({"auto", "none", "required"})
    #: whether {"type": "function", "function": {"name": …}} is accepted
    named_tool_choice: bool = True
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    #: ask for usage in the last stream chunk (stream_options.include_usage)
    stream_usage: bool = True

    def with_drops(self, extra: tuple[str, ...]) -> ProviderProfile:
        if not extra:
            return self
        return ProviderProfile(
            self.name,
            self.drop_fields | frozenset(extra),
            self.tool_choices,
            self.named_tool_choice,
            self.max_tokens_field,
            self.stream_usage,
        )


PROFILES: dict[str, ProviderProfile] = {
    "generic": ProviderProfile("generic"),
    "cerebras": ProviderProfile(
        "cerebras",
        drop_fields=frozenset(
            {
                "frequency_penalty",
                "presence_penalty",
                "logit_bias",
                "parallel_tool_calls",
                "service_tier",
            }
        ),
        tool_choices=frozenset({"auto", "none"}),
        named_tool_choice=False,
        max_tokens_field="max_completion_tokens",
    ),
    "groq": ProviderProfile(
        "groq", drop_fields=frozenset({"logit_bias", "logprobs", "top_logprobs", "service_tier"})
    ),
    "vllm": ProviderProfile("vllm"),
    "ollama": ProviderProfile(
        "ollama",
        drop_fields=frozenset({"parallel_tool_calls", "service_tier", "logit_bias"}),
        stream_usage=False,
    ),
}
