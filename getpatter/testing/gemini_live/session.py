"""One connection to the fake Gemini Live API: setup, the caller's audio and its turns, the
model's turns, tool calls. See `getpatter.testing.gemini_live`."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import secrets
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import WSMsgType, web

from getpatter.testing.conversing import EnergyVad, ModelTurn, said_by
from getpatter.testing.model_script import FunctionCall, Reply, spoken_text, tone

if TYPE_CHECKING:
    from .server import FakeGeminiLive

VOICES = frozenset(
    "Puck Charon Kore Fenrir Aoede Leda Orus Zephyr Callirrhoe Autonoe Enceladus Iapetus "
    "Umbriel Algieba Despina Erinome Algenib Rasalgethi Laomedeia Achernar Alnilam Schedar "
    "Gacrux Pulcherrima Achird Zubenelgenubi Vindemiatrix Sadachbia Sadaltager Sulafat".split()
)
OUT_RATE = 24000
TOKENS_PER_SECOND = 32  # audio tokens per second of audio, as the docs count them
_OPAQUE = frozenset({"args", "response", "parameters", "parametersJsonSchema", "properties"})


class Invalid(Exception):
    """A client message the service refuses: the socket closes with `code` and `reason`."""

    def __init__(self, reason: str, code: int = 1007) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def proto_bytes(value: object) -> bytes:
    """A ProtoJSON `bytes` field: standard or URL-safe base64, padded or not."""
    if not isinstance(value, str):
        raise ValueError("bytes must be a base64 string")
    text = value.replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def camel(value: Any) -> Any:
    """ProtoJSON field names: snake_case and lowerCamelCase are the same field. Values of
    user-defined structures (function arguments and responses, schemas) are left alone."""
    if isinstance(value, list):
        return [camel(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, v in value.items():
        name = re.sub(r"_([a-z])", lambda m: m[1].upper(), key)
        out[name] = v if name in _OPAQUE else camel(v)
    return out


class FakeLiveSession(ModelTurn):
    """One WebSocket, i.e. one Live session. For assertions: `setup` (as sent, camelCased),
    `received` (every client message), `sent`, `tool_responses`, `client_turns` (the text
    of every clientContent turn), `audio_ms` (caller audio received)."""

    def __init__(
        self,
        fake: FakeGeminiLive,
        ws: web.WebSocketResponse,
        request: web.Request,
        authorized: bool,
    ) -> None:
        self.fake = fake
        self.ws = ws
        self.request = request
        self.authorized = authorized
        self.closed = False
        self.setup: dict[str, Any] = {}
        self.received: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.tool_responses: list[dict[str, Any]] = []
        self.client_turns: list[str] = []
        self.audio_ms = 0.0
        self._waiting_tools: set[str] = set()
        self._vad = EnergyVad()
        self._rate = 16000
        self._out_ms = 0.0

    # --- config views --------------------------------------------------------------------

    @property
    def model(self) -> str:
        return str(self.setup.get("model", ""))

    @property
    def instructions(self) -> str:
        parts = (self.setup.get("systemInstruction") or {}).get("parts") or []
        return " ".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))

    @property
    def voice(self) -> str:
        speech = (self.setup.get("generationConfig") or {}).get("speechConfig") or {}
        prebuilt = (speech.get("voiceConfig") or {}).get("prebuiltVoiceConfig") or {}
        return str(prebuilt.get("voiceName", ""))

    @property
    def tool_names(self) -> list[str]:
        return [
            f.get("name", "")
            for tool in self.setup.get("tools") or []
            for f in tool.get("functionDeclarations") or []
        ]

    @property
    def automatic_vad(self) -> bool:
        rt = self.setup.get("realtimeInputConfig") or {}
        return not (rt.get("automaticActivityDetection") or {}).get("disabled", False)

    # --- the connection ------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if self.closed or self.ws.closed:
            return
        try:
            await self.ws.send_str(json.dumps(message))
        except (ConnectionError, RuntimeError):
            self.closed = True

    async def close(self, code: int, reason: str) -> None:
        self.fake.recorded_close(code, reason)
        self.closed = True
        await self.ws.close(code=code, message=reason.encode()[:123])

    async def run(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != WSMsgType.TEXT and msg.type != WSMsgType.BINARY:
                    break
                try:
                    data = msg.data if msg.type == WSMsgType.TEXT else msg.data.decode()
                    await self._on_message(json.loads(data))
                except (ValueError, UnicodeDecodeError):
                    await self.close(1007, "Invalid JSON payload received.")
                except Invalid as exc:
                    await self.close(exc.code, exc.reason)
                if self.closed:
                    break
        finally:
            self.stop_turn()

    async def _on_message(self, raw: object) -> None:
        if not isinstance(raw, dict) or len(raw) != 1:
            raise Invalid("Request contains an invalid argument.")
        message = camel(raw)
        self.received.append(message)
        ((kind, body),) = message.items()
        if not self.setup:
            if kind != "setup":
                raise Invalid("Request contains an invalid argument.")
            await self._on_setup(body)
            return
        handler = {
            "realtimeInput": self._realtime_input,
            "clientContent": self._client_content,
            "toolResponse": self._tool_response,
        }.get(kind)
        if handler is None or not isinstance(body, dict):
            raise Invalid("Request contains an invalid argument.")
        await handler(body)

    async def _on_setup(self, setup: object) -> None:
        if not self.authorized:
            raise Invalid("API key not valid. Please pass a valid API key.")
        if not isinstance(setup, dict) or not isinstance(setup.get("model"), str):
            raise Invalid("Request contains an invalid argument.")
        model = setup["model"]
        if not model.startswith("models/") or model[7:] not in self.fake.models:
            raise Invalid(
                f"{model} is not found for API version v1beta, or is not supported for "
                "bidiGenerateContent. Call ListModels to see the list of available models "
                "and their supported methods.",
                1008,
            )
        self.setup = setup
        modalities = (setup.get("generationConfig") or {}).get("responseModalities") or ["AUDIO"]
        voice = self.voice
        if modalities != ["AUDIO"] or (voice and voice not in VOICES):
            raise Invalid("Request contains an invalid argument.")
        await self.send({"setupComplete": {}})

    # --- caller audio and turns ----------------------------------------------------------

    async def _realtime_input(self, body: dict[str, Any]) -> None:
        if "activityStart" in body or "activityEnd" in body:
            if self.automatic_vad:
                raise Invalid(
                    "Explicit activity control is not supported when automatic activity "
                    "detection is enabled."
                )
            if "activityStart" in body:
                await self._speech_started()
            else:
                await self._speech_ended()
            return
        blobs = [body["audio"]] if "audio" in body else list(body.get("mediaChunks") or [])
        for blob in blobs:
            await self._audio(blob)

    async def _audio(self, blob: object) -> None:
        if not isinstance(blob, dict):
            raise Invalid("Request contains an invalid argument.")
        match = re.fullmatch(r"audio/pcm(?:;rate=(\d+))?", str(blob.get("mimeType", "")))
        try:
            data = proto_bytes(blob.get("data"))
        except (ValueError, binascii.Error):
            raise Invalid("Invalid value at 'realtime_input.audio.data'.") from None
        if match is None or len(data) % 2:
            raise Invalid("Request contains an invalid argument.")
        self._rate = int(match[1] or 16000)
        samples = np.frombuffer(data, "<i2")
        self.audio_ms += len(samples) * 1000 / self._rate
        if not self.automatic_vad:
            return
        vad, fake = self._vad, self.fake
        for frame in vad.frames(samples, self._rate):
            turn = vad.step(vad.loud(frame, fake.vad_rms), fake.vad_start_ms, fake.silence_ms)
            if turn == "started":
                await self._speech_started()
            elif turn == "stopped":
                await self._speech_ended()

    async def _speech_started(self) -> None:
        self._vad.started()
        await self._interrupt()

    async def _speech_ended(self) -> None:
        self._vad.stopped()
        if self.setup.get("inputAudioTranscription") is not None:
            text = self.fake.next_transcript()
            await self.send({"serverContent": {"inputTranscription": {"text": text}}})
        self._start_turn(self.fake.next_reply())

    async def _interrupt(self) -> None:
        """Whatever the model is saying stops: `interrupted`, then `turnComplete`."""
        if self.turn_in_flight:
            self.stop_turn()
            await self.send({"serverContent": {"interrupted": True}})
            await self.send({"serverContent": {"turnComplete": True}})

    # --- conversation from the client ----------------------------------------------------

    async def _client_content(self, body: dict[str, Any]) -> None:
        turns = body.get("turns") or []
        if not isinstance(turns, list):
            raise Invalid("Request contains an invalid argument.")
        text = " ".join(
            str(p.get("text", ""))
            for t in turns
            if isinstance(t, dict)
            for p in t.get("parts") or []
            if isinstance(p, dict)
        ).strip()
        if text:
            self.client_turns.append(text)
        if body.get("turnComplete"):
            await self._interrupt()
            quoted = spoken_text(text)
            self._start_turn(quoted if quoted != text else self.fake.next_reply())

    async def _tool_response(self, body: dict[str, Any]) -> None:
        responses = body.get("functionResponses") or []
        for r in responses if isinstance(responses, list) else []:
            if not isinstance(r, dict) or r.get("id") not in self._waiting_tools:
                raise Invalid("Request contains an invalid argument.")
            if not isinstance(r.get("response"), dict):
                raise Invalid("Invalid value at 'tool_response.function_responses[0].response'.")
            self._waiting_tools.discard(r["id"])
            self.tool_responses.append(r)
        if not self._waiting_tools:
            self._start_turn(self.fake.next_reply())

    # --- the model's turns ---------------------------------------------------------------

    async def _speak(self, reply: Reply) -> None:
        if self.fake.first_audio_delay:
            await asyncio.sleep(self.fake.first_audio_delay)
        if isinstance(reply, FunctionCall):
            call = {"id": f"function-call-{secrets.token_hex(6)}", "name": reply.name}
            call["args"] = json.loads(reply.arguments_json or "{}")
            self._waiting_tools = {call["id"]}
            await self.send({"toolCall": {"functionCalls": [call]}})
            return
        audio, _ = tone(reply, "audio/pcm", self.fake.seconds_per_char, 440.0)
        chunk = OUT_RATE * 2 * self.fake.chunk_ms // 1000
        pieces = [audio[i : i + chunk] for i in range(0, len(audio), chunk)]
        words = re.findall(r"\S+\s*", reply)
        said = 0
        transcribe = self.setup.get("outputAudioTranscription") is not None
        turn_ms = 0.0
        for n, piece in enumerate(pieces, 1):
            b64 = base64.b64encode(piece).decode()
            part = {"inlineData": {"mimeType": f"audio/pcm;rate={OUT_RATE}", "data": b64}}
            await self.send({"serverContent": {"modelTurn": {"parts": [part]}}})
            target = said_by(words, n, len(pieces))
            if transcribe and target > said:
                text = "".join(words[said:target])
                said = target
                await self.send({"serverContent": {"outputTranscription": {"text": text}}})
            ms = len(piece) / (OUT_RATE * 2 / 1000)
            turn_ms += ms
            self._out_ms += ms
            if self.fake.audio_speed > 0:
                await asyncio.sleep(ms / 1000 / self.fake.audio_speed)
        await self.send({"serverContent": {"generationComplete": True}})
        prompt_audio = int(self.audio_ms / 1000 * TOKENS_PER_SECOND)
        prompt_text = len(self.instructions) // 4 + 10 * len(self.tool_names)
        out_audio = int(turn_ms / 1000 * TOKENS_PER_SECOND)
        usage = {
            "promptTokenCount": prompt_audio + prompt_text,
            "responseTokenCount": out_audio,
            "totalTokenCount": prompt_audio + prompt_text + out_audio,
            "promptTokensDetails": [
                {"modality": "TEXT", "tokenCount": prompt_text},
                {"modality": "AUDIO", "tokenCount": prompt_audio},
            ],
            "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": out_audio}],
        }
        await self.send({"serverContent": {"turnComplete": True}, "usageMetadata": usage})
