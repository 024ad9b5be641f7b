"""The call runner of the fake Plivo: call lifecycles, Plivo XML execution and signed webhooks.

Choices where Plivo's behaviour is not pinned down by its docs:
- Webhooks are form-encoded POSTs (GET when the URL's method says so), signed with
  `X-Plivo-Signature-V3` (and the same value as `X-Plivo-Signature-Ma-V3`: one main account)
  over a fresh nonce. The stream's WebSocket handshake is signed the same way (as a GET).
- Numbers are written as digits without `+` in webhooks (`From`, `To`), as in Plivo's examples.
- An answer or transfer URL that fails (unreachable, non-2xx, not XML, bad XML) ends the call
  (`failed`, HangupSource `Error`) with a `CallError` recorded.
- The call hangs up when its XML runs out. A `<Stream>` without `keepCallAlive="true"` runs
  beside the rest of the XML, so a document holding only that stream ends the call at once.
- `<Stream>` urls must be `wss://`; `extraHeaders` may hold `name=value` pairs of letters and
  digits, separated by commas, at most 512 bytes; a bidirectional stream takes only the
  inbound track. Anything else ends the call with an error.
- Machine detection reports after `amd_delay_s`, for humans too (`Machine=false`); with
  `machine_detection="hangup"` a machine is hung up on. A machine's greeting ends with a beep
  `machine_greeting_s` after answer, which `<Wait beep="true">` waits for.
- A transfer (`POST Call/{uuid}/` with `aleg_url`) stops the running XML (its stream closes)
  and runs the document fetched from `aleg_url`. `<Dial>` rings its `<Number>` as
  `set_callee` says and, if answered, stays bridged until the call ends.
- A request cancelled before answer (`DELETE Request/{uuid}/`) ends with CallStatus `cancel`.
- Recordings keep no media; each one's callback is sent when it ends (call end, time limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp

from ..phone.audio import AudioInput, Callee, callee_audio
from ..phone.network import HTTP_FAILURES, PhoneNetwork
from .media import CONTENT_TYPES, FakeCall, MediaStream
from .util import (
    Application,
    Outbound,
    PhoneNumber,
    Recording,
    RestRequest,
    Webhook,
    digits,
    new_auth_id,
    new_auth_token,
    new_uuid,
    sign,
)
from .xmldoc import HEADER_PAIR, Doc, XmlError, attr_bool, attr_seconds, parse

log = logging.getLogger("getpatter.testing.plivo")


@dataclass
class _Ctl:
    """Per-call machinery the call object itself need not expose."""

    answer_url: str = ""
    answer_method: str = "POST"
    hangup_url: str = ""
    hangup_method: str = "POST"
    opts: Outbound | None = None
    callee: Callee = field(default_factory=Callee)
    exec_task: asyncio.Task[Any] | None = None
    end: tuple[str, str, str] | None = None  # (status, HangupCause, HangupSource) asked for
    redirect: tuple[str, str] | None = None  # (url, method) a transfer asked for
    streams: list[MediaStream] = field(default_factory=list)
    queue: asyncio.Queue[tuple[str, str, str, dict[str, str]]] = field(
        default_factory=asyncio.Queue
    )
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # streaming, or over
    finishing: bool = False


def _stamp(ts: float | None = None) -> str:
    dt = datetime.now(UTC) if ts is None else datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%d %H:%M:%S")


class CallRunner(PhoneNetwork):
    """Everything a call does after it exists; FakePlivo adds the public API."""

    user_agent = "PlivoHTTP"

    def __init__(self, auth_id: str | None, auth_token: str | None, host: str, port: int) -> None:
        super().__init__(host, port)
        self.auth_id = auth_id or new_auth_id()
        self.auth_token = auth_token or new_auth_token()
        self.calls: dict[str, FakeCall] = {}  # by CallUUID
        self.by_request: dict[str, FakeCall] = {}  # outbound calls by request_uuid
        self.numbers: dict[str, PhoneNumber] = {}  # by digits
        self.applications: dict[str, Application] = {}  # by app_id
        self.recordings: dict[str, Recording] = {}  # by recording_id
        self.requests: list[RestRequest] = []
        self.webhooks: list[Webhook] = []
        #: seconds `<Speak>` "speaks" per character; how long machine detection takes
        self.speak_seconds_per_char = 0.02
        self.amd_delay_s = 0.2
        self.webhook_timeout_s = 5.0
        self._ctl: dict[str, _Ctl] = {}

    @property
    def base_url(self) -> str:
        """The API root, `https://api.plivo.com` of this network (the app adds `/v1/…`)."""
        return f"http://{self.host}:{self.port}"

    def number(self, number: str) -> PhoneNumber | None:
        return self.numbers.get(digits(number))

    def application(self, number: str) -> Application | None:
        """The application the number is linked to."""
        found = self.number(number)
        return self.applications.get(found.app_id) if found is not None else None

    def ctl(self, call: FakeCall) -> _Ctl:
        return self._ctl[call.call_uuid]

    def new_call(
        self, direction: str, from_: str, to: str, audio: AudioInput | None, request_uuid: str = ""
    ) -> FakeCall:
        call = FakeCall(
            runner=self,
            call_uuid=new_uuid(),
            request_uuid=request_uuid,
            account_id=self.auth_id,
            direction=direction,
            from_=from_,
            to=to,
            audio=audio,
        )
        self.calls[call.call_uuid] = call
        if request_uuid:
            self.by_request[request_uuid] = call
        ctl = self._ctl[call.call_uuid] = _Ctl()
        self.spawn(call, self._webhook_worker(call, ctl))
        return call

    def spawn(self, call: FakeCall, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self.ctl(call).tasks.append(task)
        return task

    # --- lifecycles ------------------------------------------------------------------------

    async def run_inbound(self, call: FakeCall, hangup_after: float | None) -> None:
        ctl = self.ctl(call)
        if not ctl.answer_url:
            call._error("no_answer_url", f"{call.to} has no application answer_url")
            await self.finish(call, "failed", "INVALID_ANSWER_URL", "Error")
            return
        outcome, doc = await self._interruptible(
            call, self._fetch(call, "answer", ctl.answer_url, ctl.answer_method)
        )
        if outcome != "ok":
            await self._conclude(call, outcome)
            return
        self._answer(call)
        if hangup_after is not None:
            self.spawn(call, self._later(call, hangup_after))
        await self._execute(call, doc)

    async def _later(self, call: FakeCall, delay: float) -> None:
        await asyncio.sleep(delay)
        self.party_hangup(call)

    def create_outbound(self, from_: str, to: str, opts: Outbound) -> FakeCall:
        """Called by the REST layer once `POST Call/` is validated."""
        call = self.new_call("outbound", from_, to, None, request_uuid=new_uuid())
        ctl = self.ctl(call)
        ctl.opts = opts
        ctl.answer_url, ctl.answer_method = opts.answer_url, opts.answer_method
        ctl.hangup_url, ctl.hangup_method = opts.hangup_url, opts.hangup_method
        ctl.callee = self.callee("+" + digits(to))
        self.spawn(call, self._run_outbound(call, ctl))
        return call

    async def _run_outbound(self, call: FakeCall, ctl: _Ctl) -> None:
        await asyncio.sleep(0)  # the 201 goes out before anything happens
        assert ctl.opts is not None
        outcome, answered = await self._interruptible(call, self._ring(call, ctl, ctl.opts))
        if outcome != "ok" or answered is not True:
            if outcome == "ok":
                status, cause, source = answered
                await self.finish(call, status, cause, source)
            else:
                await self._conclude(call, outcome)
            return
        self._answer(call)
        call._inbound.extend(callee_audio(ctl.callee))
        if ctl.opts.machine_detection:
            self.spawn(call, self._amd(call, ctl, ctl.opts))
        outcome, doc = await self._interruptible(
            call, self._fetch(call, "answer", ctl.answer_url, ctl.answer_method)
        )
        if outcome != "ok":
            await self._conclude(call, outcome)
            return
        await self._execute(call, doc)

    async def _ring(self, call: FakeCall, ctl: _Ctl, opts: Outbound) -> Any:
        """True once answered, else the (status, cause, source) the call ends with."""
        callee = ctl.callee
        if callee.answer == "failed":
            await asyncio.sleep(callee.answer_delay)
            return "failed", "UNALLOCATED_NUMBER", "Callee"
        if callee.answer == "busy":
            await asyncio.sleep(callee.answer_delay)
            return "busy", "USER_BUSY", "Callee"
        if callee.answer == "no-answer" or callee.answer_delay >= opts.ring_timeout:
            await asyncio.sleep(opts.ring_timeout)
            return "timeout", "NO_ANSWER", "Plivo"
        await asyncio.sleep(callee.answer_delay)
        return True

    async def _amd(self, call: FakeCall, ctl: _Ctl, opts: Outbound) -> None:
        await asyncio.sleep(self.amd_delay_s)
        if call.ended:
            return
        machine = ctl.callee.answer == "machine"
        call.answered_by = "machine" if machine else "human"
        call._notify()
        if opts.machine_detection_url:
            params = {
                "From": call.from_,
                "To": call.to,
                "Machine": "true" if machine else "false",
                "RequestUUID": call.request_uuid,
                "ALegRequestUUID": call.request_uuid,
                "CallUUID": call.call_uuid,
                "ALegUUID": call.call_uuid,
                "IfMachine": "hangup" if opts.machine_detection == "hangup" else "continue",
                "Direction": "outbound",
                "Event": "MachineDetection",
                "CallStatus": "in-progress",
            }
            url, method = opts.machine_detection_url, opts.machine_detection_method
            ctl.queue.put_nowait(("machine_detection", url, method, params))
        if machine and opts.machine_detection == "hangup":
            self.request_end(call, "completed", "NORMAL_CLEARING", "Plivo")

    def _answer(self, call: FakeCall) -> None:
        call.status = "in-progress"
        call.answered_at = asyncio.get_running_loop().time()
        call._notify()

    # --- ending ----------------------------------------------------------------------------

    def request_end(self, call: FakeCall, status: str, cause: str, source: str) -> None:
        """Stop whatever the call is doing and end it (hang-up, cancel)."""
        ctl = self.ctl(call)
        if call.ended or ctl.end is not None:
            return
        ctl.end = (status, cause, source)
        if ctl.exec_task is not None:
            ctl.exec_task.cancel()
        else:
            self.spawn(call, self.finish(call, status, cause, source))
        call._notify()

    def party_hangup(self, call: FakeCall) -> None:
        """FakeCall.hangup(): the far end hangs up (or abandons, or declines)."""
        side = "Caller" if call.direction == "inbound" else "Callee"
        if call.answered:
            self.request_end(call, "completed", "NORMAL_CLEARING", side)
        elif call.direction == "inbound":
            self.request_end(call, "completed", "ORIGINATOR_CANCEL", side)
        else:
            self.request_end(call, "busy", "CALL_REJECTED", side)

    def redirect(self, call: FakeCall, url: str, method: str) -> None:
        """A transfer: leave the running XML (and its stream) for the document at `url`."""
        ctl = self.ctl(call)
        ctl.redirect = (url, method)
        if ctl.exec_task is not None:
            ctl.exec_task.cancel()
        call._notify()

    async def _conclude(self, call: FakeCall, outcome: str) -> None:
        ctl = self.ctl(call)
        if outcome == "failed":
            await self.finish(call, "failed", "INVALID_ANSWER_XML", "Error")
        elif ctl.end is not None:
            await self.finish(call, *ctl.end)
        else:
            await self.finish(call, "completed", "NORMAL_CLEARING", "Answer XML")

    async def finish(self, call: FakeCall, status: str, cause: str, source: str) -> None:
        """Terminal state: streams closed, recordings ended, the hang-up webhook delivered."""
        ctl = self.ctl(call)
        if call.ended or ctl.finishing:
            return
        ctl.finishing = True
        if ctl.end is not None:
            status, cause, source = ctl.end
        for stream in ctl.streams:
            await stream.stop()
        call.status, call.hangup_cause, call.hangup_source = status, cause, source
        call.ended_at = asyncio.get_running_loop().time()
        ctl.settled.set()
        for rec in self.recordings.values():
            if rec.call_uuid == call.call_uuid:
                self.end_recording(call, rec)
        if ctl.hangup_url:
            params = self.call_params(call)
            duration = 0
            if call.answered_at is not None:
                duration = round(call.ended_at - call.answered_at)
            params.update(
                HangupCause=cause,
                HangupSource=source,
                Duration=str(duration),
                BillDuration=str(duration),
                EndTime=_stamp(),
                Event="Hangup",
            )
            ctl.queue.put_nowait(("hangup", ctl.hangup_url, ctl.hangup_method, params))
        call._notify()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctl.queue.join(), self.webhook_timeout_s + 5)
        call._finished.set()
        call._notify()

    # --- XML -------------------------------------------------------------------------------

    async def _interruptible(
        self, call: FakeCall, coro: Coroutine[Any, Any, Any]
    ) -> tuple[Literal["ok", "interrupted", "failed"], Any]:
        """Run a phase a hang-up or a transfer may cut short: ("interrupted", None) if one
        did, ("failed", None) after an XML error (recorded on the call), else ("ok", result)."""
        ctl = self.ctl(call)
        if ctl.end is not None or ctl.redirect is not None:
            coro.close()
            return "interrupted", None
        task: asyncio.Task[Any] = asyncio.create_task(coro)
        ctl.exec_task = task
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            ctl.exec_task = None
        if task.cancelled():
            return "interrupted", None
        exc = task.exception()
        if isinstance(exc, XmlError):
            call._error("xml", str(exc))
            return "failed", None
        if exc is not None:
            log.error("fake Plivo: call %s crashed", call.call_uuid, exc_info=exc)
            call._error("internal", f"fake Plivo internal error: {exc!r}")
            return "failed", None
        return "ok", task.result()

    async def _execute(self, call: FakeCall, doc: Doc | None) -> None:
        """Run documents (following Redirects and transfers) until the call ends."""
        ctl = self.ctl(call)
        outcome = "ok"
        while ctl.end is None and outcome != "failed":
            if ctl.redirect is not None:
                url, method = ctl.redirect
                ctl.redirect = None
                for stream in ctl.streams:
                    await stream.stop()
                outcome, doc = await self._interruptible(
                    call, self._fetch(call, "transfer", url, method)
                )
                continue
            if doc is None:
                break
            outcome, doc = await self._interruptible(call, self._run_doc(call, ctl, doc))
        await self._conclude(call, outcome)

    async def _run_doc(self, call: FakeCall, ctl: _Ctl, doc: Doc) -> Doc | None:
        """Run one document's elements; returns the next document (Redirect) if any."""
        call.xml.append(doc.text)
        for el in doc.elements:
            if el.tag != "Stream":
                ctl.settled.set()
            if el.tag == "Stream":
                await self._stream(call, ctl, el)
            elif el.tag == "Speak":
                text = "".join(el.itertext()).strip()
                call.said.append(text)
                call._notify()
                await asyncio.sleep(len(text) * self.speak_seconds_per_char)
            elif el.tag == "Wait":
                await asyncio.sleep(self._waitattr_seconds(call, ctl, el))
            elif el.tag == "Hangup":
                ctl.end = ("completed", "NORMAL_CLEARING", "Answer XML")
                return None
            elif el.tag == "Redirect":
                url = (el.text or "").strip()
                return await self._fetch(call, "redirect", url, el.get("method", "POST"))
            elif el.tag == "Dial":
                await self._dial(call, el)
            # Play, GetDigits, Record, ...: kept in call.xml, otherwise no effect
        return None

    def _waitattr_seconds(self, call: FakeCall, ctl: _Ctl, el: ET.Element) -> float:
        length = attr_seconds(el, "length", 1.0)
        loop_now = asyncio.get_running_loop().time()
        if attr_bool(el, "silence"):
            min_silence = attr_seconds(el, "minSilence", 2000.0) / 1000
            talking = len(call._inbound) / 8000  # the far end still has this much to say
            return min(length, talking + min_silence)
        if (
            attr_bool(el, "beep")
            and ctl.callee.answer == "machine"
            and call.answered_at is not None
        ):
            beep_at = call.answered_at + ctl.callee.machine_greeting_s
            return min(length, max(0.0, beep_at - loop_now))
        return length

    async def _dial(self, call: FakeCall, el: ET.Element) -> None:
        targets = [(n.text or "").strip() for n in el if n.tag in ("Number", "User")]
        if not targets:
            raise XmlError("<Dial> has no <Number> or <User>")
        call.transfers.extend(targets)
        call._notify()
        callee = self.callee("+" + digits(targets[0]))
        timeout = attr_seconds(el, "timeout", 60.0)
        if callee.answer in ("busy", "failed", "no-answer") or callee.answer_delay >= timeout:
            await asyncio.sleep(min(timeout, callee.answer_delay or timeout))
            return
        await asyncio.sleep(callee.answer_delay)
        await asyncio.sleep(attr_seconds(el, "timeLimit", 14400.0))

    async def _stream(self, call: FakeCall, ctl: _Ctl, el: ET.Element) -> None:
        url = (el.text or "").strip()
        if not url.startswith("wss://"):
            raise XmlError(f"<Stream> url must be wss://, got {url!r}")
        bidirectional = attr_bool(el, "bidirectional")
        keep_alive = attr_bool(el, "keepCallAlive")
        content_type = el.get("contentType", "audio/x-l16;rate=8000")
        if content_type not in CONTENT_TYPES:
            raise XmlError(f"<Stream contentType={content_type!r}> is not allowed")
        track = el.get("audioTrack", "inbound")
        if track not in ("inbound", "outbound", "both"):
            raise XmlError(f"<Stream audioTrack={track!r}> is not allowed")
        if bidirectional and track != "inbound":
            raise XmlError("a bidirectional <Stream> takes the inbound audioTrack only")
        headers = el.get("extraHeaders", "")
        pairs = [p for p in headers.split(",") if p] if headers else []
        if len(headers) > 512 or not all(HEADER_PAIR.fullmatch(p) for p in pairs):
            raise XmlError(f"<Stream extraHeaders={headers!r}>: name=value of [A-Za-z0-9] only")
        call.extra_headers = headers
        stream = MediaStream(
            call,
            stream_id=new_uuid(),
            content_type=content_type,
            bidirectional=bidirectional,
            extra_headers=";".join(pairs),
        )
        handshake = self._proxy_headers(url)
        handshake.update(sign(self.auth_token, "GET", url, {}))
        try:
            assert self._session is not None
            await asyncio.wait_for(stream.connect(self._session, self._local(url), handshake), 10)
        except (*HTTP_FAILURES, aiohttp.WSServerHandshakeError) as exc:
            call._error("stream_connect_failed", f"WebSocket to {url} failed: {exc}")
            return  # the XML goes on (and ends the call if nothing follows)
        ctl.streams.append(stream)
        ctl.settled.set()
        if keep_alive and bidirectional:
            await self._pump(stream)
        else:
            self.spawn(call, self._pump(stream))

    @staticmethod
    async def _pump(stream: MediaStream) -> None:
        try:
            await stream.run()
        finally:
            await stream.stop()

    # --- HTTP to the app -----------------------------------------------------------------------

    def call_params(self, call: FakeCall) -> dict[str, str]:
        """What every call webhook carries."""
        params = {
            "CallUUID": call.call_uuid,
            "From": call.from_,
            "To": call.to,
            "CallStatus": call.status,
            "Direction": call.direction,
        }
        if call.request_uuid:
            params.update(
                RequestUUID=call.request_uuid,
                ALegUUID=call.call_uuid,
                ALegRequestUUID=call.request_uuid,
            )
        return params

    async def webhook(
        self, call: FakeCall, kind: str, url: str, method: str, params: dict[str, str]
    ) -> Webhook:
        """Make a V3-signed request to the app exactly as Plivo would, and record it."""
        method = method.upper()
        headers = self._proxy_headers(url)
        body: bytes | None = None
        if method == "GET":
            parts = urlsplit(url)
            query = "&".join(q for q in (parts.query, urlencode(params)) if q)
            url = urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
            headers.update(sign(self.auth_token, "GET", url, {}))
        else:
            body = urlencode(params).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            headers.update(sign(self.auth_token, "POST", url, params))
        now = asyncio.get_running_loop().time()
        hook = Webhook(kind, call.call_uuid, method, url, dict(params), dict(headers), now)
        self.webhooks.append(hook)
        reply = await self._request_app(
            method, url, data=body, headers=headers, timeout_s=self.webhook_timeout_s
        )
        hook.status, hook.content_type = reply.status, reply.content_type
        hook.body, hook.error = reply.body, reply.error
        call._notify()
        return hook

    async def _fetch(self, call: FakeCall, kind: str, url: str, method: str = "POST") -> Doc:
        """Ask the app for XML; XmlError if it cannot be used."""
        if not url:
            raise XmlError(f"no {kind} url")
        hook = await self.webhook(call, kind, url, method, self.call_params(call))
        if hook.status != 200:
            raise XmlError(f"{kind} url {url} failed: {hook.error or f'HTTP {hook.status}'}")
        if hook.content_type not in ("text/xml", "application/xml"):
            raise XmlError(f"{kind} url returned Content-Type {hook.content_type!r}, not XML")
        return parse(hook.body)

    async def _webhook_worker(self, call: FakeCall, ctl: _Ctl) -> None:
        """Deliver hang-up, machine-detection and recording callbacks one at a time, in order."""
        while True:
            kind, url, method, params = await ctl.queue.get()
            try:
                await self.webhook(call, kind, url, method, params)
            finally:
                ctl.queue.task_done()

    # --- recordings (used by the REST layer) ---------------------------------------------------

    def start_recording(
        self, call: FakeCall, time_limit: float, callback_url: str, callback_method: str
    ) -> Recording:
        rec_id = new_uuid()
        rec = Recording(
            recording_id=rec_id,
            call_uuid=call.call_uuid,
            url=f"https://media.plivo.com/v1/Account/{self.auth_id}/Recording/{rec_id}.mp3",
            started=time.time(),
            time_limit=time_limit,
            callback_url=callback_url,
            callback_method=callback_method,
            api_id=new_uuid(),
        )
        self.recordings[rec_id] = rec
        self.spawn(call, self._recording_limit(call, rec))
        return rec

    async def _recording_limit(self, call: FakeCall, rec: Recording) -> None:
        await asyncio.sleep(rec.time_limit)
        self.end_recording(call, rec)

    def end_recording(self, call: FakeCall, rec: Recording) -> None:
        if rec.ended is not None:
            return
        rec.ended = time.time()
        if not rec.callback_url:
            return
        ms = int((rec.ended - rec.started) * 1000)
        params = {
            "api_id": rec.api_id,
            "record_url": rec.url,
            "call_uuid": call.call_uuid,
            "recording_id": rec.recording_id,
            "recording_duration": str(ms // 1000),
            "recording_duration_ms": str(ms),
            "recording_start_ms": str(int(rec.started * 1000)),
            "recording_end_ms": str(int(rec.ended * 1000)),
        }
        item = ("recording", rec.callback_url, rec.callback_method, params)
        self.ctl(call).queue.put_nowait(item)
