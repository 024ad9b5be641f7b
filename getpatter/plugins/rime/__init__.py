"""Rime text to speech. Registering it imports nothing: it speaks Rime's socket with aiohttp."""

from __future__ import annotations

from typing import Any

from getpatter.core.registry import ProviderSpec, hookimpl

__all__ = ["getpatter_providers"]  # the classes load on first use, via __getattr__


@hookimpl
def getpatter_providers() -> list[ProviderSpec]:
    return [
        ProviderSpec(
            "tts",
            "rime",
            "getpatter.plugins.rime.tts:RimeTTS",
            extra="rime",
            requires=("aiohttp",),
            description="Rime over its JSON WebSocket, 8 kHz μ-law straight to the carrier",
            env=("RIME_API_KEY",),
        ),
    ]


def __getattr__(name: str) -> Any:
    """`from getpatter.plugins.rime import RimeTTS` loads the class on use."""
    if name in ("RimeTTS", "RimeOptions"):
        from getpatter.plugins.rime import tts

        return getattr(tts, name)
    raise AttributeError(name)
