"""The one provider that lives in the core, the VAD, registered through the same hook a third
party uses.

Each carrier folder under `getpatter/carriers/` and each provider folder under
`getpatter/plugins/` registers itself with its own entry point.
"""

from __future__ import annotations

from getpatter.core.registry import ProviderSpec, hookimpl


@hookimpl
def getpatter_providers() -> list[ProviderSpec]:
    return [
        ProviderSpec(
            "vad",
            "webrtc",
            "getpatter.core.vad:WebRTCVAD",
            requires=("webrtcvad",),
            description="webrtcvad with hysteresis and an energy floor",
        ),
    ]
