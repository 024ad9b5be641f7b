"""What the whole-call tests of the speech-to-speech engines read off a served call: its end,
its transcripts and its event record (OpenAI Realtime, Gemini Live, Ultravox)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from getpatter.testing.twilio import FakeCall


async def ended(s: Any, call: FakeCall, within: float = 8.0) -> dict[str, Any]:
    """Wait for our side of the call to be over (and the carrier's, unless transferred)."""
    await call.wait_for(lambda: call.ended or bool(call.transfers), within)
    return await call_end(s, call, within)


async def call_end(s: Any, call: FakeCall, within: float = 8.0) -> dict[str, Any]:
    """The call's `on_call_end` record, once there is one."""
    await call.wait_for(lambda: bool(s.events.get("on_call_end")), within)
    record: dict[str, Any] = s.events["on_call_end"][0]
    return record


def transcripts(s: Any) -> list[tuple[str, str]]:
    return [(e["role"], e["text"]) for e in s.events.get("on_transcript", [])]


def saying(s: Any, role: str, text: str) -> Callable[[], bool]:
    """True once `role` has said `text` (a transcript event)."""
    return lambda: (role, text) in transcripts(s)


def kinds(record: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in record["events"] if e["kind"] == kind]
