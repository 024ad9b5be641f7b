"""ElevenLabs as the pipeline's TTS. Needs no SDK: the socket and the HTTP stream are spoken
with aiohttp (see `tts.py` for why), imported only when the provider is first used."""

from __future__ import annotations

from getpatter.core.registry import ProviderSpec, hookimpl


@hookimpl
def getpatter_providers() -> list[ProviderSpec]:
    return [
        ProviderSpec(
            "tts",
            "elevenlabs",
            "getpatter.plugins.elevenlabs.tts:ElevenLabsTTS",
            requires=("aiohttp",),
            description="ElevenLabs over one multi-context WebSocket per call (μ-law 8 kHz)",
            env=("ELEVENLABS_API_KEY",),
        ),
    ]
