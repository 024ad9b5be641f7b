"""AssemblyAI providers. Registering them imports nothing.

``AssemblyAISTT`` (``stt="assemblyai"``) speaks Universal Streaming v3 over aiohttp (a core
dependency), so it needs no extra package; see its docstring for why not the SDK.
"""

from __future__ import annotations

from getpatter.core.registry import ProviderSpec, hookimpl


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
