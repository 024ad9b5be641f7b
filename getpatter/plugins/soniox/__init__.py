"""Soniox providers. Registering them imports nothing beyond getpatter itself.

``SonioxSTT`` (``stt="soniox"``) speaks Soniox's real-time WebSocket API with aiohttp (see its
module docstring for why not the `soniox` SDK), so it needs no extra package.
"""

from __future__ import annotations

from getpatter.core.registry import ProviderSpec, hookimpl


@hookimpl
def getpatter_providers() -> list[ProviderSpec]:
    return [
        ProviderSpec(
            "stt",
            "soniox",
            "getpatter.plugins.soniox.stt:SonioxSTT",
            extra="soniox",
            requires=("aiohttp",),
            description="Soniox real-time STT, carrier μ-law 8 kHz untouched",
            env=("SONIOX_API_KEY",),
        ),
    ]
