"""AssemblyAI providers. Registering them imports nothing.

``AssemblyAISTT`` (``stt="assemblyai"``) speaks Universal Streaming v3 over aiohttp (a core
dependency), so it needs no extra package; see its docstring for why not the SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from getpatter.core.lazy import lazy_exports
from getpatter.core.registry import ProviderSpec, hookimpl

# `from getpatter.plugins.assemblyai import ...` loads the class on first use (no SDK import)
_EXPORTS = {
    "AssemblyAISTT": "getpatter.plugins.assemblyai.stt",
    "AssemblyAIOptions": "getpatter.plugins.assemblyai.options",
}
__all__ = ["getpatter_providers"]  # the classes load on first use (__getattr__)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from getpatter.plugins.assemblyai.options import AssemblyAIOptions as AssemblyAIOptions
    from getpatter.plugins.assemblyai.stt import AssemblyAISTT as AssemblyAISTT


@hookimpl
def getpatter_providers() -> list[ProviderSpec]:
    return [
        ProviderSpec(
            "stt",
            "assemblyai",
            "getpatter.plugins.assemblyai.stt:AssemblyAISTT",
            requires=("aiohttp",),
            description="AssemblyAI Universal Streaming STT, carrier μ-law 8 kHz untouched",
            env=("ASSEMBLYAI_API_KEY",),
        ),
    ]
