"""Deepgram providers. Registering them imports nothing: the SDK loads when a call first opens.

``DeepgramSTT`` (``stt="deepgram"``) streams the carrier's 8 kHz μ-law straight to Deepgram's
live transcription; installed with ``pip install 'getpatter[deepgram]'``.
"""

from __future__ import annotations

from getpatter.core.registry import ProviderSpec, hookimpl


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
