"""The offline default: pocketsphinx STT and espeak-ng TTS, no keys and no network.

Registered as ``stt="local"`` and ``tts="local"``; installed with ``pip install
'getpatter[local]'``. Importing this module imports neither library.
"""

from __future__ import annotations

from getpatter.core.registry import ProviderSpec, hookimpl


@hookimpl
def getpatter_providers() -> list[ProviderSpec]:
    return [
        ProviderSpec(
            "stt",
            "local",
            "getpatter.plugins.local.stt:LocalSTT",
            extra="local",
            requires=("pocketsphinx",),
            description="offline English STT (pocketsphinx); phrase hints for accuracy",
        ),
        ProviderSpec(
            "tts",
            "local",
            "getpatter.plugins.local.tts:LocalTTS",
            extra="local",
            requires=("espeakng_loader",),
            description="offline TTS (espeak-ng, bundled library)",
        ),
    ]
