"""The offline default: pocketsphinx STT and espeak-ng TTS, no keys and no network.

Registered as ``stt="local"`` and ``tts="local"``; installed with ``pip install
'getpatter[local]'``. Importing this module imports neither library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from getpatter.core.lazy import lazy_exports
from getpatter.core.registry import ProviderSpec, hookimpl

# `from getpatter.plugins.local import ...` loads the class on first use (no SDK import)
_EXPORTS = {
    "LocalSTT": "getpatter.plugins.local.stt",
    "LocalTTS": "getpatter.plugins.local.tts",
}
__all__ = ["getpatter_providers"]  # the classes load on first use (__getattr__)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from getpatter.plugins.local.stt import LocalSTT as LocalSTT
    from getpatter.plugins.local.tts import LocalTTS as LocalTTS


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
