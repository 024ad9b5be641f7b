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

Where Twilio's behaviour is not pinned down, the choices are listed in `_twilio_calls`
(calls, TwiML, webhooks) and `_twilio_rest` (REST API).
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self

import aiohttp
from aiohttp import web

from .calls import WEBHOOK_TIMEOUT_S, CallEngine
from .media import FakeCall
from .rest import FakeRecording, PhoneNumber, RestRequest, build_rest_app
from .util import (
    AnswerMode,
    AudioInput,
    Callee,
    CallError,
    Webhook,
    compute_signature,
    new_sid,
)

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


class FakeTwilio(CallEngine):
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
        self._runner: web.AppRunner | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._runner = web.AppRunner(build_rest_app(self), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        """Hang up live calls (stop + close 1000), then shut the servers down."""
        for call in list(self.calls.values()):
            call._request_end("completed")
        waits = [c.wait_ended(5.0) for c in self.calls.values() if not c._finished.is_set()]
        await asyncio.gather(*waits, return_exceptions=True)
        for ctl in self._ctl.values():
            for task in ctl.tasks:
                task.cancel()
            await asyncio.gather(*ctl.tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- configuration ---------------------------------------------------------------------

    def route(self, public_host: str, local: str) -> None:
        """DNS + TLS termination stand-in: https://public_host/… (wss://…) is sent to
        http://local/… (ws://…), while signatures cover the public URL, as Twilio signs it."""
        host = public_host.split("://", 1)[-1].rstrip("/")
        self._routes[host] = local.split("://", 1)[-1].rstrip("/")

    def add_number(
        self,
        phone_number: str,
        voice_url: str = "",
        voice_method: str = "POST",
        status_callback: str = "",
    ) -> str:
        """Provision an IncomingPhoneNumber; returns its PN sid."""
        number = PhoneNumber(
            sid=new_sid("PN"),
            phone_number=phone_number,
            voice_url=voice_url,
            voice_method=voice_method.upper(),
            status_callback=status_callback,
        )
        self.numbers[number.sid] = number
        return number.sid

    def set_callee(
        self,
        number: str,
        *,
        answer: AnswerMode = "human",
        answer_delay: float = 0.0,
        audio: AudioInput | None = None,
        machine_greeting_s: float = 2.0,
    ) -> None:
        """How `number` behaves when an outbound call or a <Dial> rings it. `audio` is what
        it says once answered; "no-answer" rings for the call's Timeout."""
        self._callees[number] = Callee(answer, answer_delay, audio, machine_greeting_s)

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
