"""A fake Twilio phone network on 127.0.0.1, for testing a voice agent end to end.

`FakeTwilio` is a real aiohttp server playing Twilio: the REST API (calls, recordings, phone
numbers) under `base_url`, signed webhooks to the app, TwiML execution and a real-time Media
Streams client. It is written from the wire protocol only, so it checks the app rather than
agreeing with it.

    async with FakeTwilio() as tw:
        tw.route("agent.example.com", f"127.0.0.1:{app_port}")
        tw.add_number("+15550001000", voice_url="https://agent.example.com/voice")
        call = await tw.place_call(from_="+15557654321", to="+15550001000", audio=pcm)
        await call.wait_for_mark("greeting")
        await call.hangup()

Where Twilio's behaviour is not pinned down, the choices are listed in `calls.py`
(calls, TwiML, webhooks) and `rest.py` (REST API).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..phone.audio import AnswerMode, AudioInput, Callee
from ..phone.call import CallError
from .calls import WEBHOOK_TIMEOUT_S, CallRunner
from .media import FakeCall
from .rest import build_rest_app
from .util import FakeRecording, PhoneNumber, RestRequest, Webhook, compute_signature

__all__ = [
    "AnswerMode",
    "CallError",
    "Callee",
    "FakeCall",
    "FakeRecording",
    "FakeTwilio",
    "PhoneNumber",
    "RestRequest",
    "Webhook",
    "compute_signature",
]


class FakeTwilio(CallRunner):
    """Twilio's REST API, webhooks and Media Streams, served from 127.0.0.1.

    Attributes for assertions: `calls` (by CallSid), `requests` (REST requests received),
    `webhooks` (requests made to the app, with the status codes received), `numbers`,
    `recordings`.
    """

    def __init__(
        self,
        account_sid: str | None = None,
        auth_token: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(account_sid, auth_token, host, port)

    # --- lifecycle -------------------------------------------------------------------------

    def _rest_app(self) -> web.Application:
        return build_rest_app(self)

    async def _end_all(self) -> None:
        for call in list(self.calls.values()):
            call._request_end("completed")
        waits = [c.wait_ended(5.0) for c in self.calls.values() if not c._finished.is_set()]
        await asyncio.gather(*waits, return_exceptions=True)
        for ctl in self._ctl.values():
            for task in ctl.tasks:
                task.cancel()
            await asyncio.gather(*ctl.tasks, return_exceptions=True)

    # --- configuration ---------------------------------------------------------------------

    # --- inbound calls ---------------------------------------------------------------------

    async def place_call(
        self,
        *,
        from_: str,
        to: str,
        audio: AudioInput | None = None,
        hangup_after: float | None = None,
    ) -> FakeCall:
        """A caller dials one of our numbers, saying `audio` (int16 8 kHz array, μ-law bytes or
        a WAV path; silence after it). Returns once the call is streaming, running other
        TwiML, or over (check `call.status` / `call.errors`)."""
        number = self.number(to)
        if number is None:
            raise LookupError(f"{to} is not a number on this account; add_number() it first")
        call = self._new_call("inbound", from_, to, audio)
        ctl = self._ctl[call.call_sid]
        ctl.status_callback = number.status_callback
        ctl.status_callback_method = number.status_callback_method
        self._spawn(ctl, self._run_inbound(call, ctl, number, hangup_after))
        await call.wait_for(lambda: ctl.settled.is_set() or call.stream_open, WEBHOOK_TIMEOUT_S + 5)
        return call
