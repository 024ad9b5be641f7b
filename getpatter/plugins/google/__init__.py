"""Google providers. Registering them imports nothing: `google-genai` loads on first use."""

from __future__ import annotations

from typing import Any

from getpatter.core.registry import ProviderSpec, hookimpl

__all__ = ["getpatter_providers"]  # the classes load on first use, via __getattr__


@hookimpl
def getpatter_providers() -> list[ProviderSpec]:
    return [
        ProviderSpec(
            "llm",
            "google",
            "getpatter.plugins.google.llm:GoogleLLM",
            extra="google",
            requires=("google.genai",),
            description="Gemini (google-genai), streamed, with function tools",
            env=("GEMINI_API_KEY", "GOOGLE_API_KEY"),
        ),
        ProviderSpec(
            "engine",
            "gemini_live",
            "getpatter.plugins.google.live:GeminiLive",
            extra="google",
            requires=("google.genai", "websockets"),
            description="Gemini Live speech-to-speech (16 kHz PCM in, 24 kHz out)",
            env=("GOOGLE_API_KEY", "GEMINI_API_KEY"),
        ),
    ]


def __getattr__(name: str) -> Any:
    """`from getpatter.plugins.google import GoogleLLM` loads the class on use."""
    if name in ("GoogleLLM", "GoogleLLMOptions"):
        from getpatter.plugins.google import llm

        return getattr(llm, name)
    if name == "GeminiLive":
        from getpatter.plugins.google import live

        return live.GeminiLive
    raise AttributeError(name)
