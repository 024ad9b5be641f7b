"""The media side of the fake Telnyx: one call's state (FakeCall) and its streaming WebSocket.

The fake is the WebSocket *client* (as Telnyx is): it dials the app's `stream_url`, sends
`connected`, `start`, then a 20 ms `media` frame at real time for as long as the stream is up.
In `rtp` bidirectional mode it plays the app's PCMU back at real time and echoes marks only
once the audio queued before them has played. Every app mistake is recorded on the call and
answered with an `error` frame; the socket stays up.

Choices where Telnyx's docs are silent or unverified:
- `media.timestamp` is milliseconds since the stream started ("0", "20", ...); `chunk`
  counts from "1" per track; `sequence_number` counts every numbered frame from `start`
  ("1"). Mark echoes and error frames carry no `sequence_number` (as documented).
- `error` frames are `{"event","stream_id","payload":{code,title,detail}}` with 100003
  malformed_frame (bad JSON, binary frame, unknown event, mark without name) or 100004
  invalid_media (bad base64, an rtp message outside 20 ms..30 s, a non-MP3 in mp3 mode).
- Without `stream_bidirectional_mode: "rtp"` Telnyx plays each `media` message as an MP3
  file: MP3s are kept in `mp3_received` (not played); raw PCMU is refused.
- `stop.stop` carries `user_id` and `call_control_id`.
"""

# ruff: noqa: ASYNC109  (timeout= parameters are the public test API)

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import json
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp

from ..twilio.util import FRAME_BYTES, FRAME_S, ULAW_SILENCE, Int16Array, ulaw_decode
from .util import (
    ERR_MEDIA_INVALID,
    ERR_MEDIA_MALFORMED,
    AudioInput,
    CallError,
    StreamParams,
    load_audio,
)

RTP_MIN_BYTES = FRAME_BYTES  # 20 ms of PCMU
RTP_MAX_BYTES = 30 * 8000  # 30 s of PCMU
# Twilio-style status words for `FakeCall.status`, so one test can drive both fakes.
_STATUS_BY_CAUSE = {
    "normal_clearing": "completed",
    "time_limit": "completed",
    "user_busy": "busy",
    "call_rejected": "busy",
    "timeout": "no-answer",
    "no_answer": "no-answer",
    "originator_cancel": "canceled",
    "not_found": "failed",
    "unspecified": "failed",
}


class _Engine(Protocol):
    """What a FakeCall needs from the network to act as the far-end party."""

    def party_hangup(self, call: FakeCall) -> None: ...

    def party_dtmf(self, call: FakeCall, digit: str) -> None: ...


