"""OpenAI providers. Registering them imports nothing: the SDK loads when one is first used."""

from __future__ import annotations

from getpatter.core.registry import ProviderSpec, hookimpl


@hookimpl
def getpatter_providers() -> list[ProviderSpec]:
    return [
        ProviderSpec(
            "engine",
            "openai_realtime",
            "getpatter.plugins.openai.realtime:OpenAIRealtime",
            extra="openai",
            requires=("openai", "websockets"),
            description="OpenAI Realtime speech-to-speech (G.711 end to end, no transcoding)",
        ),
    ]
