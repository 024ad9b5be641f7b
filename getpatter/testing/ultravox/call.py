"""One joined Ultravox call on the fake: caller audio and its turns, the agent's utterances,
client tools. See `getpatter.testing.ultravox`."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import WSMsgType, web

from getpatter.testing.conversing import EnergyVad, ModelTurn, said_by
from getpatter.testing.model_script import FunctionCall, Reply, tone

if TYPE_CHECKING:
    from .server import FakeUltravox

CHUNK_MS = 60


class FakeUltravoxCall(ModelTurn):
    """One call's socket. For assertions: `definition` (the call as created), `received`
    (data messages), `tool_results`, `forced` (forced agent messages), `user_texts`,
    `audio_ms` (caller audio received), `sent` (data messages sent)."""

    def __init__(
        self,
        fake: FakeUltravox,
        ws: web.WebSocketResponse,
        request: web.Request,
        call_id: str,
        definition: dict[str, Any],
    ) -> None:
        self.fake = fake
        self.ws = ws
        self.request = request
        self.call_id = call_id
        self.definition = definition
        medium = definition["medium"]["serverWebSocket"]
        self.in_rate = int(medium["inputSampleRate"])
        self.out_rate = int(medium.get("outputSampleRate") or self.in_rate)
        self.buffer_ms = int(medium.get("clientBufferSizeMs") or 60)
        self.closed = False
        self.received: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.tool_results: list[dict[str, Any]] = []
        self.forced: list[str] = []
        self.user_texts: list[str] = []
        self.audio_ms = 0.0
        self._ordinal = 0
        self._waiting_tool: str | None = None
        self._vad = EnergyVad()
        self._send_lock = asyncio.Lock()

    @property
    def system_prompt(self) -> str:
        return str(self.definition.get("systemPrompt") or "")

    @property
    def tool_names(self) -> list[str]:
        return [
            str((t.get("temporaryTool") or {}).get("modelToolName", ""))
            for t in self.definition.get("selectedTools") or []
        ]

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        await self._send(json.dumps(message))

    async def _send(self, data: str | bytes) -> None:
        if self.closed or self.ws.closed:
            return
        async with self._send_lock:
            try:
                if isinstance(data, bytes):
                    await self.ws.send_bytes(data)
                else:
                    await self.ws.send_str(data)
            except (ConnectionError, RuntimeError):
                self.closed = True

    async def run(self) -> None:
        await self.send({"type": "call_started", "callId": self.call_id})
        await self.send({"type": "state", "state": "listening"})
        if "user" not in (self.definition.get("firstSpeakerSettings") or {}):
            self._start_turn(self.fake.greeting)
        async for msg in self.ws:
            if msg.type == WSMsgType.BINARY:
                await self._audio(msg.data)
            elif msg.type == WSMsgType.TEXT:
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue  # (the service ignores what it cannot parse)
                if isinstance(data, dict):
                    self.received.append(data)
                    await self._message(data)
            else:
                break
            if self.closed:
                break

    async def _message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "ping":
            await self.send({"type": "pong", "timestamp": msg.get("timestamp")})
        elif kind == "forced_agent_message":
            content = str(msg.get("content") or "")
            self.forced.append(content)
            await self._interrupt(clear=True)
            self._start_turn(content)
        elif kind == "user_text_message":
            text = str(msg.get("text") or "")
            self.user_texts.append(text)
            if msg.get("urgency") == "immediate":
                await self._interrupt(clear=True)
            await self._transcript("user", text, final=True, medium="text")
            if not msg.get("deferResponse"):
                self._start_turn(self.fake.next_reply())
        elif kind == "client_tool_result":
            if msg.get("invocationId") != self._waiting_tool:
                return
            self._waiting_tool = None
            self.tool_results.append(msg)
            if msg.get("agentReaction", "speaks") != "listens":
                self._start_turn(self.fake.next_reply())
        elif kind == "hang_up":
            self.closed = True
            await self.ws.close()

    # --- the caller ----------------------------------------------------------------------

    async def _audio(self, data: bytes) -> None:
        samples = np.frombuffer(data[: len(data) // 2 * 2], "<i2")
        self.audio_ms += len(samples) * 1000 / self.in_rate
        vad, fake = self._vad, self.fake
        for frame in vad.frames(samples, self.in_rate):
            turn = vad.step(vad.loud(frame, fake.vad_rms), fake.vad_start_ms, fake.silence_ms)
            if turn == "started":
                await self._interrupt(clear=True)
            elif turn == "stopped":
                await self._transcript("user", self.fake.next_transcript(), final=True)
                self._start_turn(self.fake.next_reply())

    async def _transcript(
        self,
        role: str,
        text: str,
        *,
        final: bool,
        delta: bool = False,
        medium: str = "voice",
        ordinal: int | None = None,
    ) -> None:
        """One transcript message; every utterance (either side) has its own ordinal."""
        if ordinal is None:
            self._ordinal += 1
            ordinal = self._ordinal
        body: dict[str, Any] = {"type": "transcript", "role": role, "medium": medium}
        body["delta" if delta else "text"] = text
        body.update(final=final, ordinal=ordinal)
        await self.send(body)

    # --- the agent -----------------------------------------------------------------------

    async def _interrupt(self, *, clear: bool) -> None:
        if self.turn_in_flight:
            self.stop_turn()
            if clear:
                await self.send({"type": "playback_clear_buffer"})
            await self.send({"type": "state", "state": "listening"})

    async def _speak(self, reply: Reply) -> None:
        await self.send({"type": "state", "state": "thinking"})
        if isinstance(reply, FunctionCall):
            self._waiting_tool = f"inv-{secrets.token_hex(6)}"
            params = json.loads(reply.arguments_json or "{}")
            await self.send(
                {
                    "type": "client_tool_invocation",
                    "toolName": reply.name,
                    "invocationId": self._waiting_tool,
                    "parameters": params,
                }
            )
            return
        self._ordinal += 1
        ordinal = self._ordinal
        await self.send({"type": "state", "state": "speaking"})
        audio = _resampled(reply, self.out_rate, self.fake.seconds_per_char)
        chunk = self.out_rate * 2 * CHUNK_MS // 1000
        pieces = [audio[i : i + chunk] for i in range(0, len(audio), chunk)]
        words = re.findall(r"\S+\s*", reply)
        said, t0, sent_ms = 0, time.monotonic(), 0.0
        try:
            for n, piece in enumerate(pieces, 1):
                target = said_by(words, n, len(pieces))
                if target > said:
                    await self._transcript(
                        "agent",
                        "".join(words[said:target]),
                        final=False,
                        delta=True,
                        ordinal=ordinal,
                    )
                    said = target
                await self._send(piece)
                sent_ms += CHUNK_MS
                # as fast as generated, but at most the client's buffer ahead of real time
                played_ms = (time.monotonic() - t0) * 1000
                ahead = sent_ms - played_ms - self.buffer_ms
                pace = sent_ms / self.fake.audio_speed - played_ms if self.fake.audio_speed else 0
                wait = max(ahead, pace, 0.0)
                if wait:
                    await asyncio.sleep(wait / 1000)
        except asyncio.CancelledError:
            await self._transcript("agent", "".join(words[:said]), final=True, ordinal=ordinal)
            raise
        await self._transcript("agent", reply, final=True, ordinal=ordinal)
        await self.send({"type": "state", "state": "listening"})


def _resampled(text: str, rate: int, seconds_per_char: float) -> bytes:
    """The tone stand-in for `text`, as s16le PCM at `rate`."""
    audio, _ = tone(text, "audio/pcm", seconds_per_char, 440.0)  # 24 kHz
    samples = np.frombuffer(audio, "<i2")
    if rate != 24000:
        idx = (np.arange(int(len(samples) * rate / 24000)) * 24000 / rate).astype(int)
        samples = samples[idx]
    return samples.astype("<i2").tobytes()
