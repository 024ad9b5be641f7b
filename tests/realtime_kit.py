"""What the whole-call tests of the speech-to-speech engines read off a served call: its end,
its transcripts and its event record (OpenAI Realtime, Gemini Live, Ultravox); and the calls
the Gemini Live and Ultravox tests place the same way: greeted, answered, barged in on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
from engine_kits import Kit, hello, open_kit

from getpatter.testing.twilio import FakeCall, FakeTwilio

from helpers import CALLER, NUMBER

Serve = Callable[..., Any]
LONG_GREETING = "Welcome to Acme, where we have many wonderful things to tell you about. " * 4


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


def kit_fixture(kind: str) -> Any:
    """The `kit` fixture of one engine's test file: that engine's fake, open for the test."""

    @pytest.fixture
    async def kit() -> AsyncIterator[Kit]:
        async with open_kit(kind) as k:
            yield k

    return kit


async def greeted(
    serve: Serve, net: FakeTwilio, agent: dict[str, Any], greeting: str, within: float = 8.0
) -> tuple[Any, FakeCall]:
    """Serve `agent`, place a call, wait until the agent has said `greeting`."""
    s = await serve(agent)
    call = await net.place_call(from_=CALLER, to=NUMBER)
    await call.wait_for(saying(s, "assistant", greeting), within)
    return s, call


async def answered(
    s: Any, call: FakeCall, answer: str, audio: np.ndarray | None = None
) -> dict[str, Any]:
    """The caller speaks (`audio`, else hello); once the agent has said `answer`, hang up:
    the call's end record."""
    await call.send_audio(hello(0.3, 1.0) if audio is None else audio)
    await call.wait_for(saying(s, "assistant", answer), 10)
    await call.hangup()
    return await ended(s, call)


async def barged_in(serve: Serve, net: FakeTwilio, kit: Kit) -> tuple[Any, dict[str, Any]]:
    """The engine's own VAD hears the caller first (60 ms); the caller speaks over
    LONG_GREETING once 1.5 s of it was heard, the agent says "Sorry, go ahead.": (the served
    agent, the end record)."""
    kit.fake.vad_start_ms = 60
    s = await serve(kit.agent(["Sorry, go ahead."], first_message=LONG_GREETING.strip()))
    call = await net.place_call(from_=CALLER, to=NUMBER)
    await call.wait_for(lambda: len(call.played) > 12000, 8)  # 1.5 s of the greeting heard
    return s, await answered(s, call, "Sorry, go ahead.", hello(0.0, 1.0))


async def hello_call(
    serve: Serve, net: FakeTwilio, agent: dict[str, Any]
) -> tuple[dict[str, Any], FakeCall]:
    """Serve `agent`, place a call that says hello, wait (10 s) for its end: (the end record,
    the call)."""
    s = await serve(agent)
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=hello())
    return await ended(s, call, 10), call
