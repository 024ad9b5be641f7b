"""A fake Plivo phone network on 127.0.0.1, for testing a voice agent end to end.

`FakePlivo` is a real aiohttp server playing Plivo: the Voice REST API (calls, transfers,
recordings, numbers, applications; Basic auth with the auth ID and token) under `base_url`,
V3-signed webhooks to the app, Plivo XML execution and a real-time audio-stream client. It is
written from Plivo's documentation only, so it checks the app rather than agreeing with it.
Configure the app with `auth_id`, `auth_token` and `base_url`.

    async with FakePlivo() as pl:
        pl.route("agent.example.com", f"127.0.0.1:{app_port}")
        pl.add_number("+15550001000", "https://agent.example.com/webhooks/plivo/answer")
        call = await pl.place_call(from_="+15557654321", to="+15550001000", audio=pcm)
        await call.wait_for_mark("greeting")
        await call.hangup()

The public API mirrors `FakeTwilio` and `FakeTelnyx`, so the same tests drive all three. Where
Plivo's behaviour is not pinned down, the choices are listed in `calls.py` (calls, XML,
webhooks), `rest.py` (REST API) and `media.py` (audio streams).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..phone.audio import AnswerMode, AudioInput
from ..phone.call import CallError
from .calls import CallRunner
from .media import FakeCall
from .rest import build_rest_app
from .util import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    Application,
    PhoneNumber,
    RestRequest,
    Webhook,
    digits,
    v3_signature,
)

__all__ = [
    "NONCE_HEADER",
    "SIGNATURE_HEADER",
    "AnswerMode",
    "Application",
    "CallError",
    "FakeCall",
    "FakePlivo",
    "RestRequest",
    "Webhook",
    "v3_signature",
]


class FakePlivo(CallRunner):
    """Plivo's Voice API, webhooks and audio streams, served from 127.0.0.1.

    Attributes for assertions: `calls` (by CallUUID), `by_request` (outbound calls by
    request_uuid), `requests` (REST requests received), `webhooks` (requests made to the app,
    with the status codes received), `numbers`, `applications`, `recordings`.
    """

    def __init__(
        self,
        auth_id: str | None = None,
        auth_token: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(auth_id, auth_token, host, port)

    # --- lifecycle -------------------------------------------------------------------------

    def _rest_app(self) -> web.Application:
        return build_rest_app(self)

    async def _end_all(self) -> None:
        for call in list(self.calls.values()):
            if not call.ended:
                self.request_end(call, "completed", "NORMAL_CLEARING", "Plivo")
        waits = [c.wait_ended(10.0) for c in self.calls.values() if not c._finished.is_set()]
        await asyncio.gather(*waits, return_exceptions=True)
        for ctl in self._ctl.values():
            for task in ctl.tasks:
                task.cancel()
            await asyncio.gather(*ctl.tasks, return_exceptions=True)

    # --- configuration ---------------------------------------------------------------------

    def add_number(self, phone_number: str, answer_url: str = "", hangup_url: str = "") -> str:
        """Put a number on the account, linked to a new application with these URLs; returns
        the application's id."""
        app = Application(app_id=str(10**16 + len(self.applications) * 7919))
        app.answer_url, app.hangup_url = answer_url, hangup_url
        self.applications[app.app_id] = app
        self.numbers[digits(phone_number)] = PhoneNumber(digits(phone_number), app.app_id)
        return app.app_id

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
        a WAV path; silence after it). Returns once the call is streaming, running other XML,
        or over (check `call.status` / `call.errors`)."""
        app = self.application(to)
        if app is None:
            raise LookupError(f"{to} is not a number on this account; add_number() it first")
        call = self.new_call("inbound", digits(from_), digits(to), audio)
        ctl = self.ctl(call)
        ctl.answer_url, ctl.answer_method = app.answer_url, app.answer_method
        ctl.hangup_url, ctl.hangup_method = app.hangup_url, app.hangup_method
        self.spawn(call, self.run_inbound(call, hangup_after))
        await call.wait_for(lambda: ctl.settled.is_set() or call.stream_open, 20)
        return call