class FakeCall:
    """One call leg on the fake network, seen from the phone network's side.

    Everything the app did is recorded here with loop timestamps so tests can assert on it.
    Attribute names follow the fake Twilio's FakeCall where the concept exists.
    """

    def __init__(
        self,
        *,
        engine: _Engine,
        call_control_id: str,
        call_leg_id: str,
        call_session_id: str,
        connection_id: str,
        user_id: str,
        direction: str,
        from_: str,
        to: str,
        audio: AudioInput | None = None,
    ) -> None:
        self._engine = engine
        self.call_control_id = call_control_id
        self.call_leg_id = call_leg_id
        self.call_session_id = call_session_id
        self.connection_id = connection_id
        self.user_id = user_id
        self.direction = direction  # "incoming" | "outgoing"
        self.from_ = from_
        self.to = to
        self.state = "parked" if direction == "incoming" else "bridging"
        self.client_state: str | None = None  # base64, echoed in later webhooks
        self.hangup_cause: str | None = None
        self.hangup_source: str | None = None
        self.sip_hangup_cause: str | None = None
        self.answered_by: str | None = None  # AMD result, once detected
        self.custom_parameters: dict[str, str] = {}
        self.stream_ids: list[str] = []
        self.stream_urls: list[str] = []  # as dialled, query string included
        #: every message the app sent on a media socket: (loop time, event, message)
        self.received: list[tuple[float, str, dict[str, Any]]] = []
        #: every message the fake sent on a media socket: (loop time, event, message)
        self.sent: list[tuple[float, str, dict[str, Any]]] = []
        #: μ-law the fake has played to the far end, 160 bytes per 20 ms, in order
        self.played = bytearray()
        self.mp3_received: list[bytes] = []  # media payloads in mp3 mode (not played)
        self.marks_echoed: list[str] = []
        self.clears = 0
        self.dtmf_sent: list[str] = []  # keys the far end pressed
        self.app_dtmf: list[str] = []  # digits the app sent with `send_dtmf`
        self.errors: list[CallError] = []
        self.said: list[str] = []  # `speak` payloads
        self.playbacks: list[str] = []  # `playback_start` audio urls
        self.transfers: list[str] = []  # `transfer` targets
        self.recordings: list[dict[str, Any]] = []  # call.recording.saved payloads
        #: every action the app sent for this call: (loop time, action, JSON body)
        self.commands: list[tuple[float, str, dict[str, Any]]] = []
        self.created_at = asyncio.get_running_loop().time()
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self._inbound = bytearray(load_audio(audio))  # far-end audio not yet streamed
        self._stream: MediaStream | None = None
        self._changed = asyncio.Event()
        self._finished = asyncio.Event()

    # --- state -----------------------------------------------------------------------------

    @property
    def stream_id(self) -> str | None:
        """stream_id of the current (or last) media stream."""
        return self.stream_ids[-1] if self.stream_ids else None

    @property
    def ended(self) -> bool:
        return self.state == "hangup"

    @property
    def answered(self) -> bool:
        return self.answered_at is not None

    @property
    def status(self) -> str:
        """The call's state in the fake Twilio's words (ringing/in-progress/completed/...)."""
        if self.state == "hangup":
            return _STATUS_BY_CAUSE.get(self.hangup_cause or "", "completed")
        return "in-progress" if self.state == "answered" else "ringing"

    @property
    def error_codes(self) -> list[str]:
        return [e.code for e in self.errors]

    @property
    def stream_open(self) -> bool:
        return self._stream is not None and self._stream.open

    def heard_audio(self) -> Int16Array:
        """What the far end heard from the app, decoded to int16 at 8 kHz."""
        return ulaw_decode(self.played)

    def _notify(self) -> None:
        """Wake every wait_for(); called on any state change."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _error(self, code: str, message: str, **detail: Any) -> None:
        loop_time = asyncio.get_running_loop().time()
        self.errors.append(CallError(code, message, loop_time, dict(detail)))
        self._notify()

    # --- far-end actions -------------------------------------------------------------------

    async def send_audio(self, audio: AudioInput) -> None:
        """Queue more far-end audio; streamed after what is already queued, at real time."""
        self._inbound.extend(load_audio(audio))

    async def send_dtmf(self, digit: str) -> None:
        """The far end presses a key: a `dtmf` frame on the live stream and the
        `call.dtmf.received` webhook."""
        if len(digit) != 1 or digit not in "0123456789*#ABCD":
            raise ValueError(f"not a DTMF digit: {digit!r}")
        if not self.answered or self.ended:
            raise RuntimeError(f"call {self.call_control_id} is not connected ({self.state})")
        self.dtmf_sent.append(digit)
        self._notify()
        if self._stream is not None and self._stream.open:
            await self._stream.send_dtmf(digit)
        self._engine.party_dtmf(self, digit)

    async def hangup(self) -> None:
        """The far end hangs up: `stop` + close 1000 on the stream, then `call.hangup`."""
        if not self.ended:
            self._engine.party_hangup(self)
        await self.wait_ended()

    # --- waiting helpers -------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until predicate() is true; re-checked on every state change (and every 20 ms)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                try:
                    await asyncio.wait_for(self._changed.wait(), FRAME_S)
                except TimeoutError:
                    pass

    async def wait_stream(self, timeout: float = 5.0) -> str:
        """Wait until a media stream has sent `start`; returns its stream_id."""
        await self.wait_for(lambda: self.stream_open or self.ended, timeout)
        if not self.stream_open:
            raise RuntimeError(f"call {self.call_control_id} ended without a stream")
        assert self.stream_id is not None
        return self.stream_id

    async def wait_for_mark(self, name: str, timeout: float = 5.0) -> float:
        """Wait until mark `name` has been echoed; returns the loop time of the echo."""
        await self.wait_for(lambda: name in self.marks_echoed, timeout)
        return next(t for t, ev, m in self.sent if ev == "mark" and m["mark"]["name"] == name)

    async def wait_ended(self, timeout: float = 10.0) -> None:
        """Wait until the call is over and its final webhooks have been delivered."""
        async with asyncio.timeout(timeout):
            await self._finished.wait()

    def __repr__(self) -> str:
        return (
            f"<FakeCall {self.call_control_id} {self.direction} "
            f"{self.from_}->{self.to} {self.state}>"
        )


def _looks_like_mp3(data: bytes) -> bool:
    """An ID3 tag or an MPEG audio frame sync at the start."""
    return data.startswith(b"ID3") or (len(data) > 1 and data[0] == 0xFF and data[1] >= 0xE0)


class MediaStream:
    """One media streaming WebSocket session, from the fake's (Telnyx's) side."""

    def __init__(self, call: FakeCall, *, stream_id: str, params: StreamParams) -> None:
        self.call = call
        self.stream_id = stream_id
        self.params = params
        self.open = False
        self.close_code: int | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._seq = 0
        self._send_lock = asyncio.Lock()
        self._stopped = False
        # playout of app audio (rtp mode)
        self._buf = bytearray()
        self._queued_total = 0
        self._played_total = 0
        self._marks: collections.deque[tuple[int, str]] = collections.deque()
        self._wake = asyncio.Event()
        self._generation = 0

    @property
    def rtp(self) -> bool:
        return self.params.bidirectional_mode == "rtp"

    async def connect(
        self, session: aiohttp.ClientSession, url: str, headers: dict[str, str]
    ) -> None:
        """WebSocket handshake; raises aiohttp errors on failure (streaming.failed)."""
        self._ws = await session.ws_connect(url, headers=headers, autoping=True, max_msg_size=0)

    async def run(self) -> None:
        """Send connected + start, then stream until either side closes the socket."""
        ws = self._ws
        assert ws is not None
        call = self.call
        start: dict[str, Any] = {
            "user_id": call.user_id,
            "call_control_id": call.call_control_id,
            "call_session_id": call.call_session_id,
            "from": call.from_,
            "to": call.to,
            "tags": [],
            "client_state": call.client_state,
            "custom_parameters": dict(self.params.custom_parameters),
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
        }
        try:
            if self._stopped:
                return  # stopped before it started (hangup during the handshake)
            await self._send_json({"event": "connected", "version": "1.0.0"})
            await self._send_event("start", {"start": start})
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            return
        self.open = True
        call.stream_ids.append(self.stream_id)
        call.custom_parameters = dict(self.params.custom_parameters)
        call._stream = self
        call._notify()
        tasks = [asyncio.create_task(self._pump_media()), asyncio.create_task(self._play())]
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await self._on_text(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self._record("binary", {"size": len(msg.data)})
                    await self._reject(ERR_MEDIA_MALFORMED, "binary frames are not accepted")
                else:
                    break
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            pass  # socket torn down while we were answering a message
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.open = False
            self.close_code = ws.close_code
            call._notify()

    async def stop(self) -> None:
        """Stream end (hangup, streaming_stop): send `stop` then close the socket with 1000."""
        ws = self._ws
        if ws is None or self._stopped:
            return
        self._stopped = True
        if not ws.closed:
            stop = {"user_id": self.call.user_id, "call_control_id": self.call.call_control_id}
            try:
                await self._send_event("stop", {"stop": stop})
                await ws.close(code=1000)
            except (aiohttp.ClientError, ConnectionError, RuntimeError):
                pass
        self.open = False
        self.close_code = ws.close_code
        self.call._notify()

    async def close(self) -> None:
        """Close without a word (the call ended before the stream started)."""
        self._stopped = True
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(aiohttp.ClientError, ConnectionError, RuntimeError):
                await self._ws.close(code=1000)

    async def send_dtmf(self, digit: str) -> None:
        await self._send_event("dtmf", {"dtmf": {"digit": digit}})

    # --- sending ---------------------------------------------------------------------------

    async def _send_json(self, msg: dict[str, Any]) -> None:
        assert self._ws is not None
        async with self._send_lock:
            await self._ws.send_str(json.dumps(msg))
            self.call.sent.append((asyncio.get_running_loop().time(), msg["event"], msg))

    async def _send_event(self, event: str, body: dict[str, Any]) -> None:
        """Numbered message: the string sequence_number is assigned under the send lock."""
        assert self._ws is not None
        async with self._send_lock:
            self._seq += 1
            msg = {"event": event, "sequence_number": str(self._seq), "stream_id": self.stream_id}
            msg.update(body)
            await self._ws.send_str(json.dumps(msg))
            self.call.sent.append((asyncio.get_running_loop().time(), event, msg))

    def _frame(self, track: str, chunk: int, data: bytes) -> dict[str, Any]:
        return {
            "media": {
                "track": track,
                "chunk": str(chunk),
                "timestamp": str((chunk - 1) * 20),
                "payload": base64.b64encode(data).decode("ascii"),
            }
        }

    async def _pump_media(self) -> None:
        """20 ms frames per requested track, paced against the stream start time (no drift).

        `inbound` carries the far end's audio (or silence); `outbound` what the far end
        heard from the app (or silence)."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        chunk = 0
        inbound = self.call._inbound
        out_pos = len(self.call.played)
        track = self.params.track
        try:
            while True:
                chunk += 1
                delay = t0 + chunk * FRAME_S - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if track in ("inbound_track", "both_tracks"):
                    frame = bytes(inbound[:FRAME_BYTES])
                    del inbound[:FRAME_BYTES]
                    frame += bytes([ULAW_SILENCE]) * (FRAME_BYTES - len(frame))
                    await self._send_event("media", self._frame("inbound", chunk, frame))
                if track in ("outbound_track", "both_tracks"):
                    frame = bytes(self.call.played[out_pos : out_pos + FRAME_BYTES])
                    out_pos += len(frame)
                    frame += bytes([ULAW_SILENCE]) * (FRAME_BYTES - len(frame))
                    await self._send_event("media", self._frame("outbound", chunk, frame))
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            return  # socket went away under us; the reader notices the close

    # --- app → fake --------------------------------------------------------------------------

    def _record(self, event: str, msg: dict[str, Any]) -> None:
        self.call.received.append((asyncio.get_running_loop().time(), event, msg))
        self.call._notify()

    async def _reject(self, code: int, detail: str, **extra: Any) -> None:
        """Record the mistake on the call and answer with an `error` frame."""
        title = "malformed_frame" if code == ERR_MEDIA_MALFORMED else "invalid_media"
        self.call._error(str(code), detail, **extra)
        frame = {"code": code, "title": title, "detail": detail}
        try:
            await self._send_json({"event": "error", "stream_id": self.stream_id, "payload": frame})
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            pass

    async def _on_text(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            msg = None
        if not isinstance(msg, dict):
            self._record("invalid", {"raw": text})
            await self._reject(ERR_MEDIA_MALFORMED, "message is not a JSON object", raw=text)
            return
        event = msg.get("event")
        self._record(str(event), msg)
        if event == "media":
            await self._on_media(msg)
        elif event == "mark":
            mark = msg.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            if not isinstance(name, str):
                await self._reject(ERR_MEDIA_MALFORMED, "mark.name missing", msg=msg)
                return
            if self._played_total >= self._queued_total:
                await self._echo_mark(name)
            else:
                self._marks.append((self._queued_total, name))
        elif event == "clear":
            self.call.clears += 1
            self._generation += 1
            self._buf.clear()
            self._queued_total = self._played_total
            while self._marks:
                await self._echo_mark(self._marks.popleft()[1])
            self.call._notify()
        else:
            await self._reject(ERR_MEDIA_MALFORMED, f"unknown event {event!r}", msg=msg)

    async def _on_media(self, msg: dict[str, Any]) -> None:
        media = msg.get("media")
        payload = media.get("payload") if isinstance(media, dict) else None
        try:
            if not isinstance(payload, str):
                raise ValueError("media.payload missing")
            audio = base64.b64decode(payload, validate=True)
        except (ValueError, binascii.Error) as exc:
            await self._reject(ERR_MEDIA_INVALID, f"bad media payload: {exc}", msg=msg)
            return
        if not self.rtp:
            # Without stream_bidirectional_mode "rtp", Telnyx takes each message as an MP3.
            if not _looks_like_mp3(audio):
                why = "payload is not an MP3 file (stream_bidirectional_mode is not rtp)"
                await self._reject(ERR_MEDIA_INVALID, why, size=len(audio))
                return
            self.call.mp3_received.append(audio)
            self.call._notify()
            return
        if not RTP_MIN_BYTES <= len(audio) <= RTP_MAX_BYTES:
            why = f"rtp media must hold 20 ms..30 s of PCMU, got {len(audio)} bytes"
            await self._reject(ERR_MEDIA_INVALID, why, size=len(audio))
            return
        self._buf.extend(audio)
        self._queued_total += len(audio)
        self._wake.set()

    # --- playout -----------------------------------------------------------------------------

    async def _play(self) -> None:
        """Play queued app audio at 8000 bytes/s; a gap in the audio restarts the clock."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                t0, done, generation = loop.time(), 0, self._generation
                while self._buf:
                    take = min(FRAME_BYTES, len(self._buf))
                    done += take
                    delay = t0 + done / 8000 - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if generation != self._generation or not self._buf:
                        break  # cleared while this frame was "playing"
                    take = min(take, len(self._buf))
                    self.call.played.extend(self._buf[:take])
                    del self._buf[:take]
                    self._played_total += take
                    while self._marks and self._marks[0][0] <= self._played_total:
                        await self._echo_mark(self._marks.popleft()[1])
                    self.call._notify()
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            return

    async def _echo_mark(self, name: str) -> None:
        await self._send_json(
            {"event": "mark", "stream_id": self.stream_id, "mark": {"name": name}}
        )
        self.call.marks_echoed.append(name)
        self.call._notify()
