"""Anthropic (Claude) as the pipeline's LLM. Registering imports nothing: the `anthropic` SDK
loads, in a worker thread, when an `AnthropicLLM` is first built."""

from __future__ import annotations

from typing import TYPE_CHECKING

from getpatter.core.lazy import lazy_exports
from getpatter.core.registry import ProviderSpec, hookimpl

# `from getpatter.plugins.anthropic import ...` loads the class on first use (no SDK import)
_EXPORTS = {
    "AnthropicLLM": "getpatter.plugins.anthropic.llm",
    "AnthropicOptions": "getpatter.plugins.anthropic.llm",
}
__all__ = ["getpatter_providers"]  # the classes load on first use (__getattr__)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from getpatter.plugins.anthropic.llm import (
        AnthropicLLM as AnthropicLLM,
    )
    from getpatter.plugins.anthropic.llm import (
        AnthropicOptions as AnthropicOptions,
    )


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
