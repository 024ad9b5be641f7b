"""Ultravox providers. Registering them imports nothing; the engine speaks aiohttp."""

from __future__ import annotations

from typing import TYPE_CHECKING

from getpatter.core.lazy import lazy_exports
from getpatter.core.registry import ProviderSpec, hookimpl

# `from getpatter.plugins.ultravox import UltravoxRealtime` loads the class on first use
_EXPORTS = {"UltravoxRealtime": "getpatter.plugins.ultravox.realtime"}
__all__ = ["getpatter_providers"]  # the classes load on first use (__getattr__)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from getpatter.plugins.ultravox.realtime import UltravoxRealtime as UltravoxRealtime


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
