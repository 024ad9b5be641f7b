"""One connection to the fake OpenAI Realtime service: events in, the session, the caller's
audio and the server VAD, the conversation. See `getpatter.testing.openai_realtime`."""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import time
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from getpatter.core.audio import Int16Array, alaw_decode, pcm16_array, ulaw_decode
from getpatter.testing.conversing import EnergyVad

from .responses import Responder
from .wire import FRAME_MS, Item, Rejected, new_id, validate_session_update

if TYPE_CHECKING:
    from .server import FakeRealtime


class FakeRealtimeSession:
    """One WebSocket connection to the fake, i.e. one Realtime session.

    For assertions: `received` (every client event), `sent` (every server event), `config`
    (the session as last applied), `items` (the conversation), `errors` (error events sent),
    `tool_outputs` (function_call_output items received).
    """

    def __init__(
        self, fake: FakeRealtime, ws: web.WebSocketResponse, request: web.Request, model: str
    ) -> None:
        self.fake = fake
        self.ws = ws
        self.request = request
        self.model = model
        self.id = new_id("sess")
        self.received: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.items: dict[str, Item] = {}
        self.tool_outputs: list[dict[str, Any]] = []
        self.closed = False
        self.config: dict[str, Any] = {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": model,
            "output_modalities": ["audio"],
            "instructions": "You are a helpful assistant.",
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": None,
                    "noise_reduction": None,
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.5,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 200,
                        "idle_timeout_ms": None,
                        "create_response": True,
                        "interrupt_response": True,
                    },
                },
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"},
            },
            "expires_at": int(time.time()) + 3600,
        }
        self._send_lock = asyncio.Lock()
        self._event_ids = itertools.count(1)
        self.responses = Responder(self)
        # input audio and VAD
        self._input_ms = 0.0  # audio appended so far, in ms of input time
        self._buffer_start_ms = 0.0  # start of the uncommitted input buffer
        self._vad = EnergyVad()
        self._speech_item: str | None = None
        self.last_item: str | None = None
        self.input_audio_ms_total = 0.0

    # --- config views --------------------------------------------------------------------

    @property
    def input_format(self) -> str:
        return str(self.config["audio"]["input"]["format"]["type"])

    @property
    def output_format(self) -> str:
        return str(self.config["audio"]["output"]["format"]["type"])

    @property
    def turn_detection(self) -> dict[str, Any] | None:
        td = self.config["audio"]["input"].get("turn_detection")
        return td if isinstance(td, dict) else None

    @property
    def voice(self) -> Any:
        return self.config["audio"]["output"].get("voice")

    @property
    def instructions(self) -> str:
        return str(self.config.get("instructions") or "")

    @property
    def tool_names(self) -> list[str]:
        return [t.get("name", "") for t in self.config.get("tools") or []]

    # --- sending -------------------------------------------------------------------------

    async def send(self, event_type: str, **body: Any) -> dict[str, Any]:
        event = {"type": event_type, "event_id": f"event_{self.id[-6:]}{next(self._event_ids)}"}
        event.update(body)
        async with self._send_lock:
            self.sent.append(event)
            if self.closed or self.ws.closed:
                return event
            try:
                await self.ws.send_str(json.dumps(event))
            except (ConnectionError, RuntimeError):
                self.closed = True
        return event

    async def error(
        self, code: str, message: str, param: str | None = None, event_id: str | None = None
    ) -> None:
        err = {
            "type": "invalid_request_error",
            "code": code,
            "message": message,
            "param": param,
            "event_id": event_id,
        }
        self.errors.append(err)
        await self.send("error", error=err)

    # --- the connection ------------------------------------------------------------------

    async def run(self) -> None:
        if self.fake.session_delay:
            await asyncio.sleep(self.fake.session_delay)
        await self.send("session.created", session=self.config)
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_text(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await self.error("invalid_json", "binary frames are not supported")
                else:
                    break
        finally:
            self.closed = True
            self.stop_turn()

    def stop_turn(self) -> None:
        """The response in flight stops with the socket."""
        if self.responses.active is not None and self.responses.active.task is not None:
            self.responses.active.task.cancel()

    async def _on_text(self, text: str) -> None:
        try:
            event = json.loads(text)
        except ValueError as exc:
            await self.error("invalid_json", f"The event is not valid JSON: {exc}")
            return
        if not isinstance(event, dict):
            await self.error("invalid_json", "The event must be a JSON object")
            return
        self.received.append(event)
        self.fake.received.append(event)
        kind = event.get("type")
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        client_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        if handler is None:
            await self.error(
                "invalid_value", f"Invalid value: {kind!r}. Unknown client event type.", "type"
            )
            return
        try:
            await handler(self, event)
        except Rejected as exc:
            await self.error(exc.code, exc.message, exc.param, client_id)

    # --- session.update ------------------------------------------------------------------

    async def _session_update(self, event: dict[str, Any]) -> None:
        self.config = validate_session_update(self.config, event.get("session"))
        await self.send("session.updated", session=self.config)

    # --- input audio and VAD -------------------------------------------------------------

    def _decode(self, payload: bytes) -> tuple[Int16Array, int]:
        kind = self.input_format
        if kind == "audio/pcmu":
            return ulaw_decode(payload), 8000
        if kind == "audio/pcma":
            return alaw_decode(payload), 8000
        if len(payload) % 2:
            raise Rejected("invalid_value", "audio/pcm audio must be whole 16-bit samples")
        return pcm16_array(payload), 24000

    async def _append(self, event: dict[str, Any]) -> None:
        audio = event.get("audio")
        try:
            if not isinstance(audio, str):
                raise ValueError("missing")
            payload = base64.b64decode(audio, validate=True)
        except (ValueError, binascii.Error):
            raise Rejected("invalid_value", "audio must be base64 text", "audio") from None
        samples, rate = self._decode(payload)
        for frame in self._vad.frames(samples, rate):
            await self._vad_frame(frame)
        self.input_audio_ms_total += len(samples) * 1000 / rate

    async def _vad_frame(self, samples: Int16Array) -> None:
        start = self._input_ms
        self._input_ms += FRAME_MS
        td = self.turn_detection
        if td is None or td.get("type") not in ("server_vad", "semantic_vad"):
            return
        threshold = float(td.get("threshold", 0.5)) * self.fake.vad_rms_scale
        loud = self._vad.loud(samples, threshold)
        silence_ms = int(td.get("silence_duration_ms", 500))
        turn = self._vad.step(loud, self.fake.vad_start_ms, silence_ms, at=start)
        if turn == "started":
            await self._speech_started(td)
        elif turn == "stopped":
            await self._speech_stopped(td)

    async def _speech_started(self, td: dict[str, Any]) -> None:
        self._speech_item = new_id("item")
        padding = int(td.get("prefix_padding_ms", 300))
        audio_start = max(self._buffer_start_ms, self._vad.loud_since - padding)
        await self.send(
            "input_audio_buffer.speech_started",
            audio_start_ms=int(audio_start),
            item_id=self._speech_item,
        )
        if td.get("interrupt_response", True) and self.responses.active is not None:
            await self.responses.cancel("turn_detected")

    async def _speech_stopped(self, td: dict[str, Any]) -> None:
        item_id = self._speech_item or new_id("item")
        self._speech_item = None
        await self.send(
            "input_audio_buffer.speech_stopped", audio_end_ms=int(self._input_ms), item_id=item_id
        )
        await self._commit(item_id)
        if td.get("create_response", True) and self.responses.active is None:
            self.responses.start(self.fake.next_reply())

    async def _commit(self, item_id: str) -> None:
        previous = self.last_item
        self._buffer_start_ms = self._input_ms
        item = Item(item_id, "message", role="user")
        self.items[item_id] = item
        self.last_item = item_id
        await self.send("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous)
        await self.send("conversation.item.added", previous_item_id=previous, item=item.as_json())
        transcription = self.config["audio"]["input"].get("transcription")
        if isinstance(transcription, dict) and transcription.get("model"):
            item.transcript = self.fake.next_transcript()
        await self.send("conversation.item.done", previous_item_id=previous, item=item.as_json())
        if item.transcript:
            await self.send(
                "conversation.item.input_audio_transcription.completed",
                item_id=item_id,
                content_index=0,
                transcript=item.transcript,
                usage={"type": "duration", "seconds": 1},
            )

    async def _buffer_commit(self, event: dict[str, Any]) -> None:
        if self._input_ms - self._buffer_start_ms < 100:
            raise Rejected(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                "100ms of audio.",
            )
        self._vad.stopped()
        await self._commit(self._speech_item or new_id("item"))
        self._speech_item = None

    async def _buffer_clear(self, event: dict[str, Any]) -> None:
        self._buffer_start_ms = self._input_ms
        self._vad.stopped()
        await self.send("input_audio_buffer.cleared")

    # --- conversation items --------------------------------------------------------------

    async def _item_create(self, event: dict[str, Any]) -> None:
        raw = event.get("item")
        if not isinstance(raw, dict):
            raise Rejected("missing_required_parameter", "Missing 'item'.", "item")
        kind = raw.get("type")
        given = raw.get("id")
        item_id = given if isinstance(given, str) else new_id("item")
        if kind == "function_call_output":
            call_id = raw.get("call_id")
            known = any(
                i.type == "function_call" and i.call_id == call_id for i in self.items.values()
            )
            if not known:
                raise Rejected(
                    "invalid_value",
                    f"No function call with call_id {call_id!r} in the conversation.",
                    "item.call_id",
                )
            output = raw.get("output")
            if not isinstance(output, str):
                raise Rejected("invalid_type", "item.output must be a string", "item.output")
            item = Item(item_id, kind, call_id=str(call_id), output=output)
            self.tool_outputs.append({"call_id": call_id, "output": output})
        elif kind == "message":
            role = raw.get("role")
            if role not in ("user", "assistant", "system"):
                raise Rejected("invalid_value", f"Invalid role {role!r}", "item.role")
            parts = raw.get("content")
            if not isinstance(parts, list):
                raise Rejected("invalid_type", "item.content must be an array", "item.content")
            text = " ".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))
            item = Item(item_id, kind, role=str(role), transcript=text)
        else:
            raise Rejected("invalid_value", f"Unsupported item type {kind!r}", "item.type")
        previous = self.last_item
        self.items[item_id] = item
        self.last_item = item_id
        await self.send("conversation.item.added", previous_item_id=previous, item=item.as_json())
        await self.send("conversation.item.done", previous_item_id=previous, item=item.as_json())

    async def _item_delete(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        if not isinstance(item_id, str) or item_id not in self.items:
            raise Rejected("item_not_found", f"Item {item_id!r} not found", "item_id")
        del self.items[item_id]
        await self.send("conversation.item.deleted", item_id=item_id)

    async def _item_truncate(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        end_ms = event.get("audio_end_ms")
        index = event.get("content_index", 0)
        item = self.items.get(item_id) if isinstance(item_id, str) else None
        record = {
            "session": self.id,
            "item_id": item_id,
            "content_index": index,
            "audio_end_ms": end_ms,
            "audio_ms": item.audio_ms if item is not None else None,
            "ok": False,
        }
        self.fake.truncates.append(record)
        if item is None:
            raise Rejected("item_not_found", f"Item {item_id!r} not found", "item_id")
        if item.type != "message" or item.role != "assistant":
            raise Rejected(
                "invalid_value", "Only assistant audio items can be truncated", "item_id"
            )
        if index != 0:
            raise Rejected("invalid_value", "content_index must be 0", "content_index")
        if isinstance(end_ms, bool) or not isinstance(end_ms, int) or end_ms < 0:
            raise Rejected(
                "invalid_value", "audio_end_ms must be a non-negative integer", "audio_end_ms"
            )
        if end_ms > item.audio_ms + 1e-6:
            raise Rejected(
                "invalid_value",
                f"Audio content of {int(item.audio_ms)}ms is already shorter than {end_ms}ms",
                "audio_end_ms",
            )
        item.truncated_at = end_ms
        record["ok"] = True
        await self.send(
            "conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=end_ms
        )


_Handler = Any
_HANDLERS: dict[str, _Handler] = {
    "session.update": FakeRealtimeSession._session_update,
    "input_audio_buffer.append": FakeRealtimeSession._append,
    "input_audio_buffer.commit": FakeRealtimeSession._buffer_commit,
    "input_audio_buffer.clear": FakeRealtimeSession._buffer_clear,
    "conversation.item.create": FakeRealtimeSession._item_create,
    "conversation.item.delete": FakeRealtimeSession._item_delete,
    "conversation.item.truncate": FakeRealtimeSession._item_truncate,
    "response.create": lambda s, e: s.responses.create(e),
    "response.cancel": lambda s, e: s.responses.cancel_event(e),
}
