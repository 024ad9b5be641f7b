"""Soniox providers. Registering them imports nothing beyond getpatter itself.

``SonioxSTT`` (``stt="soniox"``) speaks Soniox's real-time WebSocket API with aiohttp (see its
module docstring for why not the `soniox` SDK), so it needs no extra package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from getpatter.core.lazy import lazy_exports
from getpatter.core.registry import ProviderSpec, hookimpl

# `from getpatter.plugins.soniox import ...` loads the class on first use
_EXPORTS = {
    "SonioxSTT": "getpatter.plugins.soniox.stt",
    "SonioxOptions": "getpatter.plugins.soniox.stt",
}
__all__ = ["getpatter_providers"]  # the classes load on first use (__getattr__)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from getpatter.plugins.soniox.stt import SonioxOptions as SonioxOptions
    from getpatter.plugins.soniox.stt import SonioxSTT as SonioxSTT


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
