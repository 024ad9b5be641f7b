"""Twilio Programmable Voice + Media Streams. Registering it imports nothing of the carrier:
the adapter loads when a server is built for `Patter(carrier=Twilio(...))`.

``wire.py`` signatures, TwiML and Media Streams messages; ``rest.py`` the REST calls;
``adapter.py`` the `Carrier` (webhooks, call control, dialling, pointing the number at us).
"""

from __future__ import annotations

from getpatter.core.registry import ProviderSpec, hookimpl


@hookimpl
def getpatter_providers() -> list[ProviderSpec]:
    return [
        ProviderSpec(
            "carrier",
            "twilio",
            "getpatter.carriers.twilio.adapter:TwilioAdapter",
            requires=("aiohttp",),
            description="Twilio Programmable Voice + Media Streams",
            env=("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"),
        ),
    ]
