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

import base64
import binascii
import contextlib
import json
from typing import Any, Protocol

from ..phone.audio import FRAME_BYTES, AudioInput
from ..phone.call import PhoneCall
from ..phone.stream import SOCKET_GONE, MediaSocket
from .util import ERR_MEDIA_INVALID, ERR_MEDIA_MALFORMED, StreamParams

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


class _Runner(Protocol):
    """What a FakeCall needs from the network to act as the far-end party."""

    def party_hangup(self, call: FakeCall) -> None: ...

    def party_dtmf(self, call: FakeCall, digit: str) -> None: ...


class FakeCall(PhoneCall):
    """One call leg on the fake network, seen from the phone network's side.

    Everything the app did is recorded here with loop timestamps so tests can assert on it.
    Attribute names follow the fake Twilio's FakeCall where the concept exists.
    """

    def __init__(
        self,
        *,
        runner: _Runner,
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
        super().__init__(direction=direction, from_=from_, to=to, audio=audio)
        self._runner = runner
        self.call_control_id = call_control_id
        self.call_leg_id = call_leg_id
        self.call_session_id = call_session_id
        self.connection_id = connection_id
        self.user_id = user_id
        self.state = "parked" if direction == "incoming" else "bridging"
        self.client_state: str | None = None  # base64, echoed in later webhooks
        self.hangup_cause: str | None = None
        self.hangup_source: str | None = None
        self.sip_hangup_cause: str | None = None
        self.stream_ids: list[str] = []
        self.stream_urls: list[str] = []  # as dialled, query string included
        self.mp3_received: list[bytes] = []  # media payloads in mp3 mode (not played)
        self.app_dtmf: list[str] = []  # digits the app sent with `send_dtmf`
        self.playbacks: list[str] = []  # `playback_start` audio urls
        self.recordings: list[dict[str, Any]] = []  # call.recording.saved payloads
        #: every action the app sent for this call: (loop time, action, JSON body)
        self.commands: list[tuple[float, str, dict[str, Any]]] = []
        self._stream: MediaStream | None = None

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

    # --- far-end actions -------------------------------------------------------------------

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
        self._runner.party_dtmf(self, digit)

    async def hangup(self) -> None:
        """The far end hangs up: `stop` + close 1000 on the stream, then `call.hangup`."""
        if not self.ended:
            self._runner.party_hangup(self)
        await self.wait_ended()

    # --- waiting helpers -------------------------------------------------------------------

    async def wait_stream(self, timeout: float = 5.0) -> str:
        """Wait until a media stream has sent `start`; returns its stream_id."""
        await self.wait_for(lambda: self.stream_open or self.ended, timeout)
        if not self.stream_open:
            raise RuntimeError(f"call {self.call_control_id} ended without a stream")
        assert self.stream_id is not None
        return self.stream_id

    def __repr__(self) -> str:
        return (
            f"<FakeCall {self.call_control_id} {self.direction} "
            f"{self.from_}->{self.to} {self.state}>"
        )


def _looks_like_mp3(data: bytes) -> bool:
    """An ID3 tag or an MPEG audio frame sync at the start."""
    return data.startswith(b"ID3") or (len(data) > 1 and data[0] == 0xFF and data[1] >= 0xE0)


class MediaStream(MediaSocket):
    """One media streaming WebSocket session, from the fake's (Telnyx's) side."""

    call: FakeCall

    def __init__(self, call: FakeCall, *, stream_id: str, params: StreamParams) -> None:
        super().__init__(call, stream_id)
        self.params = params
        self._out_pos = 0  # how much of `call.played` the outbound track has carried

    @property
    def rtp(self) -> bool:
        return self.params.bidirectional_mode == "rtp"

    # --- Telnyx's words ----------------------------------------------------------------------

    def _numbered(self, event: str, seq: int) -> dict[str, Any]:
        return {"event": event, "sequence_number": str(seq), "stream_id": self.stream_id}

    async def _begin(self) -> bool:
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
                return False  # stopped before it started (hangup during the handshake)
            await self._send_json({"event": "connected", "version": "1.0.0"})
            await self._send_event("start", {"start": start})
        except SOCKET_GONE:
            return False
        self.open = True
        self._out_pos = len(call.played)  # the outbound track starts with what comes next
        call.stream_ids.append(self.stream_id)
        call.custom_parameters = dict(self.params.custom_parameters)
        call._stream = self
        call._notify()
        return True

    def _stop_body(self) -> dict[str, Any]:
        call = self.call
        return {"stop": {"user_id": call.user_id, "call_control_id": call.call_control_id}}

    async def close(self) -> None:
        """Close without a word (the call ended before the stream started)."""
        self._stopped = True
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(*SOCKET_GONE):
                await self._ws.close(code=1000)

    async def send_dtmf(self, digit: str) -> None:
        await self._send_event("dtmf", {"dtmf": {"digit": digit}})

    def _media(self, track: str, chunk: int, data: bytes) -> dict[str, Any]:
        return {
            "media": {
                "track": track,
                "chunk": str(chunk),
                "timestamp": str((chunk - 1) * 20),
                "payload": base64.b64encode(data).decode("ascii"),
            }
        }

    async def _frame(self, chunk: int) -> None:
        """20 ms per requested track: `inbound` carries the far end's audio (or silence);
        `outbound` what the far end heard from the app (or silence)."""
        track = self.params.track
        if track in ("inbound_track", "both_tracks"):
            await self._send_event("media", self._media("inbound", chunk, self._take_inbound()))
        if track in ("outbound_track", "both_tracks"):
            played = self.call.played
            frame = bytes(played[self._out_pos : self._out_pos + FRAME_BYTES])
            self._out_pos += len(frame)
            frame += b"\xff" * (FRAME_BYTES - len(frame))
            await self._send_event("media", self._media("outbound", chunk, frame))

    async def _echo_mark(self, name: str) -> None:
        await self._send_json(
            {"event": "mark", "stream_id": self.stream_id, "mark": {"name": name}}
        )

    # --- app → fake --------------------------------------------------------------------------

    async def _reject(self, code: int, detail: str, **extra: Any) -> None:
        """Record the mistake on the call and answer with an `error` frame."""
        title = "malformed_frame" if code == ERR_MEDIA_MALFORMED else "invalid_media"
        self.call._error(str(code), detail, **extra)
        frame = {"code": code, "title": title, "detail": detail}
        try:
            await self._send_json({"event": "error", "stream_id": self.stream_id, "payload": frame})
        except SOCKET_GONE:
            pass

    async def _on_binary(self, data: bytes) -> None:
        self._record("binary", {"size": len(data)})
        await self._reject(ERR_MEDIA_MALFORMED, "binary frames are not accepted")

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
            await self.playback.mark(name)
        elif event == "clear":
            for name in self.playback.clear():  # the marks a clear drops are echoed at once
                await self.playback.echo(name)
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
        self.playback.queue(audio)
