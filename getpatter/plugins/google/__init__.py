"""Google providers. Registering them imports nothing: the SDK loads when one is first used."""

from __future__ import annotations

from getpatter.core.registry import ProviderSpec, hookimpl


@hookimpl
def getpatter_providers() -> list[ProviderSpec]:
    return [
        ProviderSpec(
            "engine",
            "gemini_live",
            "getpatter.plugins.google.live:GeminiLive",
            extra="google",
            requires=("google.genai", "websockets"),
            description="Gemini Live speech-to-speech (16 kHz PCM in, 24 kHz out)",
        ),
    ]
