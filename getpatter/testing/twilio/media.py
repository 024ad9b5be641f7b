"""The media side of the fake Twilio: one call's state (FakeCall) and its Media Streams socket.

The fake is the WebSocket *client* (as Twilio is): it dials the app's wss:// url, sends
`connected`, `start`, then a 20 ms `media` frame at real time for as long as the stream is up,
plays the app's audio back at real time, and echoes marks only once the audio queued before
them has played.
"""

# ruff: noqa: ASYNC109  (timeout= parameters are the public test API)

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import json
from collections.abc import Callable
from typing import Any

import aiohttp

from .util import (
    ERR_STREAM_BINARY,
    ERR_STREAM_MESSAGE,
    FRAME_BYTES,
    FRAME_S,
    ULAW_SILENCE,
    AudioInput,
    CallError,
    Int16Array,
    load_audio,
    ulaw_decode,
)

TERMINAL_STATUSES = frozenset({"completed", "busy", "no-answer", "canceled", "failed"})


class FakeCall:
    """One call on the fake network, seen from the phone network's side.

    Everything the app did is recorded here with loop timestamps so tests can assert on it.
    """

    def __init__(
        self,
        *,
        call_sid: str,
        account_sid: str,
        direction: str,
        from_: str,
        to: str,
        audio: AudioInput | None = None,
    ) -> None:
        self.call_sid = call_sid
        self.account_sid = account_sid
        self.direction = direction  # "inbound" | "outbound-api"
        self.from_ = from_
        self.to = to
        self.status = "queued"
        self.answered_by: str | None = None
        self.custom_parameters: dict[str, str] = {}
        self.stream_sids: list[str] = []
        #: every message the app sent on a media socket: (loop time, event, message)
        self.received: list[tuple[float, str, dict[str, Any]]] = []
        #: every message the fake sent on a media socket: (loop time, event, message)
        self.sent: list[tuple[float, str, dict[str, Any]]] = []
        #: μ-law the fake has played to the caller, 160 bytes per 20 ms, in order
        self.played = bytearray()
        self.marks_echoed: list[str] = []
        self.clears = 0
        self.dtmf_sent: list[str] = []
        self.errors: list[CallError] = []
        self.said: list[str] = []  # <Say> texts
        self.transfers: list[str] = []  # <Dial> targets
        self.twiml: list[str] = []  # every TwiML document the call executed
        self.created_at = asyncio.get_running_loop().time()
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self._inbound = bytearray(load_audio(audio))  # caller audio not yet streamed
        self._stream: MediaStream | None = None
        self._changed = asyncio.Event()
        self._finished = asyncio.Event()
        # set by the call runner (FakeTwilio) — the TwiML execution we interrupt on hangup/redirect
        self._exec_task: asyncio.Task[Any] | None = None
        self._end_reason: str | None = None
        self._redirect: tuple[str, str, str] | None = None  # ("twiml", doc, "") / ("url", u, m)

    # --- state -----------------------------------------------------------------------------

    @property
    def stream_sid(self) -> str | None:
        """streamSid of the current (or last) media stream."""
        return self.stream_sids[-1] if self.stream_sids else None

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def error_codes(self) -> list[int]:
        return [e.code for e in self.errors]

    @property
    def stream_open(self) -> bool:
        return self._stream is not None and self._stream.open

    def heard_audio(self) -> Int16Array:
        """What the caller heard from the app, decoded to int16 at 8 kHz."""
        return ulaw_decode(self.played)

    def _notify(self) -> None:
        """Wake every wait_for(); called on any state change."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _error(self, code: int, message: str, **detail: Any) -> None:
        loop_time = asyncio.get_running_loop().time()
        self.errors.append(CallError(code, message, loop_time, dict(detail)))
        self._notify()

    # --- caller actions --------------------------------------------------------------------

    async def send_audio(self, audio: AudioInput) -> None:
        """Queue more caller audio; it is streamed after what is already queued, at real time."""
        self._inbound.extend(load_audio(audio))

    async def send_dtmf(self, digit: str) -> None:
        """Caller presses a key: a `dtmf` event on the live bidirectional stream."""
        if len(digit) != 1 or digit not in "0123456789*#":
            raise ValueError(f"not a DTMF digit: {digit!r}")
        self.dtmf_sent.append(digit)
        if self._stream is not None and self._stream.open and self._stream.bidirectional:
            await self._stream.send_dtmf(digit)

    async def hangup(self) -> None:
        """Caller hangs up: `stop` on the stream, close 1000, then the completed callback."""
        self._request_end("completed")
        await self.wait_ended()

    def _request_end(self, reason: str) -> None:
        if self.ended or self._end_reason is not None:
            return
        self._end_reason = reason
        if self._exec_task is not None:
            self._exec_task.cancel()
        self._notify()

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
        """Wait until a media stream has sent `start`; returns its streamSid."""
        await self.wait_for(lambda: self.stream_open or self.ended, timeout)
        if not self.stream_open:
            raise RuntimeError(f"call {self.call_sid} ended without a stream ({self.status})")
        assert self.stream_sid is not None
        return self.stream_sid

    async def wait_for_mark(self, name: str, timeout: float = 5.0) -> float:
        """Wait until mark `name` has been echoed; returns the loop time of the echo."""
        await self.wait_for(lambda: name in self.marks_echoed, timeout)
        return next(t for t, ev, m in self.sent if ev == "mark" and m["mark"]["name"] == name)

    async def wait_ended(self, timeout: float = 10.0) -> None:
        """Wait until the call is over and its final status callback has been delivered."""
        async with asyncio.timeout(timeout):
            await self._finished.wait()

    def __repr__(self) -> str:
        return f"<FakeCall {self.call_sid} {self.direction} {self.from_}->{self.to} {self.status}>"


class MediaStream:
    """One Media Streams WebSocket session, from the fake's (Twilio's) side."""

    def __init__(
        self,
        call: FakeCall,
        *,
        stream_sid: str,
        custom_parameters: dict[str, str],
        bidirectional: bool,
    ) -> None:
        self.call = call
        self.stream_sid = stream_sid
        self.custom_parameters = custom_parameters
        self.bidirectional = bidirectional
        self.open = False
        self.close_code: int | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._seq = 0
        self._send_lock = asyncio.Lock()
        self._stopped = False
        # playout of app audio
        self._buf = bytearray()
        self._queued_total = 0
        self._played_total = 0
        self._marks: collections.deque[tuple[int, str]] = collections.deque()
        self._wake = asyncio.Event()
        self._generation = 0

    async def connect(
        self, session: aiohttp.ClientSession, url: str, headers: dict[str, str]
    ) -> None:
        """WebSocket handshake; raises aiohttp errors on failure (the caller maps them to 31920)."""
        self._ws = await session.ws_connect(url, headers=headers, autoping=True, max_msg_size=0)

    async def run(self) -> None:
        """Send connected + start, then stream until either side closes the socket."""
        ws = self._ws
        assert ws is not None
        await self._send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        start = {
            "streamSid": self.stream_sid,
            "accountSid": self.call.account_sid,
            "callSid": self.call.call_sid,
            "tracks": ["inbound"],
            "customParameters": dict(self.custom_parameters),
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
        await self._send_event("start", {"start": start})
        self.open = True
        self.call.stream_sids.append(self.stream_sid)
        self.call.custom_parameters = dict(self.custom_parameters)
        self.call._stream = self
        self.call._notify()
        tasks = [asyncio.create_task(self._pump_media()), asyncio.create_task(self._play())]
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await self._on_text(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self._record("binary", {"size": len(msg.data)})
                    self.call._error(ERR_STREAM_BINARY, "binary frame on the media socket")
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
            self.call._notify()

    async def stop(self) -> None:
        """Hang-up side: send `stop` then close the socket with 1000."""
        ws = self._ws
        if ws is None or self._stopped:
            return
        self._stopped = True
        if not ws.closed:
            stop = {"accountSid": self.call.account_sid, "callSid": self.call.call_sid}
            try:
                await self._send_event("stop", {"stop": stop})
                await ws.close(code=1000)
            except (aiohttp.ClientError, ConnectionError, RuntimeError):
                pass
        self.open = False
        self.close_code = ws.close_code
        self.call._notify()

    async def send_dtmf(self, digit: str) -> None:
        await self._send_event("dtmf", {"dtmf": {"track": "inbound_track", "digit": digit}})

    # --- sending ---------------------------------------------------------------------------

    async def _send_json(self, msg: dict[str, Any]) -> None:
        assert self._ws is not None
        async with self._send_lock:
            await self._ws.send_str(json.dumps(msg))
            self.call.sent.append((asyncio.get_running_loop().time(), msg["event"], msg))

    async def _send_event(self, event: str, body: dict[str, Any]) -> None:
        """Numbered message: sequenceNumber is assigned under the lock so it is sent in order."""
        assert self._ws is not None
        async with self._send_lock:
            self._seq += 1
            msg = {"event": event, "sequenceNumber": str(self._seq), "streamSid": self.stream_sid}
            msg.update(body)
            await self._ws.send_str(json.dumps(msg))
            self.call.sent.append((asyncio.get_running_loop().time(), event, msg))

    async def _pump_media(self) -> None:
        """Caller audio (or silence) as 20 ms frames, paced against the stream start time."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        chunk = 0
        inbound = self.call._inbound
        try:
            while True:
                chunk += 1
                delay = t0 + chunk * FRAME_S - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                frame = bytes(inbound[:FRAME_BYTES])
                del inbound[:FRAME_BYTES]
                frame += bytes([ULAW_SILENCE]) * (FRAME_BYTES - len(frame))
                media = {
                    "track": "inbound",
                    "chunk": str(chunk),
                    "timestamp": str((chunk - 1) * 20),
                    "payload": base64.b64encode(frame).decode("ascii"),
                }
                await self._send_event("media", {"media": media})
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            return  # socket went away under us; the reader notices the close

    # --- app → fake --------------------------------------------------------------------------

    def _record(self, event: str, msg: dict[str, Any]) -> None:
        self.call.received.append((asyncio.get_running_loop().time(), event, msg))
        self.call._notify()

    async def _on_text(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            msg = None
        if not isinstance(msg, dict):
            self._record("invalid", {"raw": text})
            self.call._error(ERR_STREAM_MESSAGE, "message is not a JSON object", raw=text)
            return
        event = msg.get("event")
        self._record(str(event), msg)
        if event not in ("media", "mark", "clear"):
            self.call._error(ERR_STREAM_MESSAGE, f"unknown event {event!r}", msg=msg)
            return
        if msg.get("streamSid") != self.stream_sid:
            self.call._error(ERR_STREAM_MESSAGE, "wrong or missing streamSid", msg=msg)
            return
        if not self.bidirectional:
            return  # a <Start><Stream> fork only listens
        if event == "media":
            media = msg.get("media")
            payload = media.get("payload") if isinstance(media, dict) else None
            try:
                if not isinstance(payload, str):
                    raise ValueError("media.payload missing")
                audio = base64.b64decode(payload, validate=True)
            except (ValueError, binascii.Error) as exc:
                self.call._error(ERR_STREAM_MESSAGE, f"bad media payload: {exc}", msg=msg)
                return
            self._buf.extend(audio)
            self._queued_total += len(audio)
            self._wake.set()
        elif event == "mark":
            mark = msg.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            if not isinstance(name, str):
                self.call._error(ERR_STREAM_MESSAGE, "mark.name missing", msg=msg)
                return
            if self._played_total >= self._queued_total:
                await self._echo_mark(name)
            else:
                self._marks.append((self._queued_total, name))
        else:
            self.call.clears += 1
            self._generation += 1
            self._buf.clear()
            self._queued_total = self._played_total
            while self._marks:
                await self._echo_mark(self._marks.popleft()[1])
            self.call._notify()

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
        await self._send_event("mark", {"mark": {"name": name}})
        self.call.marks_echoed.append(name)
        self.call._notify()
