"""Cartesia Sonic as the pipeline's TTS. Registering imports nothing: the `cartesia` SDK loads,
in a worker thread, when a call first opens the provider."""

from __future__ import annotations

from typing import TYPE_CHECKING

from getpatter.core.lazy import lazy_exports
from getpatter.core.registry import ProviderSpec, hookimpl

# `from getpatter.plugins.cartesia import ...` loads the class on first use (no SDK import)
_EXPORTS = {
    "CartesiaTTS": "getpatter.plugins.cartesia.tts",
    "CartesiaOptions": "getpatter.plugins.cartesia.tts",
}
__all__ = ["getpatter_providers"]  # the classes load on first use (__getattr__)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from getpatter.plugins.cartesia.tts import (
        CartesiaOptions as CartesiaOptions,
    )
    from getpatter.plugins.cartesia.tts import (
        CartesiaTTS as CartesiaTTS,
    )


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
