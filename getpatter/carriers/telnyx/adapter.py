"""Telnyx as a carrier (the `Carrier` of core/carrier.py): the Call Control webhook, call
control and outbound calls, over the wire helpers of `wire.py` and the REST client of `rest.py`.

Telnyx differs from Twilio in ways that shape this module:
- Webhooks are events, not requests for instructions: we reply 2xx at once and act through
  REST commands in background tasks. Events come unordered and duplicated, so each is
  deduplicated by `data.id` and every handler is idempotent.
- The media stream is requested in the `answer` (inbound) or `dial` (outbound) command. The
  per-call token goes both as `stream_auth_token` and as the `token` custom parameter; the
  generic media socket checks the latter (it arrives in `start.custom_parameters`).
- `client_state` carries the session key, so events that beat the dial response (an outbound
  call's `call.hangup`, AMD) still find their call.
- DTMF arrives twice: on the media socket and as `call.dtmf.received`. Both sources are
  accepted and matched by count — the n-th digit is delivered once, by whichever source
  brings it first — so a digit is lost only if both sources lose it.
- Media frames are ordered by `sequence_number` cheaply: a frame older than one already
  delivered (late or duplicated) is dropped rather than played out of order.
- Voicemail: after the machine's greeting ends (`call.machine.greeting.ended`), the agent is
  silenced, the session ends as "voicemail", and Telnyx `speak`s the message; we hang up on
  `call.speak.ended` (or after a deadline if that event is lost).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections import OrderedDict
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from getpatter.carriers.telnyx.rest import TelnyxAPIError, TelnyxREST
from getpatter.carriers.telnyx.state import CallState, Recent, StreamOrder
from getpatter.carriers.telnyx.wire import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    TelnyxMediaEncoder,
    WebhookVerifier,
    decode_client_state,
    encode_client_state,
    parse_media_message,
)
from getpatter.core.carrier import Admission, CallTable, Carrier, Dialed, DialRequest, Restore
from getpatter.core.media import (
    DtmfReceived,
    Ignored,
    InboundAudio,
    MediaEvent,
    StreamStarted,
    StreamStopped,
)
from getpatter.core.session import CallInfo, CallSession, MachineDetectionResult, invoke
from getpatter.core.throttle import LogThrottle
from getpatter.errors import CallError, PatterConnectionError, SignatureError

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/telnyx/voice"
STREAM_PATH = "/ws/telnyx/stream/"
GREETING_TIMEOUT = 30.0  # a machine whose greeting end is never reported still gets the message
SPEAK_SECONDS_PER_CHAR = 0.1  # generous: the hang-up deadline if `call.speak.ended` is lost
VOICEMAIL_DRAIN = 10.0  # on shutdown, how long voicemail drops in progress may finish
MAX_STREAMS = 4096  # media streams whose order is tracked

# call.hangup `hangup_cause` → the end reason we record (anything else: "failed").
_END_REASON = {
    "normal_clearing": "hangup",
    "user_busy": "busy",
    "call_rejected": "busy",
    "timeout": "no_answer",
    "no_answer": "no_answer",
    "originator_cancel": "canceled",
    "time_limit": "time_limit",
}
_CARRIER_ERRORS = (CallError, PatterConnectionError)
# premium AMD results → the plain vocabulary of MachineDetectionResult
_PREMIUM_RESULT = {
    "human_residence": "human",
    "human_business": "human",
    "fax_detected": "fax",
    "silence": "not_sure",
}


class TelnyxSettings(Protocol):
    """The fields of `LocalConfig` this carrier reads."""

    telnyx_key: str
    telnyx_connection_id: str
    telnyx_public_key: str
    telnyx_base_url: str
    require_signature: bool


class TelnyxAdapter:
    name = "telnyx"
    #: where each webhook goes in the carrier's console (for the start-up banner)
    console_webhooks = (
        (
            "Telnyx portal → Voice → Call Control application → Webhook URL (API v2)",
            WEBHOOK_PATH,
        ),
    )

    def __init__(self, calls: CallTable, config: TelnyxSettings) -> None:
        self._table = calls
        self._require_signature = config.require_signature
        key = config.telnyx_public_key
        self._verifier = WebhookVerifier(key) if key else None
        self.connection_id = config.telnyx_connection_id
        self.rest = TelnyxREST(config.telnyx_key, config.telnyx_base_url)
        self._events = Recent()  # data.id of every event handled
        self._hung_up = Recent()  # call_control_ids Telnyx reported as hung up
        self._hangups_sent = Recent()  # call_control_ids we asked Telnyx to hang up
        self._initiated = Recent()  # inbound call_control_ids already given a session
        self._calls: dict[str, CallState] = {}  # session key → state, while the call lives
        self._last_words: dict[str, CallState] = {}  # call_control_id → state, while speaking
        self._streams: OrderedDict[str, StreamOrder] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._warned_unsigned = False
        self._warn = LogThrottle(log)  # lines about strangers' requests, rate-limited

    def __repr__(self) -> str:
        return f"TelnyxAdapter(rest={self.rest!r}, connection_id={self.connection_id!r})"

    # --- media ---------------------------------------------------------------------------

    def parse_opening(self, text: str) -> MediaEvent:
        """A message of a stream not yet authenticated: read, and nothing else (no ordering
        or DTMF state, no log line: it may be anyone's)."""
        return parse_media_message(text, quiet=True).event

    def parse(self, text: str) -> MediaEvent:
        msg = parse_media_message(text)
        event = msg.event
        if isinstance(event, StreamStarted):
            self._streams[msg.stream_id] = StreamOrder(event.call_id)
            while len(self._streams) > MAX_STREAMS:
                self._streams.popitem(last=False)
        elif isinstance(event, InboundAudio):
            stream = self._streams.get(msg.stream_id)
            if stream is not None and msg.sequence is not None:
                if msg.sequence <= stream.last_seq:
                    stream.late += 1
                    return Ignored("late media")
                stream.last_seq = msg.sequence
        elif isinstance(event, DtmfReceived):
            stream = self._streams.get(msg.stream_id)
            session = self._table.find_call(stream.call_id) if stream is not None else None
            if session is not None and not self._state(session).accept_dtmf("socket"):
                return Ignored("dtmf already delivered by webhook")
        elif isinstance(event, StreamStopped):
            self._streams.pop(msg.stream_id, None)
        return event

    def encoder(self, stream_id: str) -> TelnyxMediaEncoder:
        return TelnyxMediaEncoder(stream_id)

    def stream_url(self, key: str) -> str:
        return self._table.public_ws_url(STREAM_PATH + key)

    def _stream_fields(self, key: str, token: str) -> dict[str, Any]:
        """Bidirectional μ-law streaming, as fields of answer/dial/streaming_start."""
        return {
            "stream_url": self.stream_url(key),
            "stream_track": "inbound_track",
            "stream_codec": "PCMU",
            "stream_bidirectional_mode": "rtp",
            "stream_bidirectional_codec": "PCMU",
            "stream_auth_token": token,
            "custom_parameters": [{"name": "token", "value": token}],
        }

    # --- per-call state ------------------------------------------------------------------

    def _state(self, session: CallSession) -> CallState:
        state = self._calls.get(session.key)
        if state is None:
            state = self._calls[session.key] = CallState()
        return state

    def _track(self, session: CallSession) -> None:
        def forget(_: object) -> None:
            self._calls.pop(session.key, None)
            if session.stream_id:
                self._streams.pop(session.stream_id, None)

        session.ended.add_done_callback(forget)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A task of the adapter (it may outlive its call, e.g. a voicemail drop)."""
        task = asyncio.get_running_loop().create_task(coro, name=f"telnyx:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("Telnyx task %s failed: %r", task.get_name(), task.exception())

    # --- webhooks ------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(WEBHOOK_PATH, self._webhook),
            web.get(STREAM_PATH + "{call_id}", self._table.media_socket),
        ]

    def _refusal(self, request: web.Request, body: bytes) -> web.Response | None:
        """None for a genuine Telnyx request, else the response refusing it."""
        if self._verifier is None:
            if self._require_signature:
                log.error("Telnyx webhook refused: no public key configured to verify it")
                return web.Response(status=503, text="webhook verification not configured")
            if not self._warned_unsigned:
                self._warned_unsigned = True
                log.warning("Telnyx webhooks are accepted unverified (no public key)")
            return None
        try:
            self._verifier.verify(
                body,
                request.headers.get(SIGNATURE_HEADER, ""),
                request.headers.get(TIMESTAMP_HEADER, ""),
            )
        except SignatureError as exc:
            self._warn.warning("signature", "Telnyx webhook refused (403): %s", exc)
            return web.Response(status=403, text="invalid signature")
        return None

    async def _webhook(self, request: web.Request) -> web.Response:
        body = await request.read()
        refusal = self._refusal(request, body)
        if refusal is not None:
            return refusal
        try:
            envelope = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            why = "nested too deeply" if isinstance(exc, RecursionError) else "not JSON"
            self._warn.warning("json", "Telnyx webhook refused (400): body %s", why)
            return web.Response(status=400, text="malformed JSON")
        data = envelope.get("data") if isinstance(envelope, dict) else None
        event_type = data.get("event_type") if isinstance(data, dict) else None
        payload = data.get("payload") if isinstance(data, dict) else None
        if not isinstance(event_type, str) or not isinstance(payload, dict):
            return web.Response(status=400, text="not a Telnyx event")
        event_id = data.get("id") if isinstance(data, dict) else None
        admission = Admission.TAKE
        if event_type == "call.initiated" and payload.get("direction") == "incoming":
            # before deduplication: a refused event comes back (to this node or another)
            admission = self._table.admit(request)
            if admission is Admission.REFUSE:
                if self._verifier is not None:  # the same request comes back: no replay
                    self._verifier.forget(
                        request.headers.get(SIGNATURE_HEADER, ""),
                        request.headers.get(TIMESTAMP_HEADER, ""),
                    )
                return web.Response(status=503, text="this node is full")
        if isinstance(event_id, str) and event_id and not self._events.add(event_id):
            return web.Response(status=200, text="duplicate")
        if admission is Admission.BUSY:
            self._busy(payload)
            return web.Response(status=200, text="ok")
        try:
            self._dispatch(event_type, payload)
        except Exception:
            log.exception("Telnyx event %s could not be handled", event_type)
        return web.Response(status=200, text="ok")

    def _session_for(self, payload: dict[str, Any]) -> CallSession | None:
        """The call an event is about: by call_control_id, else by the key in client_state."""
        ccid = str(payload.get("call_control_id") or "")
        session = self._table.find_call(ccid) if ccid else None
        if session is not None:
            return session
        key = decode_client_state(payload.get("client_state"))
        session = self._table.call_by_key(key) if key else None
        if session is None or not ccid:
            return session
        if session.direction != "outbound" or session.call_id != session.key:
            return None  # another leg carrying our client_state (e.g. a transfer's)
        # an outbound call's event that beat the dial response: learn its id now
        session.info.call_id = ccid
        self._table.bind_carrier_id(ccid, session.key)
        return session

    def _dispatch(self, event_type: str, payload: dict[str, Any]) -> None:
        if event_type == "call.initiated" and payload.get("direction") == "incoming":
            self._inbound(payload)
            return
        ccid = str(payload.get("call_control_id") or "")
        if event_type == "call.hangup":
            self._hung_up.add(ccid)
        speaking = self._last_words.get(ccid)
        if speaking is not None and event_type == "call.speak.ended":
            speaking.speak_ended.set()
            return
        if speaking is not None and event_type == "call.answered":
            speaking.answered.set()
        session = self._session_for(payload)
        if session is None:
            return
        if event_type == "call.hangup":
            cause = str(payload.get("hangup_cause") or "")
            session.event(
                "carrier_hangup", cause=cause, source=str(payload.get("hangup_source") or "")
            )
            if session.state != "ended":
                session.end_soon(_END_REASON.get(cause, "failed"))
        elif event_type in ("call.machine.detection.ended", "call.machine.premium.detection.ended"):
            self._machine_detection(session, str(payload.get("result") or "not_sure"))
        elif event_type in ("call.machine.greeting.ended", "call.machine.premium.greeting.ended"):
            session.event("machine_greeting_ended", result=str(payload.get("result") or ""))
            state = self._state(session)
            state.greeting_ended.set()
            # Unordered delivery: the greeting's end may be the first word of a machine.
            self._machine_detection(session, "machine", greeting=True)
        elif event_type == "call.dtmf.received":
            digit = str(payload.get("digit") or "")
            if digit and self._state(session).accept_dtmf("webhook"):
                session.spawn(session.on_dtmf(digit), "dtmf")
        elif event_type == "call.recording.saved":
            urls = payload.get("recording_urls") or payload.get("public_recording_urls") or {}
            session.event(
                "recording",
                recording_id=str(payload.get("recording_id") or ""),
                status="saved",
                url=str(urls.get("mp3") or urls.get("wav") or "") if isinstance(urls, dict) else "",
            )
        elif event_type == "streaming.failed":
            session.event("streaming_failed", reason=str(payload.get("failure_reason") or ""))
            log.warning("call %s: Telnyx could not open the media stream", session.call_id)
            if session.state == "pending":
                self._spawn(session.hangup("media_error"), "media-error")
        else:
            session.event("carrier_event", type=event_type)

    def _inbound(self, payload: dict[str, Any]) -> None:
        ccid = str(payload.get("call_control_id") or "")
        if not ccid or ccid in self._hung_up or not self._initiated.add(ccid):
            return  # a duplicate, or a call whose hang-up arrived first
        info = CallInfo(
            call_id=ccid,
            caller=str(payload.get("from") or ""),
            callee=str(payload.get("to") or ""),
            direction="inbound",
        )
        self._spawn(self._open_inbound(info), f"answer:{ccid}")

    async def _open_inbound(self, info: CallInfo) -> None:
        # Our own key, not the call_control_id, names the media socket: it is URL-safe
        # whatever Telnyx's id looks like, and the id never appears in a URL.
        opened = await self._table.open_call(info, key="in-" + secrets.token_hex(12))
        if opened is None:  # known from before (a redelivery across a restart): not ours now
            self._warn.warning(
                "known", "Telnyx call %s was handled before; not answered again", info.call_id
            )
            return
        session, token = opened
        self._track(session)
        if info.call_id in self._hung_up:  # gone while its record was being opened
            session.end_soon("canceled")
            return
        await self._answer(session, token)

    def _busy(self, payload: dict[str, Any]) -> None:
        """Every line is busy: answer without a stream, say so, hang up (no session)."""
        ccid = str(payload.get("call_control_id") or "")
        if not ccid or ccid in self._hung_up or not self._initiated.add(ccid):
            return
        self._spawn(self._say_busy(ccid), f"busy:{ccid}")

    async def _say_busy(self, ccid: str) -> None:
        state = CallState()
        self._last_words[ccid] = state  # so call.speak.ended finds it
        try:
            await self.rest.answer(ccid, webhook_url=self._table.public_url(WEBHOOK_PATH))
            try:  # speaking needs the answered call
                await asyncio.wait_for(state.answered.wait(), 5.0)
            except TimeoutError:
                pass
            await self.rest.speak(ccid, self._table.busy_message)
            deadline = 5.0 + SPEAK_SECONDS_PER_CHAR * len(self._table.busy_message)
            try:
                await asyncio.wait_for(state.speak_ended.wait(), deadline)
            except TimeoutError:
                pass
            if ccid not in self._hung_up and self._hangups_sent.add(ccid):
                await self.rest.hangup(ccid)
        except _CARRIER_ERRORS as exc:
            log.info("call %s: busy message not delivered: %s", ccid, exc)
        finally:
            self._last_words.pop(ccid, None)

    async def _answer(self, session: CallSession, token: str) -> None:
        try:
            await self.rest.answer(
                session.call_id,
                client_state=encode_client_state(session.key),
                # this node's own route: the call's later events must come here
                webhook_url=self._table.public_url(WEBHOOK_PATH),
                webhook_url_method="POST",
                **self._stream_fields(session.key, token),
            )
        except _CARRIER_ERRORS as exc:
            log.warning("call %s: answer failed: %s", session.call_id, exc)
            session.event("error", where="answer", error=str(exc))
            session.end_soon("failed")
            return
        session.event("answering")

    # --- answering machines --------------------------------------------------------------

    def _machine_detection(
        self, session: CallSession, answered_by: str, *, greeting: bool = False
    ) -> None:
        """Report the verdict once; a machine (or a greeting's end, unless a human was
        detected) gets the voicemail. Premium results are mapped to human/machine/fax."""
        state = self._state(session)
        normalized = _PREMIUM_RESULT.get(answered_by, answered_by)
        is_machine = normalized == "machine"
        if not state.amd_reported:
            state.amd_reported = True
            state.human = normalized == "human"
            result = MachineDetectionResult(session.call_id, normalized, is_machine)
            session.event("amd", answered_by=answered_by)
            self._spawn(
                invoke(session.info.on_machine_detection, result, what="on_machine_detection"),
                f"amd:{session.call_id}",
            )
        message = session.info.voicemail_message
        wanted = is_machine or (greeting and not state.human)
        if wanted and message and state.last_words is None:
            self._last_words[session.call_id] = state
            state.last_words = self._spawn(
                self._leave_voicemail(session, state, message), f"voicemail:{session.call_id}"
            )

    async def _leave_voicemail(self, session: CallSession, state: CallState, text: str) -> None:
        """After the beep: silence the agent, end the session, speak the message, hang up."""
        ccid = session.call_id
        try:
            try:
                await asyncio.wait_for(state.greeting_ended.wait(), GREETING_TIMEOUT)
            except TimeoutError:
                log.info("call %s: no greeting end reported; leaving the message", ccid)
            if session.state == "ended":
                return  # the machine hung up first
            await session.clear()
            await session.add_transcript("assistant", text, voicemail=True)
            await session.end("voicemail")
            await self._speak_then_hang_up(session, state, text)
        finally:
            self._last_words.pop(ccid, None)

    async def _speak_then_hang_up(self, session: CallSession, state: CallState, text: str) -> None:
        """Telnyx speaks `text`; we hang up on `call.speak.ended` (or after a deadline)."""
        ccid = session.call_id
        try:
            await self.rest.speak(ccid, text)
        except _CARRIER_ERRORS as exc:
            log.warning("call %s: speak failed: %s", ccid, exc)
        else:
            deadline = 5.0 + SPEAK_SECONDS_PER_CHAR * len(text)
            try:
                await asyncio.wait_for(state.speak_ended.wait(), deadline)
            except TimeoutError:
                log.info("call %s: no call.speak.ended; hanging up", ccid)
        try:
            await self.hangup(session)
        except _CARRIER_ERRORS as exc:
            log.info("call %s: hangup after speaking: %s", ccid, exc)

    # --- call control ------------------------------------------------------------------

    async def hangup(self, call: CallSession) -> None:
        """Idempotent: a call Telnyx already reported (or confirms) as ended is not an error."""
        ccid = call.call_id
        if call.direction == "outbound" and ccid == call.key:
            return  # the dial never returned a call_control_id: nothing to hang up
        if ccid in self._hung_up or not self._hangups_sent.add(ccid):
            return
        try:
            await self.rest.hangup(ccid)
        except TelnyxAPIError as exc:
            if not exc.call_ended:
                self._hangups_sent.discard(ccid)  # a later hangup may try again
                raise
            log.debug("call %s: already ended at Telnyx", ccid)
        except PatterConnectionError:
            self._hangups_sent.discard(ccid)
            raise

    async def transfer(self, call: CallSession, to: str) -> None:
        await self.rest.transfer(call.call_id, to)

    async def say_and_hangup(self, call: CallSession, text: str) -> None:
        """Last words in Telnyx's own voice, then hang up; returns once they are under way
        (the speaking outlives the session, like a voicemail drop)."""
        ccid = call.call_id
        state = self._state(call)
        if state.last_words is not None:
            return  # already saying goodbye (or leaving a voicemail)

        async def speak() -> None:
            try:
                await self._speak_then_hang_up(call, state, text)
            finally:
                self._last_words.pop(ccid, None)

        self._last_words[ccid] = state
        state.last_words = self._spawn(speak(), f"last-words:{ccid}")

    async def start_recording(self, call: CallSession) -> None:
        await self.rest.record_start(call.call_id, format="mp3", channels="dual")
        call.event("recording", status="started")

    async def dial(self, call: CallSession, token: str, request: DialRequest) -> Dialed:
        key = call.key
        self._track(call)  # before the dial: its events may beat the response
        data = await self.rest.dial(
            connection_id=self.connection_id,
            to=request.to,
            from_=request.from_,
            webhook_url=self._table.public_url(WEBHOOK_PATH),
            webhook_url_method="POST",
            client_state=encode_client_state(key),
            timeout_secs=request.ring_timeout,
            answering_machine_detection="detect_beep" if request.machine_detection else "disabled",
            **self._stream_fields(key, token),
        )
        ccid = str(data.get("call_control_id") or "")
        if not ccid:
            raise CallError("Telnyx accepted the call but returned no call_control_id")
        return Dialed(ccid)

    async def point_at(self, host: str) -> Restore:
        """Point the Call Control application's webhook at `host`; the returned coroutine
        function puts back the URL that was there before."""
        app_id = self.connection_id
        before = await self.rest.get_application(app_id)
        previous = str(before.get("webhook_event_url") or "")
        await self.rest.update_application(
            app_id, webhook_event_url=f"https://{host}/webhooks/telnyx/voice"
        )
        log.info("Telnyx application %s now points at https://%s", app_id, host)

        async def restore() -> None:
            # runs as serve() exits, after the REST client was closed: it reopens for this
            # one request and is closed again, or its session would leak
            try:
                await self.rest.update_application(app_id, webhook_event_url=previous)
            finally:
                await self.rest.aclose()
            log.info("Telnyx application %s restored", app_id)

        return restore

    async def aclose(self) -> None:
        """Let last words in progress (voicemail drops, goodbyes) finish (briefly), cancel the
        rest, close REST."""
        drops = [s.last_words for s in self._last_words.values() if s.last_words is not None]
        if drops:
            await asyncio.wait(drops, timeout=VOICEMAIL_DRAIN)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.rest.aclose()


if TYPE_CHECKING:  # mypy holds the adapter to the contract
    _contract: type[Carrier] = TelnyxAdapter
