"""ElevenLabs as the pipeline's TTS. Needs no SDK: the socket and the HTTP stream are spoken
with aiohttp (see `tts.py` for why), imported only when the provider is first used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from getpatter.core.lazy import lazy_exports
from getpatter.core.registry import ProviderSpec, hookimpl

# `from getpatter.plugins.elevenlabs import ...` loads the class on first use (no SDK import)
_EXPORTS = {
    "ElevenLabsTTS": "getpatter.plugins.elevenlabs.tts",
    "ElevenLabsOptions": "getpatter.plugins.elevenlabs.tts",
}
__all__ = ["getpatter_providers"]  # the classes load on first use (__getattr__)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from getpatter.plugins.elevenlabs.tts import (
        ElevenLabsOptions as ElevenLabsOptions,
    )
    from getpatter.plugins.elevenlabs.tts import (
        ElevenLabsTTS as ElevenLabsTTS,
    )


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
