"""Plivo as a carrier (the `Carrier` of core/carrier.py): the answer, hang-up, machine-detection
and recording webhooks, call control and outbound calls, over the wire helpers of `wire.py`
and the REST client of `rest.py`.

Plivo differs from Twilio in ways that shape this module:
- An outbound call is known by its `request_uuid` until it is answered; its CallUUID comes with
  the answer webhook. Our own key rides in the query of every URL we hand Plivo for the call
  (`?call=<key>`), so each webhook finds its call even if it beats the dial response.
- The answer XML of an outbound call is given when it is answered, so the call's media token
  waits here until then.
- Call control without REST verbs of its own (transfer, last words, voicemail) moves the call
  to another XML document: Plivo fetches it from `/webhooks/plivo/xml?call=<key>`, where the
  document is waiting.
- Audio timestamps are wall-clock milliseconds; they are made relative to the stream's first.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from multidict import MultiDictProxy

from getpatter.carriers.forms import verified_form
from getpatter.carriers.plivo.rest import PlivoAPIError, PlivoREST
from getpatter.carriers.plivo.wire import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    PlivoMediaEncoder,
    dial_xml,
    hangup_xml,
    parse_media_message,
    speak_hangup_xml,
    stream_xml,
    verify_signature,
    voicemail_xml,
)
from getpatter.core.carrier import Admission, CallTable, Carrier, Dialed, DialRequest, Restore
from getpatter.core.media import InboundAudio, MediaEvent, StreamStarted, StreamStopped
from getpatter.core.session import CallInfo, CallSession, MachineDetectionResult, invoke
from getpatter.core.throttle import LogThrottle
from getpatter.errors import CallError, PatterConfigError

log = logging.getLogger(__name__)

ANSWER_PATH = "/webhooks/plivo/answer"
HANGUP_PATH = "/webhooks/plivo/hangup"
AMD_PATH = "/webhooks/plivo/amd"
RECORDING_PATH = "/webhooks/plivo/recording"
XML_PATH = "/webhooks/plivo/xml"
MAX_STREAMS = 4096  # media streams (and XML documents waiting to be fetched) remembered

# CallStatus of the hang-up webhook → the end reason we record.
_FINAL_STATUS = {
    "completed": "hangup",
    "busy": "busy",
    "no-answer": "no_answer",
    "timeout": "no_answer",
    "failed": "failed",
    "cancel": "canceled",
    "canceled": "canceled",
}
_DIGITS = re.compile(r"[1-9][0-9]{6,14}")


def _e164(number: str) -> str:
    """Plivo writes numbers without the `+`; we keep E.164 (SIP URIs stay as they are)."""
    return f"+{number}" if _DIGITS.fullmatch(number) else number


def _app_id(resource_uri: object) -> str:
    """`/v1/Account/MA…/Application/123/` → `123`."""
    if not isinstance(resource_uri, str):
        return ""
    parts = [p for p in resource_uri.split("/") if p]
    return parts[-1] if len(parts) >= 2 and parts[-2] == "Application" else ""


class PlivoSettings(Protocol):
    """The fields of `LocalConfig` this carrier reads."""

    plivo_auth_id: str
    plivo_auth_token: str
    plivo_base_url: str
    require_signature: bool
    phone_number: str


class PlivoAdapter:
    name = "plivo"
    #: where each webhook goes in the carrier's console (for the start-up banner)
    console_webhooks = (
        ("Plivo console → Voice → Applications → your app → Answer URL (POST)", ANSWER_PATH),
        ("Hangup URL on the same application (POST)", HANGUP_PATH),
    )

    def __init__(self, calls: CallTable, config: PlivoSettings) -> None:
        self._table = calls
        self._config = config
        self._auth_token = config.plivo_auth_token
        self._require_signature = config.require_signature
        self.rest = PlivoREST(config.plivo_auth_id, config.plivo_auth_token, config.plivo_base_url)
        self._tokens: dict[str, str] = {}  # outbound key → media token, until answered
        self._dialling: dict[str, str] = {}  # outbound key → request_uuid
        # key → the XML Plivo is about to fetch for the call; it outlives the session (the
        # call leaves us by fetching it), so it is bounded rather than dropped at the end
        self._xml: OrderedDict[str, str] = OrderedDict()
        self._t0: OrderedDict[str, float | None] = OrderedDict()  # stream → first timestamp
        self._warn = LogThrottle(log)  # lines about strangers' requests, rate-limited

    def __repr__(self) -> str:
        return f"PlivoAdapter(rest={self.rest!r})"

    # --- media ---------------------------------------------------------------------------

    def parse_opening(self, text: str) -> MediaEvent:
        """A message of a stream not yet authenticated: read, and nothing else (no timestamp
        state, no log line: it may be anyone's)."""
        return parse_media_message(text, quiet=True).event

    def parse(self, text: str) -> MediaEvent:
        msg = parse_media_message(text)
        event = msg.event
        if isinstance(event, StreamStarted):
            self._t0[msg.stream_id] = None
            while len(self._t0) > MAX_STREAMS:
                self._t0.popitem(last=False)
        elif isinstance(event, InboundAudio) and msg.timestamp_ms is not None:
            t0 = self._t0.get(msg.stream_id)
            if t0 is None:
                t0 = self._t0[msg.stream_id] = msg.timestamp_ms
            event.timestamp = max(0.0, msg.timestamp_ms - t0) / 1000.0
        elif isinstance(event, StreamStopped):
            self._t0.pop(msg.stream_id, None)
        return event

    def encoder(self, stream_id: str) -> PlivoMediaEncoder:
        return PlivoMediaEncoder(stream_id)

    # --- webhooks ------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(ANSWER_PATH, self._answer),
            web.post(HANGUP_PATH, self._hangup),
            web.post(AMD_PATH, self._amd),
            web.post(RECORDING_PATH, self._recording),
            web.post(XML_PATH, self._next_xml),
        ]

    async def _verified(self, request: web.Request) -> MultiDictProxy[Any] | web.Response:
        """The form of a genuine Plivo request (V3 signature), or the refusal to send back."""

        def genuine(params: list[tuple[str, str]]) -> bool:
            url = self._table.request_url(request)
            signature = request.headers.get(SIGNATURE_HEADER, "")
            nonce = request.headers.get(NONCE_HEADER, "")
            return verify_signature(self._auth_token, request.method, url, params, signature, nonce)

        return await verified_form(
            request,
            "Plivo",
            signed=bool(self._auth_token),
            require_signature=self._require_signature,
            genuine=genuine,
            warn=self._warn,
        )

    def _session_for(self, request: web.Request, form: MultiDictProxy[Any]) -> CallSession | None:
        """The call a webhook is about: by our key in its URL, else by Plivo's ids."""
        key = request.query.get("call", "")
        session = self._table.call_by_key(key) if key else None
        if session is None:
            for name in ("CallUUID", "RequestUUID", "call_uuid"):
                carrier_id = str(form.get(name, ""))
                session = self._table.find_call(carrier_id) if carrier_id else None
                if session is not None:
                    break
        if session is not None:
            self._learn_call_uuid(session, str(form.get("CallUUID", "")))
        return session

    def _learn_call_uuid(self, session: CallSession, call_uuid: str) -> None:
        """An outbound call's CallUUID replaces its request_uuid as soon as one is seen."""
        if not call_uuid or session.direction != "outbound" or session.call_id == call_uuid:
            return
        if session.call_id in (session.key, self._dialling.get(session.key)):
            session.info.call_id = call_uuid
            self._table.bind_carrier_id(call_uuid, session.key)

    @staticmethod
    def _xml_response(xml: str) -> web.Response:
        return web.Response(text=xml, content_type="application/xml")

    async def _answer(self, request: web.Request) -> web.Response:
        form = await self._verified(request)
        if isinstance(form, web.Response):
            return form
        call_uuid = str(form.get("CallUUID", ""))
        if not call_uuid:
            return web.Response(status=400, text="missing CallUUID")
        if request.query.get("call"):  # an outbound call of ours, answered
            session = self._session_for(request, form)
            token = self._tokens.pop(session.key, None) if session is not None else None
            if session is None or token is None or session.state != "pending":
                log.warning("Plivo answered call %s that is no longer ours: hanging up", call_uuid)
                return self._xml_response(hangup_xml())
            session.event("answered")
            return self._xml_response(stream_xml(self._table.stream_url(session.key), token))
        info = CallInfo(
            call_id=call_uuid,
            caller=_e164(str(form.get("From", ""))),
            callee=_e164(str(form.get("To", ""))),
            direction="inbound",
        )
        admission = self._table.admit(request)
        if admission is Admission.REFUSE:  # full or draining: the balancer tries the next node
            return web.Response(status=503, text="this node is full", headers={"Retry-After": "1"})
        if admission is Admission.BUSY:  # every node is full
            return self._xml_response(speak_hangup_xml(self._table.busy_message))
        opened = await self._table.open_call(info)
        if opened is None:  # a call we already had: a replay gets no session, only a hang-up
            self._warn.warning(
                "replay", "Plivo answer webhook for known call %s answered <Hangup/>", call_uuid
            )
            return self._xml_response(hangup_xml())
        session, token = opened
        self._track(session)
        return self._xml_response(stream_xml(self._table.stream_url(session.key), token))

    async def _hangup(self, request: web.Request) -> web.Response:
        form = await self._verified(request)
        if isinstance(form, web.Response):
            return form
        session = self._session_for(request, form)
        if session is not None:
            status = str(form.get("CallStatus", ""))
            session.event(
                "carrier_hangup",
                status=status,
                cause=str(form.get("HangupCause", "")),
                source=str(form.get("HangupSource", "")),
            )
            if session.state != "ended":
                session.end_soon(_FINAL_STATUS.get(status, "hangup"))
        return web.Response(status=200)

    async def _amd(self, request: web.Request) -> web.Response:
        form = await self._verified(request)
        if isinstance(form, web.Response):
            return form
        session = self._session_for(request, form)
        if session is None:
            return web.Response(status=200)
        is_machine = str(form.get("Machine", "")).lower() == "true"
        answered_by = "machine" if is_machine else "human"
        session.event("amd", answered_by=answered_by)
        result = MachineDetectionResult(session.call_id, answered_by, is_machine)
        await invoke(session.info.on_machine_detection, result, what="on_machine_detection")
        if is_machine and session.info.voicemail_message and session.state != "ended":
            message = session.info.voicemail_message
            session.spawn(self._leave_voicemail(session, message), "voicemail")
        return web.Response(status=200)

    async def _leave_voicemail(self, session: CallSession, message: str) -> None:
        """Plivo waits for the beep, speaks the message in its own voice and hangs up."""
        await self._move_to(session, voicemail_xml(message))
        await session.add_transcript("assistant", message, voicemail=True)
        session.end_soon("voicemail")

    async def _recording(self, request: web.Request) -> web.Response:
        form = await self._verified(request)
        if isinstance(form, web.Response):
            return form
        session = self._session_for(request, form)
        if session is not None:
            session.event(
                "recording",
                recording_id=str(form.get("recording_id", "")),
                status="completed",
                url=str(form.get("record_url", "")),
            )
        return web.Response(status=200)

    async def _next_xml(self, request: web.Request) -> web.Response:
        """The document a transfer moved the call to (a hang-up if none is waiting)."""
        form = await self._verified(request)
        if isinstance(form, web.Response):
            return form
        xml = self._xml.pop(request.query.get("call", ""), None)
        return self._xml_response(xml or hangup_xml())

    # --- per-call state ------------------------------------------------------------------

    def _track(self, session: CallSession) -> None:
        def forget(_: object) -> None:
            key = session.key
            self._tokens.pop(key, None)
            self._dialling.pop(key, None)
            if session.stream_id:
                self._t0.pop(session.stream_id, None)

        session.ended.add_done_callback(forget)

    def _url(self, path: str, session: CallSession) -> str:
        return self._table.public_url(f"{path}?call={session.key}")

    async def _move_to(self, session: CallSession, xml: str) -> None:
        """Make the call leave its XML (and our stream) for `xml`."""
        self._xml[session.key] = xml
        while len(self._xml) > MAX_STREAMS:
            self._xml.popitem(last=False)
        try:
            await self.rest.transfer(session.call_id, self._url(XML_PATH, session))
        except BaseException:
            self._xml.pop(session.key, None)
            raise

    # --- call control --------------------------------------------------------------------

    def _request_uuid(self, call: CallSession) -> str | None:
        """The request_uuid of an outbound call not answered yet."""
        request_uuid = self._dialling.get(call.key)
        return request_uuid if request_uuid is not None and call.call_id == request_uuid else None

    async def hangup(self, call: CallSession) -> None:
        """Idempotent: a call or request Plivo no longer knows (404) is already over."""
        if call.direction == "outbound" and call.call_id == call.key:
            return  # the dial never returned a request_uuid: nothing to hang up
        request_uuid = self._request_uuid(call)
        try:
            if request_uuid is not None:
                await self.rest.cancel(request_uuid)
            else:
                await self.rest.hangup(call.call_id)
        except PlivoAPIError as exc:
            if exc.status != 404:
                raise
            log.debug("call %s: already over at Plivo", call.call_id)

    async def transfer(self, call: CallSession, to: str) -> None:
        await self._move_to(call, dial_xml(to))

    async def say_and_hangup(self, call: CallSession, text: str) -> None:
        """Last words in Plivo's own voice, then hang up: the call leaves our stream for
        `<Speak>` + `<Hangup/>`."""
        await self._move_to(call, speak_hangup_xml(text))

    async def start_recording(self, call: CallSession) -> None:
        recording = await self.rest.record(
            call.call_id, callback_url=self._url(RECORDING_PATH, call)
        )
        call.event(
            "recording", recording_id=str(recording.get("recording_id", "")), status="started"
        )

    async def dial(self, call: CallSession, token: str, request: DialRequest) -> Dialed:
        self._tokens[call.key] = token  # for the answer webhook, which may beat the response
        self._track(call)
        fields: dict[str, Any] = {
            "from": request.from_.lstrip("+"),
            "to": request.to.lstrip("+"),
            "answer_url": self._url(ANSWER_PATH, call),
            "answer_method": "POST",
            "hangup_url": self._url(HANGUP_PATH, call),
            "hangup_method": "POST",
            "ring_timeout": request.ring_timeout,
        }
        if request.machine_detection:
            fields.update(
                machine_detection="true",
                machine_detection_url=self._url(AMD_PATH, call),
                machine_detection_method="POST",
            )
        created = await self.rest.create_call(**fields)
        request_uuid = created.get("request_uuid")
        if isinstance(request_uuid, list):  # one per destination; we dial one
            request_uuid = request_uuid[0] if request_uuid else ""
        if not isinstance(request_uuid, str) or not request_uuid:
            raise CallError("Plivo accepted the call but returned no request_uuid")
        self._dialling[call.key] = request_uuid
        return Dialed(request_uuid, str(created.get("message", "")))

    async def point_at(self, host: str) -> Restore:
        """Point the answer and hang-up URLs of our number's application at `host`; the
        returned coroutine function puts back what was there before."""
        phone = self._config.phone_number
        try:
            number = await self.rest.get_number(phone)
        except PlivoAPIError as exc:
            if exc.status == 404:
                raise PatterConfigError(f"{phone} is not a number on this Plivo account") from None
            raise
        app_id = _app_id(number.get("application"))
        if not app_id:
            raise PatterConfigError(
                f"{phone} has no Plivo application: link one to it in the Plivo console"
            )
        app = await self.rest.get_application(app_id)
        before = {
            name: str(app.get(name) or default)
            for name, default in (
                ("answer_url", ""),
                ("answer_method", "POST"),
                ("hangup_url", ""),
                ("hangup_method", "POST"),
            )
        }
        await self.rest.update_application(
            app_id,
            answer_url=f"https://{host}{ANSWER_PATH}",
            answer_method="POST",
            hangup_url=f"https://{host}{HANGUP_PATH}",
            hangup_method="POST",
        )
        log.info("Plivo application %s (%s) now points at https://%s", app_id, phone, host)

        async def restore() -> None:
            # runs as serve() exits, after the REST client was closed: it reopens for this
            # one request and is closed again, or its session would leak
            try:
                await self.rest.update_application(app_id, **before)
            finally:
                await self.rest.aclose()
            log.info("Plivo application %s restored", app_id)

        return restore

    async def aclose(self) -> None:
        await self.rest.aclose()


if TYPE_CHECKING:  # mypy holds the adapter to the contract
    _contract: type[Carrier] = PlivoAdapter
