"""The media side of the fake Twilio: one call's state (FakeCall) and its Media Streams socket.

The fake is the WebSocket *client* (as Twilio is): it dials the app's wss:// url, sends
`connected`, `start`, then a 20 ms `media` frame at real time for as long as the stream is up,
plays the app's audio back at real time, and echoes marks only once the audio queued before
them has played (the shared `testing/phone/` machinery, in Twilio's words here).
"""

# ruff: noqa: ASYNC109  (timeout= parameters are the public test API)

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Any

from ..phone.audio import AudioInput
from ..phone.call import PhoneCall
from ..phone.stream import MediaSocket
from .util import ERR_STREAM_BINARY, ERR_STREAM_MESSAGE

TERMINAL_STATUSES = frozenset({"completed", "busy", "no-answer", "canceled", "failed"})


class FakeCall(PhoneCall):
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
        super().__init__(direction=direction, from_=from_, to=to, audio=audio)
        self.call_sid = call_sid
        self.account_sid = account_sid
        self.status = "queued"
        self.stream_sids: list[str] = []
        self.twiml: list[str] = []  # every TwiML document the call executed
        self._stream: MediaStream | None = None
        # set by the call runner — the TwiML execution we interrupt on hangup/redirect
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

    # --- caller actions --------------------------------------------------------------------

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

    async def wait_stream(self, timeout: float = 5.0) -> str:
        """Wait until a media stream has sent `start`; returns its streamSid."""
        await self.wait_for(lambda: self.stream_open or self.ended, timeout)
        if not self.stream_open:
            raise RuntimeError(f"call {self.call_sid} ended without a stream ({self.status})")
        assert self.stream_sid is not None
        return self.stream_sid

    def __repr__(self) -> str:
        return f"<FakeCall {self.call_sid} {self.direction} {self.from_}->{self.to} {self.status}>"


class MediaStream(MediaSocket):
    """One Media Streams WebSocket session, from the fake's (Twilio's) side."""

    call: FakeCall

    def __init__(
        self,
        call: FakeCall,
        *,
        stream_sid: str,
        custom_parameters: dict[str, str],
        bidirectional: bool,
    ) -> None:
        super().__init__(call, stream_sid)
        self.stream_sid = stream_sid
        self.custom_parameters = custom_parameters
        self.bidirectional = bidirectional

    # --- Twilio's words ----------------------------------------------------------------------

    def _numbered(self, event: str, seq: int) -> dict[str, Any]:
        return {"event": event, "sequenceNumber": str(seq), "streamSid": self.stream_sid}

    async def _begin(self) -> bool:
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
        return True

    def _stop_body(self) -> dict[str, Any]:
        return {"stop": {"accountSid": self.call.account_sid, "callSid": self.call.call_sid}}

    async def send_dtmf(self, digit: str) -> None:
        await self._send_event("dtmf", {"dtmf": {"track": "inbound_track", "digit": digit}})

    async def _frame(self, chunk: int) -> None:
        """Caller audio (or silence)."""
        media = {
            "track": "inbound",
            "chunk": str(chunk),
            "timestamp": str((chunk - 1) * 20),
            "payload": base64.b64encode(self._take_inbound()).decode("ascii"),
        }
        await self._send_event("media", {"media": media})

    async def _echo_mark(self, name: str) -> None:
        await self._send_event("mark", {"mark": {"name": name}})

    # --- app → fake --------------------------------------------------------------------------

    async def _on_binary(self, data: bytes) -> None:
        self._record("binary", {"size": len(data)})
        self.call._error(ERR_STREAM_BINARY, "binary frame on the media socket")

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
            self.playback.queue(audio)
        elif event == "mark":
            mark = msg.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            if not isinstance(name, str):
                self.call._error(ERR_STREAM_MESSAGE, "mark.name missing", msg=msg)
                return
            await self.playback.mark(name)
        else:
            for name in self.playback.clear():  # Twilio echoes the marks a clear drops
                await self.playback.echo(name)
            self.call._notify()
