"""The call runner of the fake Telnyx: call lifecycles, media streams and signed webhooks.

Choices where Telnyx's behaviour is not pinned down by its docs:
- Webhooks are delivered one at a time per call, in order, unless `shuffle_webhooks` (random
  0..`shuffle_window_s` delays, concurrent, so later events may arrive first) or
  `duplicate_webhooks` (every event delivered twice with the same `data.id`) is set. A
  non-2xx answer, a connection error or no answer within `webhook_timeout_s` is retried after
  each of `webhook_retry_delays` with `meta.attempt` incremented; every attempt is re-signed
  with a fresh timestamp. When all attempts fail a `CallError("webhook_failed")` is recorded.
- `stream_url` is dialled as given, query string included (Telnyx docs never say it is
  dropped, and integrations rely on `?token=` reaching the socket). `ws://` and `wss://` are
  accepted; `stream_auth_token` goes in the `x-telnyx-streaming-auth-token` upgrade header
  only: the `connected` frame stays exactly as documented (`{"event","version"}`).
- Payload fields follow Telnyx's published examples: `call.initiated` has `direction` and
  `state` (parked/bridging); `call.answered` has `start_time`, `codec`, `sampling_rate` but
  no `state`/`direction` (as in a real capture); `call.hangup` has `state: "hangup"`.
  `sip_hangup_cause` values are plausible SIP codes, not verified.
- A transfer rings the target as `set_callee` says; if it answers, our leg's stream stops and
  our leg ends with `call.hangup` (normal_clearing, hangup_source "unknown"); if it does not,
  a `call.hangup` for the transfer leg (its own ids) is sent and our leg stays up.
- AMD: a human is detected at once; a machine too (`call.machine.detection.ended` machine),
  and its greeting ends with a beep `machine_greeting_s` after answer
  (`call.machine.greeting.ended` beep_detected, for detect_beep/detect_words/greeting_end;
  the premium.* events for premium). A machine with no audio greets with silence + a beep.
- An inbound call nobody answers is abandoned by the caller after `ring_timeout_s`
  (`originator_cancel`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from nacl.signing import SigningKey

from ..phone.audio import AudioInput, Callee, callee_audio
from ..phone.network import HTTP_FAILURES, PhoneNetwork
from .media import FakeCall, MediaStream
from .util import (
    STREAM_TOKEN_HEADER,
    PhoneNumber,
    RestRequest,
    StreamParams,
    Webhook,
    iso_now,
    new_api_key,
    new_call_control_id,
    new_connection_id,
    new_uuid,
    sign,
)

log = logging.getLogger("getpatter.testing.telnyx")
_SIP_CAUSE = {
    "normal_clearing": "200",
    "user_busy": "486",
    "call_rejected": "603",
    "originator_cancel": "487",
    "timeout": "480",
    "time_limit": "200",
    "unspecified": "500",
}


@dataclass
class _Ctl:
    """Per-call machinery the call object itself need not expose."""

    webhook_url: str = ""
    queue: asyncio.Queue[tuple[dict[str, Any], str]] = field(default_factory=asyncio.Queue)
    deliveries: set[asyncio.Task[Any]] = field(default_factory=set)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # answered/rejected/over
    stream: MediaStream | None = None
    pump: asyncio.Task[Any] | None = None
    stream_pending: bool = False
    stream_params: StreamParams | None = None  # from dial, used on answer
    callee: Callee = field(default_factory=Callee)
    amd: str = ""
    timeout_secs: float = 30.0
    time_limit_secs: float = 14400.0
    hangup_after: float | None = None
    record_on_answer: bool = False
    recording: dict[str, Any] | None = None
    finishing: bool = False


class CallRunner(PhoneNetwork):
    """Everything a call does after it exists; FakeTelnyx adds the public API."""

    user_agent = "telnyx-webhooks"

    def __init__(
        self, api_key: str | None, connection_id: str | None, host: str, port: int
    ) -> None:
        super().__init__(host, port)
        self.api_key = api_key or new_api_key()
        self.connection_id = connection_id or new_connection_id()
        self.user_id = new_uuid()  # the account, as in the media `start` frame
        self.signing_key = SigningKey.generate()
        self.calls: dict[str, FakeCall] = {}  # by call_control_id
        self.numbers: dict[str, PhoneNumber] = {}  # by E.164
        self.requests: list[RestRequest] = []
        self.webhooks: list[Webhook] = []
        #: the Call Control app's webhook url (outbound calls without `webhook_url`)
        self.webhook_url = ""
        # --- knobs --------------------------------------------------------------------------------
        self.shuffle_webhooks = False
        self.shuffle_window_s = 0.2
        self.duplicate_webhooks = False
        self.webhook_timeout_s = 5.0
        self.webhook_retry_delays: tuple[float, ...] = (0.25, 0.5)
        self.ring_timeout_s = 30.0
        self.speak_seconds_per_char = 0.02
        self.rng = random.Random()
        self._ctl: dict[str, _Ctl] = {}
        self._command_ids: dict[tuple[str, str], float] = {}

    @property
    def base_url(self) -> str:
        """REST root, the `https://api.telnyx.com/v2` of this network."""
        return f"http://{self.host}:{self.port}/v2"

    def ctl(self, call: FakeCall) -> _Ctl:
        return self._ctl[call.call_control_id]

    def seen_command(self, scope: str, command_id: str) -> bool:
        """True if `command_id` was used in this scope in the last 60 s (then: ignore it)."""
        now = asyncio.get_running_loop().time()
        last = self._command_ids.get((scope, command_id))
        return last is not None and now - last < 60.0

    def remember_command(self, scope: str, command_id: str) -> None:
        self._command_ids[(scope, command_id)] = asyncio.get_running_loop().time()

    def new_call(
        self, direction: str, from_: str, to: str, audio: AudioInput | None, webhook_url: str
    ) -> FakeCall:
        call = FakeCall(
            runner=self,
            call_control_id=new_call_control_id(),
            call_leg_id=new_uuid(),
            call_session_id=new_uuid(),
            connection_id=self.connection_id,
            user_id=self.user_id,
            direction=direction,
            from_=from_,
            to=to,
            audio=audio,
        )
        self.calls[call.call_control_id] = call
        ctl = _Ctl(webhook_url=webhook_url)
        self._ctl[call.call_control_id] = ctl
        self.spawn(call, self._webhook_worker(call, ctl))
        return call

    def spawn(self, call: FakeCall, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self.ctl(call).tasks.append(task)
        return task

    # --- inbound ------------------------------------------------------------------------------

    async def run_inbound(self, call: FakeCall) -> None:
        """call.initiated (parked), then wait for the app to answer/reject/hang up."""
        ctl = self.ctl(call)
        if not ctl.webhook_url:
            call._error("no_webhook_url", f"{call.to} has no Call Control webhook url")
            await self.finish(call, "unspecified", "unknown")
            return
        self.emit(call, "call.initiated", self._initiated_fields(call))
        try:
            await asyncio.wait_for(ctl.settled.wait(), self.ring_timeout_s)
        except TimeoutError:
            await self.finish(call, "originator_cancel", "caller")  # the caller gave up

    def _initiated_fields(self, call: FakeCall) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "caller_id_name": call.from_,
            "calling_party_type": "pstn",
            "direction": call.direction,
            "state": call.state,
            "start_time": iso_now(),
        }
        if call.direction == "incoming":
            fields.update(connection_codecs="PCMU,PCMA", offered_codecs="PCMU,PCMA")
        return fields

    # --- outbound -----------------------------------------------------------------------------

    async def run_outbound(self, call: FakeCall) -> None:
        """call.initiated (bridging), then the far end answers, or not, as `set_callee` says."""
        ctl = self.ctl(call)
        await asyncio.sleep(0)  # the dial response goes out first
        self.emit(call, "call.initiated", self._initiated_fields(call))
        callee = ctl.callee
        if callee.answer in ("failed", "busy"):
            await asyncio.sleep(callee.answer_delay)
            if callee.answer == "failed":
                await self.finish(call, "unspecified", "unknown")
            else:
                await self.finish(call, "user_busy", "callee")
            return
        if callee.answer == "no-answer" or callee.answer_delay >= ctl.timeout_secs:
            await asyncio.sleep(ctl.timeout_secs)
            await self.finish(call, "timeout", "unknown")
            return
        await asyncio.sleep(callee.answer_delay)
        if call.ended or ctl.finishing:
            return
        call._inbound.extend(callee_audio(callee))
        await self.answer(call, ctl.stream_params)
        if ctl.amd and ctl.amd != "disabled":
            self.spawn(call, self._amd(call, ctl, callee))

    async def _amd(self, call: FakeCall, ctl: _Ctl, callee: Callee) -> None:
        machine = callee.answer == "machine"
        premium = ctl.amd == "premium"
        if premium:
            result = "machine" if machine else "human_residence"
            self.emit(call, "call.machine.premium.detection.ended", {"result": result})
        else:
            result = "machine" if machine else "human"
            self.emit(call, "call.machine.detection.ended", {"result": result})
        call.answered_by = result
        call._notify()
        if not machine or ctl.amd == "detect":
            return
        await asyncio.sleep(callee.machine_greeting_s)
        if call.ended:
            return
        event = "call.machine.premium.greeting.ended" if premium else "call.machine.greeting.ended"
        self.emit(call, event, {"result": "beep_detected"})

    # --- call state ---------------------------------------------------------------------------

    async def answer(self, call: FakeCall, params: StreamParams | None) -> None:
        """The call connects: call.answered, recording, then the media stream if asked for."""
        ctl = self.ctl(call)
        ctl.settled.set()
        ctl.stream_pending = params is not None
        call.state = "answered"
        call.answered_at = asyncio.get_running_loop().time()
        call._notify()
        self.emit(
            call,
            "call.answered",
            {
                "calling_party_type": "pstn",
                "codec": "PCMU",
                "sampling_rate": 8000,
                "start_time": iso_now(),
            },
        )
        if ctl.record_on_answer:
            self.start_recording(call, "wav", "single")
        if ctl.hangup_after is not None:
            self.spawn(call, self._later(call, ctl.hangup_after, "normal_clearing", None))
        self.spawn(call, self._later(call, ctl.time_limit_secs, "time_limit", "unknown"))
        if params is not None:
            await self.start_stream(call, params)

    async def _later(self, call: FakeCall, delay: float, cause: str, source: str | None) -> None:
        await asyncio.sleep(delay)
        if not call.ended:
            await self.finish(call, cause, source or self.party_side(call))

    @staticmethod
    def party_side(call: FakeCall) -> str:
        """hangup_source when the far end (not the app) hangs up."""
        return "caller" if call.direction == "incoming" else "callee"

    @staticmethod
    def app_side(call: FakeCall) -> str:
        """hangup_source when the app's leg hangs up."""
        return "callee" if call.direction == "incoming" else "caller"

    def party_hangup(self, call: FakeCall) -> None:
        """FakeCall.hangup(): the far end hangs up (or abandons / declines before answer)."""
        if call.answered:
            cause = "normal_clearing"
        elif call.direction == "incoming":
            cause = "originator_cancel"
        else:
            cause = "call_rejected"
        self.spawn(call, self.finish(call, cause, self.party_side(call)))

    def party_dtmf(self, call: FakeCall, digit: str) -> None:
        self.emit(call, "call.dtmf.received", {"digit": digit})

    async def finish(self, call: FakeCall, cause: str, source: str) -> None:
        """Terminal state: stream `stop` + close, streaming.stopped, call.hangup, recordings;
        returns once those webhooks are delivered (or given up on)."""
        ctl = self.ctl(call)
        if call.ended or ctl.finishing:
            return
        ctl.finishing = True
        ctl.settled.set()
        await self.stop_stream(call)
        call.state = "hangup"
        call.hangup_cause, call.hangup_source = cause, source
        call.sip_hangup_cause = _SIP_CAUSE.get(cause, "500")
        call.ended_at = asyncio.get_running_loop().time()
        call._notify()
        stats = {"packet_count": "0", "skip_packet_count": "0"}
        self.emit(
            call,
            "call.hangup",
            {
                "start_time": iso_now(),
                "state": "hangup",
                "hangup_cause": cause,
                "hangup_source": source,
                "sip_hangup_cause": call.sip_hangup_cause,
                "call_quality_stats": {"inbound": dict(stats), "outbound": dict(stats)},
            },
        )
        if ctl.recording is not None:
            self.save_recording(call)
        await self._drain(ctl)
        call._finished.set()
        call._notify()

    async def _drain(self, ctl: _Ctl) -> None:
        budget = (self.webhook_timeout_s + sum(self.webhook_retry_delays)) * (
            len(self.webhook_retry_delays) + 1
        ) + self.shuffle_window_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(budget * 2):
                await ctl.queue.join()
                while ctl.deliveries:
                    await asyncio.gather(*list(ctl.deliveries), return_exceptions=True)

    # --- media streams ------------------------------------------------------------------------

    async def start_stream(self, call: FakeCall, params: StreamParams) -> None:
        """Dial the app's stream_url (replacing a live stream); streaming.started/failed."""
        ctl = self.ctl(call)
        ctl.stream_pending = True
        if ctl.stream is not None:
            await self.stop_stream(call)
        stream = MediaStream(call, stream_id=new_uuid(), params=params)
        headers = self._proxy_headers(params.url)
        if params.auth_token:
            headers[STREAM_TOKEN_HEADER] = params.auth_token
        call.stream_urls.append(params.url)
        try:
            assert self._session is not None
            await asyncio.wait_for(
                stream.connect(self._session, self._local(params.url), headers), 10.0
            )
        except HTTP_FAILURES as exc:
            call._error("stream_connect_failed", f"WebSocket to {params.url} failed: {exc}")
            self.emit(
                call,
                "streaming.failed",
                {
                    "failure_reason": "connection_failed",
                    "stream_id": stream.stream_id,
                    "stream_params": {"stream_url": params.url, "track": params.track},
                    "stream_type": "websocket",
                },
            )
            ctl.stream_pending = False
            call._notify()
            return
        if ctl.finishing:  # hung up during the handshake: just go away
            await stream.close()
            ctl.stream_pending = False
            return
        ctl.stream = stream
        self.emit(
            call, "streaming.started", {"stream_id": stream.stream_id, "stream_url": params.url}
        )
        ctl.pump = self.spawn(call, self._pump(call, ctl, stream))

    async def _pump(self, call: FakeCall, ctl: _Ctl, stream: MediaStream) -> None:
        """Stream until either side closes; then `stop` + close 1000 and streaming.stopped."""
        try:
            await stream.run()
        finally:
            ctl.stream_pending = False  # open (then over) or never started: settled either way
            await stream.stop()
            if ctl.stream is stream:
                ctl.stream = None
            if call._stream is stream:
                call._stream = None
            fields = {"stream_id": stream.stream_id, "stream_url": stream.params.url}
            self.emit(call, "streaming.stopped", fields)
            call._notify()

    async def stop_stream(self, call: FakeCall) -> None:
        """Stop the live stream (if any) and wait until streaming.stopped is queued."""
        ctl = self.ctl(call)
        stream, pump = ctl.stream, ctl.pump
        if stream is None:
            return
        await stream.stop()
        if pump is not None and pump is not asyncio.current_task():
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(pump), 5.0)

    # --- transfer and speak -------------------------------------------------------------------

    async def run_transfer(self, call: FakeCall, to: str, from_: str, ring_s: float) -> None:
        """Ring the target; if it answers our leg ends, else its own leg's call.hangup."""
        callee = self.callee(to)
        if callee.answer in ("busy", "failed"):
            await asyncio.sleep(callee.answer_delay)
            cause, source = (
                ("user_busy", "callee")
                if callee.answer == "busy"
                else (
                    "unspecified",
                    "unknown",
                )
            )
        elif callee.answer == "no-answer" or callee.answer_delay >= ring_s:
            await asyncio.sleep(ring_s)
            cause, source = "timeout", "unknown"
        else:
            await asyncio.sleep(callee.answer_delay)
            if not call.ended:
                await self.finish(call, "normal_clearing", "unknown")
            return
        if call.ended:
            return
        leg = {
            "call_control_id": new_call_control_id(),
            "call_leg_id": new_uuid(),
            "call_session_id": call.call_session_id,
            "connection_id": call.connection_id,
            "client_state": call.client_state,
            "from": from_,
            "to": to,
            "start_time": iso_now(),
            "state": "hangup",
            "hangup_cause": cause,
            "hangup_source": source,
            "sip_hangup_cause": _SIP_CAUSE.get(cause, "500"),
        }
        self.emit_payload(call, "call.hangup", leg)

    async def run_speak(self, call: FakeCall, text: str) -> None:
        """call.speak.ended once the text has been "spoken" (speak_seconds_per_char)."""
        await asyncio.sleep(len(text) * self.speak_seconds_per_char)
        if not call.ended:
            self.emit(call, "call.speak.ended", {"status": "completed"})

    def wall(self, loop_time: float) -> float:
        """Unix time of a loop timestamp."""
        return time.time() - (asyncio.get_running_loop().time() - loop_time)

    # --- recordings ---------------------------------------------------------------------------

    def start_recording(self, call: FakeCall, fmt: str, channels: str) -> None:
        self.ctl(call).recording = {"format": fmt, "channels": channels, "started": time.time()}

    def save_recording(self, call: FakeCall) -> None:
        """record_stop or hangup: call.recording.saved (the fake keeps no media)."""
        ctl = self.ctl(call)
        rec, ctl.recording = ctl.recording, None
        if rec is None:
            return
        url = f"{self.base_url}/recordings/{new_uuid()}.{rec['format']}"
        fields = {
            "channels": rec["channels"],
            "format": rec["format"],
            "recording_started_at": iso_now(rec["started"]),
            "recording_ended_at": iso_now(),
            "recording_urls": {rec["format"]: url},
            "public_recording_urls": {rec["format"]: url},
        }
        call.recordings.append(fields)
        self.emit(call, "call.recording.saved", fields)

    # --- webhooks -----------------------------------------------------------------------------

    def emit(self, call: FakeCall, event_type: str, fields: dict[str, Any]) -> None:
        """Queue a webhook about `call`, with the ids and current client_state."""
        payload: dict[str, Any] = {
            "call_control_id": call.call_control_id,
            "call_leg_id": call.call_leg_id,
            "call_session_id": call.call_session_id,
            "connection_id": call.connection_id,
            "client_state": call.client_state,
            "from": call.from_,
            "to": call.to,
        }
        payload.update(fields)
        self.emit_payload(call, event_type, payload)

    def emit_payload(self, call: FakeCall, event_type: str, payload: dict[str, Any]) -> None:
        ctl = self.ctl(call)
        if not ctl.webhook_url:
            call._error("no_webhook_url", f"nowhere to send {event_type}")
            return
        data = {
            "record_type": "event",
            "event_type": event_type,
            "id": new_uuid(),
            "occurred_at": iso_now(),
            "payload": payload,
        }
        for _ in range(2 if self.duplicate_webhooks else 1):
            if self.shuffle_webhooks:
                delay = self.rng.uniform(0.0, self.shuffle_window_s)
                task = asyncio.create_task(self._deliver(call, data, ctl.webhook_url, delay))
                ctl.deliveries.add(task)
                task.add_done_callback(ctl.deliveries.discard)
            else:
                ctl.queue.put_nowait((data, ctl.webhook_url))

    async def _webhook_worker(self, call: FakeCall, ctl: _Ctl) -> None:
        """Deliver queued webhooks one at a time, in order."""
        while True:
            data, url = await ctl.queue.get()
            try:
                await self._deliver(call, data, url)
            finally:
                ctl.queue.task_done()

    def sign(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        ts = int(time.time()) if timestamp is None else timestamp
        return sign(self.signing_key, body, ts)

    async def _deliver(
        self, call: FakeCall, data: dict[str, Any], url: str, delay: float = 0.0
    ) -> None:
        """POST one event, retrying failures with `meta.attempt` counting up."""
        if delay:
            await asyncio.sleep(delay)
        attempts = len(self.webhook_retry_delays) + 1
        for attempt in range(1, attempts + 1):
            hook = await self._post(call, data, url, attempt)
            if hook.ok:
                return
            if attempt < attempts:
                await asyncio.sleep(self.webhook_retry_delays[attempt - 1])
        why = hook.error or f"HTTP {hook.status}"
        call._error("webhook_failed", f"{data['event_type']} to {url} failed: {why}")

    async def _post(self, call: FakeCall, data: dict[str, Any], url: str, attempt: int) -> Webhook:
        envelope = {"data": data, "meta": {"attempt": attempt, "delivered_to": url}}
        body = json.dumps(envelope).encode()
        headers = self._proxy_headers(url)
        headers["Content-Type"] = "application/json"
        headers.update(self.sign(body))
        loop_time = asyncio.get_running_loop().time()
        hook = Webhook(
            event_type=data["event_type"],
            call_control_id=call.call_control_id,
            url=url,
            body=body,
            data=envelope,
            headers=dict(headers),
            attempt=attempt,
            time=loop_time,
        )
        self.webhooks.append(hook)
        reply = await self._request_app(
            "POST", url, data=body, headers=headers, timeout_s=self.webhook_timeout_s
        )
        hook.status, hook.response_body, hook.error = reply.status, reply.body, reply.error
        call._notify()
        return hook
