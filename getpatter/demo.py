"""The receptionist from the getpatter docs, as a pipeline agent that runs fully offline.

Speech is the embedded default (pocketsphinx hears, espeak-ng speaks) and the dialogue is
plain Python in `on_message`, so no keys are needed. `make demo` calls it through the
built-in phone network; `getpatter simulate examples/receptionist.py:app --say "..."` too.
"""

from __future__ import annotations

import os
from typing import Any

from getpatter import Guardrail, Message, Patter, Tool, Twilio
from getpatter.plugins.local.stt import LocalSTT
from getpatter.plugins.local.tts import LocalTTS

# What callers of this demo say; recognition is constrained to these (with a fallback).
PHRASES = [
    "what are your opening hours",
    "i would like to book an appointment for tomorrow at ten",
    "sorry i have to go now goodbye",
    "thank you goodbye",
]


async def schedule_appointment(args: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    return {"confirmation": "ACME-123", "date": args["date"], "time": args["time"]}


def app() -> tuple[Patter, Any, dict[str, Any]]:
    phone = Patter(
        carrier=Twilio(),  # TWILIO_* from env; the simulator points it at its own network
        phone_number=os.environ.get("PHONE_NUMBER", "+15550001234"),
        webhook_url=os.environ.get("WEBHOOK_URL", "localhost"),
        persist=False,
    )
    booking = Tool(
        name="schedule_appointment",
        description="Schedule an appointment for the caller.",
        parameters={
            "type": "object",
            "properties": {"date": {"type": "string"}, "time": {"type": "string"}},
            "required": ["date", "time"],
        },
        handler=schedule_appointment,
    )
    agent = phone.agent(
        stt=LocalSTT(phrases=PHRASES),
        tts=LocalTTS(rate_wpm=160),
        first_message="Thank you for calling Acme Corp! How can I help you today?",
        tools=[booking],
        guardrails=[
            Guardrail(
                name="No legal advice",
                blocked_terms=["lawsuit", "sue", "legal action"],
                replacement="I'm not able to provide legal guidance.",
            )
        ],
    )

    async def on_message(msg: Message) -> str:
        text = msg.text.lower()
        if "hours" in text:
            return "We are open Monday to Friday, from nine in the morning to five in the evening."
        if "book" in text or "appointment" in text:
            # run through the agent's tool, as an LLM's tool call would be: timed, logged
            booked = await msg.call_tool("schedule_appointment", date="tomorrow", time="10:00")
            return (
                f"Done! You are booked for tomorrow at ten. Your confirmation number is "
                f"{booked['confirmation']}. Please arrive ten minutes early, bring a photo ID, "
                "and let us know a day ahead if you need to change the time."
            )
        if "goodbye" in text or "go" in text:
            return "No problem at all. Goodbye!"
        return "Sorry, I didn't catch that. Could you say it again?"

    return phone, agent, {"on_message": on_message}
