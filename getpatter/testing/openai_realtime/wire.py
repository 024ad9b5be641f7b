"""Shared pieces of the fake OpenAI Realtime service: script types, conversation items, the
session.update rules and the audio the fake "speaks". See `getpatter.testing.openai_realtime`."""

from __future__ import annotations

import asyncio
import copy
import secrets
from dataclasses import dataclass, field
from typing import Any

VOICES = frozenset("alloy ash ballad coral echo sage shimmer verse marin cedar".split())
FORMATS = {"audio/pcmu": 8000, "audio/pcma": 8000, "audio/pcm": 24000}
FRAME_MS = 20


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class Rejected(Exception):
    """A client event the service refuses: becomes an `error` event."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


@dataclass
class Item:
    id: str
    type: str  # message | function_call | function_call_output
    role: str = ""
    status: str = "completed"
    transcript: str = ""
    audio_ms: float = 0.0  # assistant audio generated so far
    call_id: str = ""
    name: str = ""
    arguments: str = ""
    output: str = ""
    truncated_at: int | None = None

    def as_json(self) -> dict[str, Any]:
        base: dict[str, Any] = {"id": self.id, "object": "realtime.item", "type": self.type}
        if self.type == "message":
            kind = "output_audio" if self.role == "assistant" else "input_audio"
            transcript = self.transcript or None
            content = [{"type": kind, "transcript": transcript}]
            return {**base, "status": self.status, "role": self.role, "content": content}
        if self.type == "function_call":
            return {
                **base,
                "status": self.status,
                "call_id": self.call_id,
                "name": self.name,
                "arguments": self.arguments,
            }
        return {**base, "call_id": self.call_id, "output": self.output}


@dataclass
class Response:
    id: str
    metadata: dict[str, Any] | None
    task: asyncio.Task[None] | None = None
    items: list[Item] = field(default_factory=list)
    output_tokens_text: int = 0
    audio_ms: float = 0.0
    done: bool = False


def validate_session_update(config: dict[str, Any], update: object) -> dict[str, Any]:
    """The session after applying `update` to `config`; raises Rejected if it is invalid."""
    if not isinstance(update, dict):
        raise Rejected("missing_required_parameter", "Missing 'session'.", "session")
    if update.get("type") != "realtime":
        raise Rejected(
            "missing_required_parameter" if "type" not in update else "invalid_value",
            "session.type is required and must be 'realtime' (GA shape).",
            "session.type",
        )
    candidate = deep_merge(config, update)
    audio = candidate.get("audio")
    if not isinstance(audio, dict):
        raise Rejected("invalid_type", "session.audio must be an object", "session.audio")
    for side in ("input", "output"):
        fmt = (audio.get(side) or {}).get("format")
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind not in FORMATS:
            raise Rejected(
                "invalid_value",
                f"Invalid audio format {fmt!r}: use audio/pcm (24000 Hz), audio/pcmu or "
                "audio/pcma.",
                f"session.audio.{side}.format",
            )
        if isinstance(fmt, dict) and kind == "audio/pcm" and fmt.get("rate", 24000) != 24000:
            raise Rejected(
                "invalid_value",
                "audio/pcm supports only rate 24000.",
                f"session.audio.{side}.format.rate",
            )
    voice = audio["output"].get("voice")
    if not (voice in VOICES or (isinstance(voice, dict) and isinstance(voice.get("id"), str))):
        raise Rejected(
            "invalid_value",
            f"Invalid value: {voice!r}. Supported values are: "
            + ", ".join(f"'{v}'" for v in sorted(VOICES))
            + ".",
            "session.audio.output.voice",
        )
    td = audio["input"].get("turn_detection")
    if td is not None and (
        not isinstance(td, dict) or td.get("type") not in ("server_vad", "semantic_vad")
    ):
        raise Rejected(
            "invalid_value",
            "turn_detection must be null, server_vad or semantic_vad",
            "session.audio.input.turn_detection",
        )
    tools = candidate.get("tools") or []
    if not isinstance(tools, list):
        raise Rejected("invalid_type", "session.tools must be an array", "session.tools")
    for i, tool in enumerate(tools):
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(tool.get("name"), str)
            or "function" in tool  # the Chat Completions nesting, not the Realtime shape
        ):
            raise Rejected(
                "invalid_value",
                "a tool must be {'type': 'function', 'name': ..., 'description': ..., "
                "'parameters': ...}",
                f"session.tools[{i}]",
            )
    if "temperature" in update:
        raise Rejected(
            "unknown_parameter", "Unknown parameter: 'session.temperature'.", "temperature"
        )
    return candidate
