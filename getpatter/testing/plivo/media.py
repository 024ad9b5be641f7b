"""The media side of the fake Plivo: one call's state (FakeCall) and its audio-stream socket.

The fake is the WebSocket *client* (as Plivo is): it dials the `<Stream>` url, sends `start`
(with the stream's `extra_headers`), then a 20 ms `media` frame at real time in the stream's
`contentType`, plays the app's `playAudio` back at real time, and answers a `checkpoint` with
`playedStream` only once the audio queued before it has played.

Choices where Plivo's docs are silent or unverified:
- No `connected` message and no `stop` message: the protocol reference lists neither; the
  stream ends with the socket closing (code 1000).
- `sequenceNumber` is a number counting every message the fake sends, from 1 (`start`).
- `clearAudio` drops the buffered audio and the checkpoints waiting on it (a `playedStream`
  is only sent for audio that was played) and is answered with `clearedAudio`.
- Mistakes of the app's (bad JSON, a binary frame, an unknown event, a bad `playAudio`) are
  recorded in `call.errors` and otherwise ignored; the socket stays up.
- `playAudio` in `audio/x-mulaw` must be 8000 Hz; `audio/x-l16` 8000 or 16000 Hz (kept as
  what the far end hears, converted to 8 kHz μ-law).
"""

# ruff: noqa: ASYNC109  (timeout= parameters are the public test API)

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import time
from typing import Any, Protocol

import numpy as np

from ..phone.audio import AudioInput, ulaw_decode, ulaw_encode
from ..phone.call import PhoneCall
from ..phone.stream import SOCKET_GONE, MediaSocket

ERR_STREAM = "stream_protocol"  # the code recorded for a media-socket mistake
TERMINAL_STATUSES = frozenset({"completed", "busy", "no-answer", "timeout", "failed", "cancel"})
CONTENT_TYPES = {
    "audio/x-mulaw;rate=8000": ("audio/x-mulaw", 8000),
    "audio/x-l16;rate=8000": ("audio/x-l16", 8000),
    "audio/x-l16;rate=16000": ("audio/x-l16", 16000),
}


class _Runner(Protocol):
    """What a FakeCall needs from the network to act as the far-end party."""

    def party_hangup(self, call: FakeCall) -> None: ...


class FakeCall(PhoneCall):
    """One call on the fake network, seen from Plivo's side. `status` is Plivo's CallStatus
    (ringing, in-progress, completed, busy, no-answer, timeout, failed, cancel)."""

    def __init__(
        self,
        *,
        runner: _Runner,
        call_uuid: str,
        request_uuid: str,
        account_id: str,
        direction: str,
        from_: str,
        to: str,
        audio: AudioInput | None = None,
    ) -> None:
        super().__init__(direction=direction, from_=from_, to=to, audio=audio)
        self._runner = runner
        self.call_uuid = call_uuid
        self.request_uuid = request_uuid  # outbound calls only
        self.account_id = account_id
        self.status = "ringing"
        self.hangup_cause = ""
        self.hangup_source = ""
        self.stream_ids: list[str] = []
        self.extra_headers = ""  # as the <Stream> gave them
        self.app_dtmf: list[str] = []  # digits the app sent with `sendDTMF`
        self.xml: list[str] = []  # every XML document the call ran
        self._stream: MediaStream | None = None

    @property
    def stream_id(self) -> str | None:
        return self.stream_ids[-1] if self.stream_ids else None

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def answered(self) -> bool:
        return self.answered_at is not None

    # --- far-end actions -------------------------------------------------------------------

    async def send_dtmf(self, digit: str) -> None:
        """The far end presses a key: a `dtmf` message on the live stream."""
        if len(digit) != 1 or digit not in "0123456789*#":
            raise ValueError(f"not a DTMF digit: {digit!r}")
        self.dtmf_sent.append(digit)
        self._notify()
        if self._stream is not None and self._stream.open:
            await self._stream.send_dtmf(digit)

    async def hangup(self) -> None:
        """The far end hangs up: the stream socket closes, then the hang-up webhook."""
        if not self.ended:
            self._runner.party_hangup(self)
        await self.wait_ended()

    # --- waiting helpers -------------------------------------------------------------------

    mark_echo_event = "playedStream"

    def echoed_mark(self, event: str, msg: dict[str, Any]) -> str | None:
        name = msg.get("name") if event == self.mark_echo_event else None
        return name if isinstance(name, str) else None

    async def wait_stream(self, timeout: float = 5.0) -> str:
        """Wait until a stream has sent `start`; returns its streamId."""
        await self.wait_for(lambda: self.stream_open or self.ended, timeout)
        if not self.stream_open:
            raise RuntimeError(f"call {self.call_uuid} ended without a stream ({self.status})")
        assert self.stream_id is not None
        return self.stream_id

    def __repr__(self) -> str:
        return f"<FakeCall {self.call_uuid} {self.direction} {self.from_}->{self.to} {self.status}>"


