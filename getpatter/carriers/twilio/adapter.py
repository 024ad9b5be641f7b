"""Twilio as a carrier (the `Carrier` of core/carrier.py): webhook routes, call control and
outbound calls, over the wire helpers of `wire.py` and the REST client of `rest.py`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from multidict import MultiDictProxy

from getpatter.carriers.forms import verified_form
from getpatter.carriers.twilio.rest import TwilioREST
from getpatter.carriers.twilio.wire import (
    TwilioMediaEncoder,
    parse_media_message,
    twiml_dial,
    twiml_hangup,
    twiml_say_hangup,
    twiml_stream,
    verify_signature,
)
from getpatter.core.carrier import Admission, CallTable, Carrier, Dialed, DialRequest, Restore
from getpatter.core.media import MediaEvent
from getpatter.core.session import CallInfo, CallSession, MachineDetectionResult, invoke
from getpatter.core.throttle import LogThrottle
from getpatter.errors import CallError, PatterConfigError

log = logging.getLogger(__name__)

# CallStatus values that end a call, and the end reason we record for each.
_FINAL_STATUS = {
    "completed": "hangup",
    "busy": "busy",
    "no-answer": "no_answer",
    "failed": "failed",
    "canceled": "canceled",
}


_RETRY = {"Retry-After": "1"}


class TwilioSettings(Protocol):
    """The fields of `LocalConfig` this carrier reads."""

    twilio_sid: str
    twilio_token: str
    twilio_base_url: str
    require_signature: bool
    phone_number: str


class TwilioAdapter:
    name = "twilio"
    #: where each webhook goes in the carrier's console (for the start-up banner)
    console_webhooks = (
        (
            "Twilio console → Phone Numbers → your number → Voice → "
            "'A call comes in' (Webhook, HTTP POST)",
            "/webhooks/twilio/voice",
        ),
        ("'Call status changes' on the same page (optional)", "/webhooks/twilio/status"),
    )

    def __init__(self, calls: CallTable, config: TwilioSettings) -> None:
        self._table = calls
        self._config = config
        self._auth_token = config.twilio_token
        self._require_signature = config.require_signature
        self.rest = TwilioREST(config.twilio_sid, config.twilio_token, config.twilio_base_url)
        self._warn = LogThrottle(log)  # lines about strangers' requests, rate-limited

    def __repr__(self) -> str:
        return f"TwilioAdapter(rest={self.rest!r})"

    # --- media ---------------------------------------------------------------------------

    def parse(self, text: str) -> MediaEvent:
        return parse_media_message(text)

    def encoder(self, stream_id: str) -> TwilioMediaEncoder:
        return TwilioMediaEncoder(stream_id)

    # --- webhooks ------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/webhooks/twilio/voice", self._voice),
            web.post("/webhooks/twilio/status", self._status),
            web.post("/webhooks/twilio/amd", self._amd),
            web.post("/webhooks/twilio/recording", self._recording),
        ]

    async def _verified(self, request: web.Request) -> MultiDictProxy[Any] | web.Response:
        """The form of a genuine Twilio request, or the refusal to send back."""

        def genuine(params: list[tuple[str, str]]) -> bool:
            url = self._table.request_url(request)
            signature = request.headers.get("X-Twilio-Signature", "")
            return verify_signature(self._auth_token, url, params, signature)

        return await verified_form(
            request,
            "Twilio",
            signed=bool(self._auth_token),
            require_signature=self._require_signature,
            genuine=genuine,
            warn=self._warn,
        )

    async def _voice(self, request: web.Request) -> web.Response:
        form = await self._verified(request)
        if isinstance(form, web.Response):
            return form
        call_sid = str(form.get("CallSid", ""))
        if not call_sid:
            return web.Response(status=400, text="missing CallSid")
        info = CallInfo(
            call_id=call_sid,
            caller=str(form.get("From", "")),
            callee=str(form.get("To", "")),
            direction="inbound",
        )
        admission = self._table.admit(request)
        if admission is Admission.REFUSE:  # full or draining: the balancer tries the next node
            return web.Response(status=503, text="this node is full", headers=_RETRY)
        if admission is Admission.BUSY:  # every node is full
            twiml = twiml_say_hangup(self._table.busy_message)
            return web.Response(text=twiml, content_type="text/xml")
        opened = await self._table.open_call(info)
        if opened is None:
            # A voice webhook for a call we already had: Twilio signatures carry no
            # timestamp, so this is a replay (or a retry whose first answer is streaming
            # already). It gets no session; whoever sent it is told to hang up.
            self._warn.warning(
                "replay", "Twilio voice webhook for known call %s answered <Hangup/>", call_sid
            )
            return web.Response(text=twiml_hangup(), content_type="text/xml")
        session, token = opened
        twiml = twiml_stream(self._table.stream_url(session.key), {"token": token})
        return web.Response(text=twiml, content_type="text/xml")

    async def _status(self, request: web.Request) -> web.Response:
        form = await self._verified(request)
        if isinstance(form, web.Response):
            return form
        session = self._table.find_call(str(form.get("CallSid", "")))
        status = str(form.get("CallStatus", ""))
        if session is not None:
            session.event("carrier_status", status=status)
            reason = _FINAL_STATUS.get(status)
            if reason is not None and session.state != "ended":
                session.end_soon(reason)
        return web.Response(status=204)

    async def _amd(self, request: web.Request) -> web.Response:
        form = await self._verified(request)
        if isinstance(form, web.Response):
            return form
        session = self._table.find_call(str(form.get("CallSid", "")))
        if session is None:
            return web.Response(status=204)
        answered_by = str(form.get("AnsweredBy", "unknown"))
        try:
            detection_ms: int | None = int(str(form.get("MachineDetectionDuration", "")))
        except ValueError:
            detection_ms = None
        result = MachineDetectionResult(
            session.call_id, answered_by, answered_by.startswith("machine"), detection_ms
        )
        session.event("amd", answered_by=answered_by)
        await invoke(session.info.on_machine_detection, result, what="on_machine_detection")
        if result.is_machine and session.info.voicemail_message:
            session.spawn(self._leave_voicemail(session, session.info.voicemail_message), "vm")
        return web.Response(status=204)

    async def _leave_voicemail(self, session: CallSession, message: str) -> None:
        """After the beep: speak the message with the carrier's own voice, then hang up."""
        await self.rest.redirect(session.call_id, twiml_say_hangup(message))
        await session.add_transcript("assistant", message, voicemail=True)
        session.end_soon("voicemail")

    async def _recording(self, request: web.Request) -> web.Response:
        form = await self._verified(request)
        if isinstance(form, web.Response):
            return form
        session = self._table.find_call(str(form.get("CallSid", "")))
        if session is not None:
            session.event(
                "recording",
                recording_sid=str(form.get("RecordingSid", "")),
                status=str(form.get("RecordingStatus", "")),
                url=str(form.get("RecordingUrl", "")),
            )
        return web.Response(status=204)

    # --- call control ------------------------------------------------------------------

    async def hangup(self, call: CallSession) -> None:
        if call.call_id.startswith("CA") or call.state == "live":
            await self.rest.hangup(call.call_id)

    async def transfer(self, call: CallSession, to: str) -> None:
        await self.rest.redirect(call.call_id, twiml_dial(to))

    async def say_and_hangup(self, call: CallSession, text: str) -> None:
        """Last words in Twilio's own voice, then hang up: the call leaves our stream for
        `<Say>` + `<Hangup/>`."""
        await self.rest.redirect(call.call_id, twiml_say_hangup(text))

    async def start_recording(self, call: CallSession) -> None:
        recording = await self.rest.start_recording(
            call.call_id, self._table.public_url("/webhooks/twilio/recording")
        )
        call.event("recording", recording_sid=recording.get("sid", ""), status="started")

    async def dial(self, call: CallSession, token: str, request: DialRequest) -> Dialed:
        twiml = twiml_stream(self._table.stream_url(call.key), {"token": token})
        created = await self.rest.create_call(
            to=request.to,
            from_=request.from_,
            twiml=twiml,
            status_callback=self._table.public_url("/webhooks/twilio/status"),
            ring_timeout=request.ring_timeout,
            machine_detection=request.machine_detection,
            amd_callback=self._table.public_url("/webhooks/twilio/amd"),
        )
        sid = str(created.get("sid", ""))
        if not sid:
            raise CallError("Twilio accepted the call but returned no call SID")
        return Dialed(sid, str(created.get("status", "")))

    async def point_at(self, host: str) -> Restore:
        """Point our number's voice webhook and status callback at `host`; the returned
        coroutine function puts back what was there before."""
        phone = self._config.phone_number
        number = await self.rest.find_number(phone)
        if number is None:
            raise PatterConfigError(f"{phone} is not a number on this Twilio account")
        sid = str(number["sid"])
        before = {
            "VoiceUrl": str(number.get("voice_url") or ""),
            "VoiceMethod": str(number.get("voice_method") or "POST"),
            "StatusCallback": str(number.get("status_callback") or ""),
        }
        await self.rest.update_number(
            sid,
            VoiceUrl=f"https://{host}/webhooks/twilio/voice",
            VoiceMethod="POST",
            StatusCallback=f"https://{host}/webhooks/twilio/status",
        )
        log.info("Twilio number %s now points at https://%s", phone, host)

        async def restore() -> None:
            # runs as serve() exits, after the REST client was closed: it reopens for this
            # one request and is closed again, or its session would leak
            try:
                await self.rest.update_number(sid, **before)
            finally:
                await self.rest.aclose()
            log.info("Twilio number %s restored", phone)

        return restore

    async def aclose(self) -> None:
        await self.rest.aclose()


if TYPE_CHECKING:  # mypy holds the adapter to the contract
    _contract: type[Carrier] = TwilioAdapter
