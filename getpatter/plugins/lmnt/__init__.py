"""LMNT text to speech. Registering it imports nothing: the `lmnt` SDK loads on first use."""

from __future__ import annotations

from typing import Any

from getpatter.core.registry import ProviderSpec, hookimpl

__all__ = ["getpatter_providers"]  # the classes load on first use, via __getattr__


@hookimpl
def getpatter_providers() -> list[ProviderSpec]:
    return [
        ProviderSpec(
            "tts",
            "lmnt",
            "getpatter.plugins.lmnt.tts:LmntTTS",
            extra="lmnt",
            requires=("lmnt", "websockets"),
            description="LMNT speech sessions (official SDK), 8 kHz μ-law to the carrier",
            env=("LMNT_API_KEY",),
        ),
    ]


def __getattr__(name: str) -> Any:
    """`from getpatter.plugins.lmnt import LmntTTS` loads the class on use."""
    if name in ("LmntTTS", "LmntOptions"):
        from getpatter.plugins.lmnt import tts

        return getattr(tts, name)
    raise AttributeError(name)
