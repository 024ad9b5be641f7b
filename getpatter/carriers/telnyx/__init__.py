"""Telnyx Call Control v2 + media streaming. Registering it imports nothing of the carrier:
the adapter (and PyNaCl, the `telnyx` extra) loads when a server is built for
`Patter(carrier=Telnyx(...))`.

``wire.py`` Ed25519 signatures and media-streaming messages; ``rest.py`` the Call Control
commands; ``adapter.py`` the `Carrier` (webhook events, call control, dialling, pointing the
application at us).
"""

from __future__ import annotations

from getpatter.core.registry import ProviderSpec, hookimpl


@hookimpl
def getpatter_providers() -> list[ProviderSpec]:
    return [
        ProviderSpec(
            "carrier",
            "telnyx",
            "getpatter.carriers.telnyx.adapter:TelnyxAdapter",
            extra="telnyx",
            requires=("aiohttp", "nacl"),
            description="Telnyx Call Control v2 + media streaming",
            env=("TELNYX_API_KEY", "TELNYX_CONNECTION_ID", "TELNYX_PUBLIC_KEY"),
        ),
    ]
