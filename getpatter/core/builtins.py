"""getpatter's own carriers and VAD, registered through the same hook a third party uses.

Each provider folder under `getpatter/plugins/` registers itself with its own entry point;
this module covers the pieces that live in the core.
"""

from __future__ import annotations

from getpatter.core.registry import ProviderSpec, hookimpl


@hookimpl
def getpatter_providers() -> list[ProviderSpec]:
    return [
        ProviderSpec(
            "carrier",
            "twilio",
            "getpatter.carriers.twilio_adapter:TwilioAdapter",
            requires=("aiohttp",),
            description="Twilio Programmable Voice + Media Streams",
            env=("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"),
        ),
        ProviderSpec(
            "carrier",
            "telnyx",
            "getpatter.carriers.telnyx_adapter:TelnyxAdapter",
            extra="telnyx",
            requires=("aiohttp", "nacl"),
            description="Telnyx Call Control v2 + media streaming",
            env=("TELNYX_API_KEY", "TELNYX_CONNECTION_ID", "TELNYX_PUBLIC_KEY"),
        ),
        ProviderSpec(
            "vad",
            "webrtc",
            "getpatter.core.vad:VAD",
            requires=("webrtcvad",),
            description="webrtcvad with hysteresis and an energy floor",
        ),
    ]
