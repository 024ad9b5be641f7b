"""Cartesia Sonic as the pipeline's TTS. Registering imports nothing: the `cartesia` SDK loads,
in a worker thread, when a call first opens the provider."""

from __future__ import annotations

from getpatter.core.registry import ProviderSpec, hookimpl


@hookimpl
def getpatter_providers() -> list[ProviderSpec]:
    return [
        ProviderSpec(
            "tts",
            "cartesia",
            "getpatter.plugins.cartesia.tts:CartesiaTTS",
            extra="cartesia",
            requires=("cartesia", "websockets"),
            description="Cartesia Sonic over one WebSocket per call, with continuations",
            env=("CARTESIA_API_KEY",),
        ),
    ]
