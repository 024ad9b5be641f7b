"""Speechmatics providers. Registering them imports nothing beyond getpatter itself.

`SpeechmaticsSTT` speaks the real-time protocol with aiohttp (see its module docstring for why
not the `speechmatics-rt` SDK), so it needs no extra package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from getpatter.core.lazy import lazy_exports
from getpatter.core.registry import ProviderSpec, hookimpl

# `from getpatter.plugins.speechmatics import ...` loads the class on first use (no SDK import)
_EXPORTS = {
    "SpeechmaticsSTT": "getpatter.plugins.speechmatics.stt",
    "SpeechmaticsOptions": "getpatter.plugins.speechmatics.stt",
}
__all__ = ["getpatter_providers"]  # the classes load on first use (__getattr__)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from getpatter.plugins.speechmatics.stt import (
        SpeechmaticsOptions as SpeechmaticsOptions,
    )
    from getpatter.plugins.speechmatics.stt import (
        SpeechmaticsSTT as SpeechmaticsSTT,
    )


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
