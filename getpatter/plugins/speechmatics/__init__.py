"""Speechmatics providers. Registering them imports nothing beyond getpatter itself.

`SpeechmaticsSTT` speaks the real-time protocol with aiohttp (see its module docstring for why
not the `speechmatics-rt` SDK), so it needs no extra package.
"""

from __future__ import annotations

from typing import Any

from getpatter.core.registry import ProviderSpec, hookimpl

__all__ = ["getpatter_providers"]  # the classes load on first use, via __getattr__


@hookimpl
def getpatter_providers() -> list[ProviderSpec]:
    return [
        ProviderSpec(
            "stt",
            "speechmatics",
            "getpatter.plugins.speechmatics.stt:SpeechmaticsSTT",
            extra="speechmatics",
            requires=("aiohttp",),
            description="Speechmatics real-time STT (8 kHz μ-law straight from the carrier)",
            env=("SPEECHMATICS_API_KEY",),
        ),
    ]


def __getattr__(name: str) -> Any:
    """`from getpatter.plugins.speechmatics import SpeechmaticsSTT` loads the class on use."""
    if name in ("SpeechmaticsSTT", "SpeechmaticsOptions"):
        from getpatter.plugins.speechmatics import stt

        return getattr(stt, name)
    raise AttributeError(name)