class MediaStream(MediaSocket):
    """One audio-stream WebSocket session, from the fake's (Plivo's) side."""

    call: FakeCall

    def __init__(
        self,
        call: FakeCall,
        *,
        stream_id: str,
        content_type: str,
        bidirectional: bool,
        extra_headers: str,
    ) -> None:
        super().__init__(call, stream_id)
        self.encoding, self.rate = CONTENT_TYPES[content_type]
        self.bidirectional = bidirectional
        self.extra_headers = extra_headers
        self._t0_ms = 0

    # --- Plivo's words ----------------------------------------------------------------------

    def _numbered(self, event: str, seq: int) -> dict[str, Any]:
        return {"event": event, "sequenceNumber": seq, "streamId": self.stream_id}

    async def _begin(self) -> bool:
        call = self.call
        self._t0_ms = int(time.time() * 1000)
        start = {
            "callId": call.call_uuid,
            "streamId": self.stream_id,
            "accountId": call.account_id,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": self.encoding, "sampleRate": self.rate},
        }
        try:
            if self._stopped:
                return False  # the call ended during the handshake
            async with self._send_lock:
                self._seq += 1
                msg = {"event": "start", "sequenceNumber": self._seq, "start": start}
                msg["extra_headers"] = self.extra_headers
                assert self._ws is not None
                await self._ws.send_str(json.dumps(msg))
                call.sent.append((asyncio.get_running_loop().time(), "start", msg))
        except SOCKET_GONE:
            return False
        self.open = True
        call.stream_ids.append(self.stream_id)
        call.custom_parameters = _headers(self.extra_headers)
        call._stream = self
        call._notify()
        return True

    async def stop(self) -> None:
        """The stream ends (hang-up, transfer): the socket closes with 1000, no message."""
        ws = self._ws
        if ws is None or self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(*SOCKET_GONE):
            await ws.close(code=1000)
        self.open = False
        self.close_code = ws.close_code
        self.call._notify()

    async def send_dtmf(self, digit: str) -> None:
        await self._send_event("dtmf", {"dtmf": {"digit": digit}})

    def _encode(self, ulaw: bytes) -> bytes:
        if self.encoding == "audio/x-mulaw":
            return ulaw
        pcm = ulaw_decode(ulaw).astype(np.float64)
        if self.rate == 16000:
            pcm = np.interp(np.arange(len(pcm) * 2) / 2, np.arange(len(pcm)), pcm)
        return np.round(pcm).astype("<i2").tobytes()

    async def _frame(self, chunk: int) -> None:
        media = {
            "track": "inbound",
            "timestamp": str(self._t0_ms + (chunk - 1) * 20),
            "chunk": chunk,
            "payload": base64.b64encode(self._encode(self._take_inbound())).decode("ascii"),
        }
        await self._send_event("media", {"media": media, "extra_headers": self.extra_headers})

    async def _echo_mark(self, name: str) -> None:
        await self._send_event("playedStream", {"name": name})

    # --- app → fake --------------------------------------------------------------------------

    def _mistake(self, message: str, **detail: Any) -> None:
        self.call._error(ERR_STREAM, message, **detail)

    async def _on_binary(self, data: bytes) -> None:
        self._record("binary", {"size": len(data)})
        self._mistake("binary frame on the audio stream")

    async def _on_text(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            msg = None
        if not isinstance(msg, dict):
            self._record("invalid", {"raw": text})
            self._mistake("message is not a JSON object", raw=text)
            return
        event = msg.get("event")
        self._record(str(event), msg)
        stream_id = msg.get("streamId")
        if stream_id is not None and stream_id != self.stream_id:
            self._mistake("wrong streamId", msg=msg)
            return
        if event in ("playAudio", "checkpoint", "clearAudio") and not self.bidirectional:
            self._mistake(f"{event} on a stream that is not bidirectional", msg=msg)
        elif event == "playAudio":
            self._play_audio(msg)
        elif event == "checkpoint":
            name = msg.get("name")
            if not isinstance(name, str) or not name:
                self._mistake("checkpoint without a name", msg=msg)
                return
            await self.playback.mark(name)
        elif event == "clearAudio":
            self.playback.clear()  # the checkpoints it drops are never reported played
            await self._send_event("clearedAudio", {})
            self.call._notify()
        elif event == "sendDTMF":
            digits = msg.get("dtmf")
            if isinstance(digits, str):
                self.call.app_dtmf.append(digits)
        else:
            self._mistake(f"unknown event {event!r}", msg=msg)

    def _play_audio(self, msg: dict[str, Any]) -> None:
        media = msg.get("media")
        if not isinstance(media, dict):
            self._mistake("playAudio without media", msg=msg)
            return
        kind, rate = media.get("contentType"), media.get("sampleRate")
        if (kind, rate) not in (
            ("audio/x-mulaw", 8000),
            ("audio/x-l16", 8000),
            ("audio/x-l16", 16000),
        ):
            self._mistake(f"playAudio of {kind!r} at {rate!r} Hz is not accepted", msg=msg)
            return
        payload = media.get("payload")
        try:
            if not isinstance(payload, str):
                raise ValueError("media.payload missing")
            audio = base64.b64decode(payload, validate=True)
        except (ValueError, binascii.Error) as exc:
            self._mistake(f"bad playAudio payload: {exc}", msg=msg)
            return
        if kind == "audio/x-l16":
            if len(audio) % 2:
                self._mistake("audio/x-l16 payload has an odd number of bytes", msg=msg)
                return
            pcm = np.frombuffer(audio, dtype="<i2")
            audio = ulaw_encode(pcm[::2] if rate == 16000 else pcm)
        self.playback.queue(audio)


def _headers(extra: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in extra.replace(";", ",").split(","):
        name, sep, value = item.partition("=")
        if sep:
            out[name] = value
    return out
