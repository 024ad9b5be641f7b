"""Plivo Voice + bidirectional audio streams. Registering it imports nothing of the carrier: the
adapter loads when a server is built for `Patter(carrier=Plivo(...))`.

``wire.py`` V3 signatures, Plivo XML and audio-stream messages; ``rest.py`` the Voice API
calls; ``adapter.py`` the `Carrier` (webhooks, call control, dialling, pointing the number's
application at us).
"""

from __future__ import annotations

from getpatter.core.registry import ProviderSpec, hookimpl


@hookimpl
def getpatter_providers() -> list[ProviderSpec]:
    return [
        ProviderSpec(
            "carrier",
            "plivo",
            "getpatter.carriers.plivo.adapter:PlivoAdapter",
            extra="plivo",
            requires=("aiohttp",),
            env=("PLIVO_AUTH_ID", "PLIVO_AUTH_TOKEN"),
            description="Plivo Voice + bidirectional audio streams",
        ),
    ]
