"""Deepgram providers. Registering them imports nothing: the SDK loads when a call first opens.

``DeepgramSTT`` (``stt="deepgram"``) streams the carrier's 8 kHz μ-law straight to Deepgram's
live transcription; installed with ``pip install 'getpatter[deepgram]'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from getpatter.core.lazy import lazy_exports
from getpatter.core.registry import ProviderSpec, hookimpl

# `from getpatter.plugins.deepgram import ...` loads the class on first use (no SDK import)
_EXPORTS = {
    "DeepgramSTT": "getpatter.plugins.deepgram.stt",
    "DeepgramOptions": "getpatter.plugins.deepgram.options",
}
__all__ = ["getpatter_providers"]  # the classes load on first use (__getattr__)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from getpatter.plugins.deepgram.options import DeepgramOptions as DeepgramOptions
    from getpatter.plugins.deepgram.stt import DeepgramSTT as DeepgramSTT


@hookimpl
def getpatter_providers() -> list[ProviderSpec]:
    return [
        ProviderSpec(
            "stt",
            "deepgram",
            "getpatter.plugins.deepgram.stt:DeepgramSTT",
            extra="deepgram",
            requires=("deepgram",),
            description="Deepgram live STT (nova-3), carrier μ-law 8 kHz untouched",
            env=("DEEPGRAM_API_KEY",),
        ),
    ]
