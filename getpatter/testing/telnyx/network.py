"""A fake Telnyx phone network on 127.0.0.1, for testing a voice agent end to end.

`FakeTelnyx` is a real aiohttp server playing Telnyx Call Control v2: the REST API (dial and
call actions, Bearer auth) under `base_url`, Ed25519-signed JSON webhooks to the app, and a
real-time media streaming WebSocket client. It is written from the wire protocol only, so it
checks the app rather than agreeing with it. Configure the app with `api_key`,
`connection_id`, `public_key` and `base_url`.

    async with FakeTelnyx() as tx:
        tx.route("agent.example.com", f"127.0.0.1:{app_port}")
        tx.add_number("+15550001000", "https://agent.example.com/webhooks/telnyx/voice")
        call = await tx.place_call(from_="+15557654321", to="+15550001000", audio=pcm)
        await call.wait_for_mark("greeting")
        await call.hangup()

The public API mirrors `FakeTwilio` so the same tests can drive both carriers. Where
Telnyx's behaviour is not pinned down, the choices are listed in `calls.py` (calls,
webhooks, streams), `rest.py` (REST API) and `media.py` (media socket).
"""

from __future__ import annotations

import asyncio
import base64

from aiohttp import web

from ..phone.audio import AnswerMode, AudioInput, Callee
from ..phone.call import CallError
from .calls import CallRunner
from .media import FakeCall
from .rest import build_rest_app
from .util import (
    SIGNATURE_HEADER,
    STREAM_TOKEN_HEADER,
    TIMESTAMP_HEADER,
    PhoneNumber,
    RestRequest,
    Webhook,
)

__all__ = [
    "SIGNATURE_HEADER",
    "STREAM_TOKEN_HEADER",
    "TIMESTAMP_HEADER",
    "AnswerMode",
    "CallError",
    "Callee",
    "FakeCall",
    "FakeTelnyx",
    "PhoneNumber",
    "RestRequest",
    "Webhook",
]


class FakeTelnyx(CallRunner):
    """Telnyx's Call Control REST API, webhooks and media streaming, served from 127.0.0.1.

    Attributes for assertions: `calls` (by call_control_id), `requests` (REST requests
    received), `webhooks` (every delivery attempt, with the HTTP status the app returned),
    `numbers`. Knobs: `shuffle_webhooks`, `duplicate_webhooks`, `webhook_timeout_s`,
    `webhook_retry_delays`, `ring_timeout_s`, `speak_seconds_per_char`, `rng`.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        connection_id: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(api_key, connection_id, host, port)

    @property
    def public_key(self) -> str:
        """base64 of the 32-byte Ed25519 verify key: what the app verifies webhooks with."""
        return base64.b64encode(self.signing_key.verify_key.encode()).decode("ascii")

    def sign(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        """The `telnyx-signature-ed25519` and `telnyx-timestamp` headers for `body` (now, or
        at `timestamp`), for tests that forge or replay webhooks."""
        return super().sign(body, timestamp)

    # --- lifecycle -------------------------------------------------------------------------

    def _rest_app(self) -> web.Application:
        return build_rest_app(self)

    async def _end_all(self) -> None:
        """Hang up live calls (stream `stop` + close 1000, call.hangup)."""
        live = [c for c in self.calls.values() if not c.ended]
        for call in live:
            self.spawn(call, self.finish(call, "normal_clearing", self.party_side(call)))
        waits = [c.wait_ended(10.0) for c in self.calls.values() if not c._finished.is_set()]
        await asyncio.gather(*waits, return_exceptions=True)
        for ctl in self._ctl.values():
            for task in ctl.tasks:
                task.cancel()
            await asyncio.gather(*ctl.tasks, *ctl.deliveries, return_exceptions=True)

    # --- configuration ---------------------------------------------------------------------

    def add_number(self, phone_number: str, webhook_url: str = "") -> None:
        """Put a number on the account, assigned to the Call Control app whose webhook is
        `webhook_url` (e.g. https://host/webhooks/telnyx/voice). The first url given also
        becomes the app's default (`webhook_url`) for outbound calls without one."""
        self.numbers[phone_number] = PhoneNumber(phone_number, webhook_url)
        if webhook_url and not self.webhook_url:
            self.webhook_url = webhook_url

    # --- inbound calls ---------------------------------------------------------------------

    async def place_call(
        self,
        *,
        from_: str,
        to: str,
        audio: AudioInput | None = None,
        hangup_after: float | None = None,
    ) -> FakeCall:
        """A caller dials one of our numbers, saying `audio` (int16 8 kHz array, μ-law bytes
        or a WAV path; silence after it); `hangup_after` seconds after answer they hang up.

        Sends call.initiated (incoming, parked) and waits for the app's `answer`; returns once
        the call is streaming, answered without a stream, or over (see `call.errors`)."""
        number = self.numbers.get(to)
        if number is None:
            raise LookupError(f"{to} is not a number on this account; add_number() it first")
        call = self.new_call("incoming", from_, to, audio, number.webhook_url or self.webhook_url)
        ctl = self.ctl(call)
        ctl.hangup_after = hangup_after
        self.spawn(call, self.run_inbound(call))
        await call.wait_for(
            lambda: call.ended or call.stream_open or (call.answered and not ctl.stream_pending),
            self.ring_timeout_s + 5,
        )
        return call
