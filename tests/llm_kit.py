"""What the LLM provider tests repeat (Gemini, Claude, the OpenAI-compatible presets): reading a
chat's events, the assistant turn that asked for tool calls, and a call in which the caller asks
for the opening hours and the model answers through a tool."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from getpatter.agent import Tool
from getpatter.core.providers import LLM, TextDelta, ToolCallRequest
from getpatter.testing.providers import ScriptedSTT, ScriptedTTS
from getpatter.testing.twilio import FakeCall, FakeTwilio

from call_kit import hang_up
from helpers import CALLER, NUMBER, speech

QUESTION = "when do you open on monday"
ANSWER = "We open at nine."
ACME = {"system_prompt": "You are Acme's phone agent.", "first_message": "Acme, how can I help?"}
HOURS: dict[str, Any] = {
    "name": "check_hours",
    "description": "Opening hours for a day.",
    "parameters": {"type": "object", "properties": {"day": {"type": "string"}}},
}


async def run(llm: LLM, messages: list[dict[str, Any]], tools: Any = ()) -> list[Any]:
    """All the events of one chat."""
    return [e async for e in llm.chat(messages, tools)]


def text_of(events: Iterable[Any]) -> str:
    """The text a chat's events said, joined."""
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def calling(calls: list[ToolCallRequest], content: str | None = None) -> dict[str, Any]:
    """The history's assistant turn that asked for `calls` (after saying `content`)."""
    return {
        "role": "assistant",
        "content": content,
        "tool_calls": [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in calls
        ],
    }


def hours_tool(seen: list[dict[str, Any]]) -> Tool:
    """HOURS as an agent's tool: records the arguments of each call, says it opens at 9am."""

    async def hours(args: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
        seen.append(args)
        return {"opens": "9am"}

    return Tool(handler=hours, **HOURS)


async def call_with_a_tool(
    serve: Callable[..., Any], net: FakeTwilio, **agent: Any
) -> tuple[dict[str, Any], FakeCall, ScriptedTTS]:
    """Serve `agent` (its llm, tools, prompts) hearing QUESTION; wait until it has spoken
    ANSWER and 1.2 s more, hang up: (the end record, the call, what the TTS was asked)."""
    tts = ScriptedTTS()
    s = await serve({"stt": ScriptedSTT([QUESTION]), "tts": tts, **agent})
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=2.0, tail=3.0))
    await call.wait_for(lambda: ANSWER in tts.texts, 15)
    await asyncio.sleep(1.2)
    return await hang_up(s, call), call, tts
