"""Ultravox providers. Registering them imports nothing; the engine speaks aiohttp."""

from __future__ import annotations

from getpatter.core.registry import ProviderSpec, hookimpl


@hookimpl
def getpatter_providers() -> list[ProviderSpec]:
    return [
        ProviderSpec(
            "engine",
            "ultravox_realtime",
            "getpatter.plugins.ultravox.realtime:UltravoxRealtime",
            extra="ultravox",
            requires=("aiohttp",),
            description="Ultravox Realtime speech-to-speech (8 kHz PCM both ways)",
            env=("ULTRAVOX_API_KEY",),
        ),
    ]
