"""The call runner of the fake Twilio: call lifecycles, TwiML execution and signed webhooks.

Choices where Twilio's behaviour is not pinned down:
- A voice/redirect/action webhook that fails (unreachable, non-200, wrong Content-Type, bad
  TwiML) or a `<Stream>` url that is not `wss://` ends the call with status `failed` and a
  `CallError` in `call.errors` (Twilio would speak an application error and hang up).
- A failed WebSocket handshake records 31920 and the TwiML continues, as `<Connect>` would.
- Hosts not passed to `route()` are unreachable unless they are loopback addresses: the fake
  never talks to the internet. Requests to routed hosts carry the public `Host` and
  `X-Forwarded-Proto`, like a TLS-terminating proxy (ngrok) would.
- AMD: a human is detected at once; a machine is `machine_start` at once (Enable) or
  `machine_end_beep` after its greeting (DetectMessageEnd). A machine with no audio given
  greets with silence ending in a 1 kHz beep.
- `<Dial>` rings the target as configured by `set_callee` (default: answers at once) and stays
  bridged until the call ends (or `timeLimit`); `<Say>` takes `say_seconds_per_char`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

import aiohttp

from ..phone.audio import AudioInput, Callee, callee_audio
from ..phone.network import PhoneNetwork
from .media import FakeCall, MediaStream
from .util import (
    API_VERSION,
    ERR_CONTENT_TYPE,
    ERR_HTTP_RETRIEVAL,
    ERR_STREAM_HANDSHAKE,
    ERR_STREAM_URL,
    FakeRecording,
    Outbound,
    PhoneNumber,
    RestRequest,
    TwimlError,
    Webhook,
    amd_result,
    attr_seconds,
    compute_signature,
    dial_targets,
    new_sid,
    parse_twiml,
    rfc2822,
    strip_query,
)

log = logging.getLogger("getpatter.testing.twilio")
WEBHOOK_TIMEOUT_S = 15.0  # Twilio's webhook timeout


@dataclass
class _Doc:
    text: str
    url: str  # base for relative urls in the document
    verbs: list[ET.Element]


@dataclass
class _Ctl:
    """Per-call machinery the call object itself need not expose."""

    status_callback: str = ""
    status_callback_method: str = "POST"
    events: frozenset[str] = frozenset({"completed"})
    cb_seq: int = 0
    queue: asyncio.Queue[tuple[str, str, str, dict[str, str]]] = field(
        default_factory=asyncio.Queue
    )
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    forks: list[MediaStream] = field(default_factory=list)


class CallRunner(PhoneNetwork):
    """Everything a call does after it exists; FakeTwilio adds the public API."""

    user_agent = "TwilioProxy/1.1"

    def __init__(
        self, account_sid: str | None, auth_token: str | None, host: str, port: int
    ) -> None:
        super().__init__(host, port)
        self.account_sid = account_sid or new_sid("AC")
        self.auth_token = auth_token or secrets.token_hex(16)
        self.calls: dict[str, FakeCall] = {}
        self.numbers: dict[str, PhoneNumber] = {}  # by PN sid
        self.recordings: dict[str, FakeRecording] = {}  # by RE sid
        self.requests: list[RestRequest] = []
        self.webhooks: list[Webhook] = []
        #: seconds a <Say> "speaks" per character of text
        self.say_seconds_per_char = 0.02
        self._ctl: dict[str, _Ctl] = {}

    @property
    def base_url(self) -> str:
        """REST root: the client appends `/2010-04-01/Accounts/...`."""
        return f"http://{self.host}:{self.port}"

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

    def number(self, phone_number: str) -> PhoneNumber | None:
        """The IncomingPhoneNumber with this E.164 number, if any."""
        return next((n for n in self.numbers.values() if n.phone_number == phone_number), None)

    def _new_call(self, direction: str, from_: str, to: str, audio: AudioInput | None) -> FakeCall:
        call = FakeCall(
            call_sid=new_sid("CA"),
            account_sid=self.account_sid,
            direction=direction,
            from_=from_,
            to=to,
            audio=audio,
        )
        self.calls[call.call_sid] = call
        self._ctl[call.call_sid] = _Ctl()
        return call

    def _spawn(self, ctl: _Ctl, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        ctl.tasks.append(task)
        return task

    async def _run_inbound(
        self, call: FakeCall, ctl: _Ctl, number: PhoneNumber, hangup_after: float | None
    ) -> None:
        self._spawn(ctl, self._callback_worker(call, ctl))
        call.status = "ringing"
        if not number.voice_url:
            call._error(ERR_HTTP_RETRIEVAL, f"{number.phone_number} has no voice url")
            await self._finish(call, ctl, "failed")
            return
        fetch = self._fetch(call, "voice", number.voice_url, number.voice_method)
        outcome, doc = await self._interruptible(call, fetch)
        if outcome != "ok":
            await self._finish(call, ctl, "failed" if outcome == "failed" else "canceled")
            return
        self._answer(call, ctl)
        if hangup_after is not None:
            self._spawn(ctl, self._hangup_later(call, hangup_after))
        await self._execute(call, ctl, doc)

    async def _hangup_later(self, call: FakeCall, delay: float) -> None:
        await asyncio.sleep(delay)
        call._request_end("completed")

    # --- outbound (driven by the REST API) -------------------------------------------------

    def create_outbound(self, to: str, from_: str, opts: Outbound) -> FakeCall:
        """Called by the REST layer once `POST Calls.json` is validated."""
        call = self._new_call("outbound-api", from_, to, None)
        ctl = self._ctl[call.call_sid]
        ctl.status_callback = opts.status_callback
        ctl.status_callback_method = opts.status_callback_method
        ctl.events = opts.events
        self._spawn(ctl, self._run_outbound(call, ctl, opts))
        return call

    async def _run_outbound(self, call: FakeCall, ctl: _Ctl, opts: Outbound) -> None:
        self._spawn(ctl, self._callback_worker(call, ctl))
        await asyncio.sleep(0)  # the 201 goes out before anything happens
        callee = self.callee(call.to)
        outcome, result = await self._interruptible(call, self._ring(call, ctl, callee, opts))
        if outcome != "ok" or result != "answered":
            status = {"ok": result, "failed": "failed"}.get(outcome, "canceled")
            await self._finish(call, ctl, status)
            return
        self._answer(call, ctl)
        call._inbound.extend(callee_audio(callee))
        if opts.record:
            self.start_recording(call, "OutboundAPI", opts.recording)
        extra: dict[str, str] = {}
        if opts.machine_detection:
            answered_by, delay = amd_result(callee, opts.machine_detection)
            if opts.async_amd:
                self._spawn(ctl, self._async_amd(call, ctl, opts, answered_by, delay))
            else:
                outcome, _ = await self._interruptible(call, asyncio.sleep(delay))
                if outcome != "ok":
                    await self._execute(call, ctl, None)  # hung up or redirected meanwhile
                    return
                del call._inbound[: int(delay * 8000)]  # the greeting went by during detection
                call.answered_by = answered_by
                extra = {"AnsweredBy": answered_by, "MachineDetectionDuration": self._amd_ms(call)}
        if opts.twiml:
            load: Coroutine[Any, Any, _Doc] = self._inline(opts.twiml)
        else:
            load = self._fetch(call, "voice", opts.url, opts.method, extra)
        outcome, doc = await self._interruptible(call, load)
        if outcome == "failed":
            await self._finish(call, ctl, "failed")
            return
        await self._execute(call, ctl, doc)

    async def _ring(self, call: FakeCall, ctl: _Ctl, callee: Callee, opts: Outbound) -> str:
        """Dialling until the far end answers; returns "answered" or a terminal status."""
        self._status_event(call, ctl, "initiated", "initiated")
        if callee.answer == "failed":
            return "failed"
        call.status = "ringing"
        call._notify()
        self._status_event(call, ctl, "ringing", "ringing")
        if callee.answer == "busy":
            await asyncio.sleep(callee.answer_delay)
            return "busy"
        if callee.answer == "no-answer" or callee.answer_delay >= opts.timeout:
            await asyncio.sleep(opts.timeout)
            return "no-answer"
        await asyncio.sleep(callee.answer_delay)
        return "answered"

    @staticmethod
    def _amd_ms(call: FakeCall) -> str:
        assert call.answered_at is not None
        return str(int((asyncio.get_running_loop().time() - call.answered_at) * 1000))

    async def _async_amd(
        self, call: FakeCall, ctl: _Ctl, opts: Outbound, answered_by: str, delay: float
    ) -> None:
        await asyncio.sleep(delay)
        if call.ended:
            return
        call.answered_by = answered_by
        call._notify()
        if opts.amd_callback:
            params = {
                "AccountSid": self.account_sid,
                "CallSid": call.call_sid,
                "AnsweredBy": answered_by,
                "MachineDetectionDuration": self._amd_ms(call),
            }
            ctl.queue.put_nowait(("amd", opts.amd_callback, opts.amd_method, params))

    # --- call state --------------------------------------------------------------------------

    def _answer(self, call: FakeCall, ctl: _Ctl) -> None:
        call.status = "in-progress"
        call.answered_at = asyncio.get_running_loop().time()
        call._notify()
        self._status_event(call, ctl, "answered", "in-progress")

    async def _finish(self, call: FakeCall, ctl: _Ctl, status: str) -> None:
        """Terminal state: close forks, finalise recordings, send the final status callback."""
        if call.ended:
            return
        for fork in ctl.forks:
            await fork.stop()
        reason = call._end_reason
        if reason is not None and status in ("completed", "canceled"):
            status = reason
        if status == "completed" and call.answered_at is None:
            status = "canceled"  # hung up before anyone answered
        call.status = status
        call.ended_at = asyncio.get_running_loop().time()
        ctl.settled.set()
        for rec in self.recordings.values():
            if rec.call_sid == call.call_sid:
                self.finish_recording(rec)
        self._status_event(call, ctl, "completed", status)
        call._notify()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctl.queue.join(), WEBHOOK_TIMEOUT_S + 5)
        call._finished.set()
        call._notify()

    def call_params(self, call: FakeCall, status: str | None = None) -> dict[str, str]:
        """The core fields every call webhook carries."""
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": call.call_sid,
            "CallStatus": status or call.status,
            "Direction": call.direction,
            "From": call.from_,
            "To": call.to,
            "Caller": call.from_,
            "Called": call.to,
        }
        if call.answered_by:
            params["AnsweredBy"] = call.answered_by
        return params

    def _status_event(self, call: FakeCall, ctl: _Ctl, event: str, status: str) -> None:
        """Queue a status callback if the app asked for this event."""
        if not ctl.status_callback or event not in ctl.events:
            return
        params = self.call_params(call, status)
        params.update(
            CallbackSource="call-progress-events",
            SequenceNumber=str(ctl.cb_seq),
            Timestamp=rfc2822(),
        )
        ctl.cb_seq += 1
        if event == "completed":
            answered, ended = call.answered_at, call.ended_at
            secs = round(ended - answered) if answered is not None and ended else 0
            params["CallDuration"] = str(secs)
        ctl.queue.put_nowait(("status", ctl.status_callback, ctl.status_callback_method, params))

    async def _callback_worker(self, call: FakeCall, ctl: _Ctl) -> None:
        """Deliver status/AMD/recording callbacks one at a time, in order."""
        while True:
            kind, url, method, params = await ctl.queue.get()
            try:
                await self.webhook(call.call_sid, kind, url, method, params)
            finally:
                ctl.queue.task_done()

    async def _interruptible(
        self, call: FakeCall, coro: Coroutine[Any, Any, Any]
    ) -> tuple[Literal["ok", "interrupted", "failed"], Any]:
        """Run a phase of the call that a hangup/cancel/redirect may cut short.

        ("interrupted", None) if it was; ("failed", None) after a Twilio error (recorded on
        the call); else ("ok", result)."""
        if call._end_reason is not None or call._redirect is not None:
            coro.close()  # asked to end/redirect between two phases
            return "interrupted", None
        task: asyncio.Task[Any] = asyncio.create_task(coro)
        call._exec_task = task
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            call._exec_task = None
        if task.cancelled():
            return "interrupted", None
        exc = task.exception()
        if isinstance(exc, TwimlError):
            call._error(exc.code, exc.message)
            return "failed", None
        if exc is not None:
            log.error("fake Twilio: call %s crashed", call.call_sid, exc_info=exc)
            call._error(0, f"fake Twilio internal error: {exc!r}")
            return "failed", None
        return "ok", task.result()

    # --- TwiML ---------------------------------------------------------------------------------

    async def _execute(self, call: FakeCall, ctl: _Ctl, doc: _Doc | None) -> None:
        """Run TwiML documents (following Redirects and REST updates) until the call ends."""
        outcome = "ok"
        while call._end_reason is None and outcome != "failed":
            if call._redirect is not None:
                kind, value, method = call._redirect
                call._redirect = None
                if kind == "twiml":
                    load = self._inline(value)
                else:
                    load = self._fetch(call, "redirect", value, method)
                outcome, doc = await self._interruptible(call, load)
                continue
            if doc is None:
                break
            outcome, doc = await self._interruptible(call, self._run_doc(call, ctl, doc))
        await self._finish(call, ctl, "failed" if outcome == "failed" else "completed")

    async def _inline(self, twiml: str) -> _Doc:
        return _Doc(twiml, "", parse_twiml(twiml))

    async def _run_doc(self, call: FakeCall, ctl: _Ctl, doc: _Doc) -> _Doc | None:
        """Execute one document's verbs; returns the next document (Redirect/action) if any."""
        call.twiml.append(doc.text)
        for verb in doc.verbs:
            if verb.tag not in ("Connect", "Start"):
                ctl.settled.set()
            tag = verb.tag
            if tag == "Say":
                text = "".join(verb.itertext()).strip()
                call.said.append(text)
                call._notify()
                await asyncio.sleep(len(text) * self.say_seconds_per_char)
            elif tag == "Pause":
                await asyncio.sleep(attr_seconds(verb, "length", 1.0))
            elif tag == "Hangup":
                call._end_reason = "completed"
                return None
            elif tag == "Reject":
                call._end_reason = "busy"
                return None
            elif tag == "Redirect":
                url = urljoin(doc.url, (verb.text or "").strip())
                return await self._fetch(call, "redirect", url, verb.get("method", "POST"))
            elif tag == "Dial":
                targets = dial_targets(verb)
                call.transfers.extend(targets)
                call._notify()
                dial_status = await self._dial(verb, targets)
                if verb.get("action"):
                    url = urljoin(doc.url, verb.get("action", ""))
                    extra = {"DialCallStatus": dial_status, "DialCallSid": new_sid("CA")}
                    method = verb.get("method", "POST")
                    return await self._fetch(call, "action", url, method, extra)
            elif tag == "Connect":
                el = verb.find("Stream")
                stream = None if el is None else await self._open_stream(call, el, True)
                if stream is not None:
                    await self._pump_stream(stream)
                ctl.settled.set()
                if el is not None:
                    if verb.get("action"):
                        url = urljoin(doc.url, verb.get("action", ""))
                        return await self._fetch(call, "action", url, verb.get("method", "POST"))
            elif tag == "Start":
                el = verb.find("Stream")
                stream = None if el is None else await self._open_stream(call, el, False)
                if stream is not None:
                    ctl.forks.append(stream)
                    self._spawn(ctl, self._pump_stream(stream))
            elif tag == "Stop":
                for fork in ctl.forks:
                    await fork.stop()
            # Play, Gather, Record, ...: recorded in call.twiml, otherwise no effect
        return None

    async def _dial(self, verb: ET.Element, targets: list[str]) -> str:
        """A transfer: ring the target; if it answers, stay bridged until the call ends."""
        callee = self.callee(targets[0] if targets else "")
        timeout = attr_seconds(verb, "timeout", 30.0)
        if callee.answer in ("busy", "failed"):
            await asyncio.sleep(callee.answer_delay)
            return callee.answer
        if callee.answer == "no-answer" or callee.answer_delay >= timeout:
            await asyncio.sleep(timeout)
            return "no-answer"
        await asyncio.sleep(callee.answer_delay)
        await asyncio.sleep(attr_seconds(verb, "timeLimit", 4 * 3600.0))  # Twilio's max
        return "completed"

    async def _open_stream(
        self, call: FakeCall, el: ET.Element, bidirectional: bool
    ) -> MediaStream | None:
        """<Stream>: dial the app's wss:// url with the query dropped; None if that fails."""
        url = el.get("url", "")
        if not url.startswith("wss://"):
            raise TwimlError(ERR_STREAM_URL, f"<Stream> url must be wss://, got {url!r}")
        public = strip_query(url)
        params = {p.get("name", ""): p.get("value", "") for p in el.findall("Parameter")}
        stream = MediaStream(
            call,
            stream_sid=new_sid("MZ"),
            custom_parameters=params,
            bidirectional=bidirectional,
        )
        headers = self._proxy_headers(public)
        headers["X-Twilio-Signature"] = compute_signature(self.auth_token, public, [])
        try:
            assert self._session is not None
            await stream.connect(self._session, self._local(public), headers)
        except (aiohttp.ClientError, OSError, TimeoutError, LookupError) as exc:
            call._error(ERR_STREAM_HANDSHAKE, f"WebSocket handshake to {public} failed: {exc}")
            return None
        return stream

    @staticmethod
    async def _pump_stream(stream: MediaStream) -> None:
        """Stream until the app closes; if cut short (hangup/redirect): `stop` + close 1000."""
        try:
            await stream.run()
        finally:
            await stream.stop()

    # --- HTTP to the app ---------------------------------------------------------------------

    async def webhook(
        self,
        call_sid: str,
        kind: str,
        url: str,
        method: str,
        params: dict[str, str],
    ) -> Webhook:
        """Make a signed request to the app exactly as Twilio would, and record it."""
        method = method.upper()
        headers = self._proxy_headers(url)
        headers["I-Twilio-Idempotency-Token"] = str(uuid.uuid4())
        body: bytes | None = None
        if method == "GET":
            parts = urlsplit(url)
            query = "&".join(q for q in (parts.query, urlencode(params)) if q)
            url = urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
            signature = compute_signature(self.auth_token, url, [])
        else:
            body = urlencode(params).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            signature = compute_signature(self.auth_token, url, list(params.items()))
        headers["X-Twilio-Signature"] = signature
        loop_time = asyncio.get_running_loop().time()
        hook = Webhook(kind, call_sid, method, url, dict(params), signature, loop_time)
        self.webhooks.append(hook)
        reply = await self._request_app(
            method, url, data=body, headers=headers, timeout_s=WEBHOOK_TIMEOUT_S
        )
        hook.status, hook.content_type = reply.status, reply.content_type
        hook.body, hook.error = reply.body, reply.error
        return hook

    async def _fetch(
        self,
        call: FakeCall,
        kind: str,
        url: str,
        method: str = "POST",
        extra: dict[str, str] | None = None,
    ) -> _Doc:
        """Ask the app for TwiML; TwimlError (with Twilio's code) if it can't be used."""
        params = self.call_params(call)
        params.update(extra or {})
        hook = await self.webhook(call.call_sid, kind, url, method, params)
        if hook.status != 200:
            why = hook.error or f"HTTP {hook.status}"
            raise TwimlError(ERR_HTTP_RETRIEVAL, f"{kind} webhook {url} failed: {why}")
        if hook.content_type not in ("text/xml", "application/xml"):
            msg = f"{kind} webhook returned Content-Type {hook.content_type!r}, not TwiML"
            raise TwimlError(ERR_CONTENT_TYPE, msg)
        return _Doc(hook.body, hook.url, parse_twiml(hook.body))

    # --- recordings (used by the REST layer and Record=true) ----------------------------------

    def start_recording(self, call: FakeCall, source: str, opts: dict[str, str]) -> FakeRecording:
        rec = FakeRecording(
            sid=new_sid("RE"),
            call_sid=call.call_sid,
            source=source,
            started_wall=time.time(),
            started=asyncio.get_running_loop().time(),
            channels=int(opts.get("RecordingChannels", "1") == "dual") + 1,
            track=opts.get("RecordingTrack", "both"),
            status_callback=opts.get("RecordingStatusCallback", ""),
            status_callback_method=opts.get("RecordingStatusCallbackMethod", "POST"),
            events=frozenset(opts.get("RecordingStatusCallbackEvent", "completed").split()),
        )
        self.recordings[rec.sid] = rec
        return rec

    def finish_recording(self, rec: FakeRecording, status: str = "completed") -> None:
        """Stop a recording; callback (if asked for) once it is `completed`."""
        if rec.status in ("completed", "absent"):
            return
        if rec.duration is None:
            rec.duration = round(asyncio.get_running_loop().time() - rec.started)
        rec.status = status
        call = self.calls[rec.call_sid]
        if status != "completed" or not rec.status_callback or "completed" not in rec.events:
            return
        base = f"{self.base_url}/{API_VERSION}/Accounts/{self.account_sid}"
        params = {
            "AccountSid": self.account_sid,
            "CallSid": call.call_sid,
            "RecordingSid": rec.sid,
            "RecordingUrl": f"{base}/Recordings/{rec.sid}",
            "RecordingStatus": "completed",
            "RecordingDuration": str(rec.duration),
            "RecordingChannels": str(rec.channels),
            "RecordingSource": rec.source,
            "RecordingStartTime": rfc2822(rec.started_wall),
            "ErrorCode": "0",
        }
        item = ("recording", rec.status_callback, rec.status_callback_method, params)
        self._ctl[call.call_sid].queue.put_nowait(item)
