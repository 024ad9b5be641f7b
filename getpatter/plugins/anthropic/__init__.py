"""Anthropic (Claude) as the pipeline's LLM. Registering imports nothing: the `anthropic` SDK
loads, in a worker thread, when an `AnthropicLLM` is first built."""

from __future__ import annotations

from getpatter.core.registry import ProviderSpec, hookimpl


@hookimpl
def getpatter_providers() -> list[ProviderSpec]:
    return [
        ProviderSpec(
            "llm",
            "anthropic",
            "getpatter.plugins.anthropic.llm:AnthropicLLM",
            extra="anthropic",
            requires=("anthropic",),
            description="Claude via the Messages API, streamed, with tool use",
            env=("ANTHROPIC_API_KEY",),
        ),
    ]
