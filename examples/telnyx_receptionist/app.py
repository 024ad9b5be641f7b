"""A receptionist on a Telnyx number, on the pipeline most voice agents use: Deepgram hears,
an OpenAI model thinks (with a tool and transfers), ElevenLabs speaks.

    TELNYX_API_KEY=... TELNYX_CONNECTION_ID=... TELNYX_PUBLIC_KEY=... DEEPGRAM_API_KEY=... \\
    OPENAI_API_KEY=... ELEVENLABS_API_KEY=... WEBHOOK_URL=abc.ngrok.io \\
        getpatter serve examples/telnyx_receptionist/app.py:app
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from getpatter import DeepgramSTT, ElevenLabsTTS, OpenAILLM, Patter, Telnyx, Tool

FRONT_DESK = "+15550003333"
HOURS = {"weekdays": "9:00 to 18:00", "saturday": "10:00 to 14:00", "sunday": "closed"}


def opening_hours(args: dict[str, Any], ctx: dict[str, Any]) -> dict[str, str]:
    """The model asks for the day it needs; it reads the answer back in its own words."""
    day = str(args.get("day", "weekdays")).lower()
    return {"day": day, "hours": HOURS.get(day, HOURS["weekdays"])}


def app() -> tuple[Patter, Any, dict[str, Any]]:
    phone = Patter(
        carrier=Telnyx(),  # TELNYX_API_KEY, TELNYX_CONNECTION_ID, TELNYX_PUBLIC_KEY
        phone_number=os.environ.get("PHONE_NUMBER", "+15550001234"),
        webhook_url=os.environ.get("WEBHOOK_URL", ""),
    )
    agent = phone.agent(
        stt=DeepgramSTT(),  # DEEPGRAM_API_KEY
        llm=OpenAILLM(model="gpt-4o-mini"),  # OPENAI_API_KEY
        tts=ElevenLabsTTS(),  # ELEVENLABS_API_KEY
        system_prompt=(
            "You are the receptionist of the Harbour Clinic. Answer briefly, in spoken "
            "sentences. Use opening_hours for opening times. If the caller wants a person, "
            f"say so and transfer them to the front desk at {FRONT_DESK}."
        ),
        first_message="Harbour Clinic, good morning. How can I help?",
        tools=[
            Tool(
                name="opening_hours",
                description="The clinic's opening hours for a day.",
                parameters={
                    "type": "object",
                    "properties": {
                        "day": {"type": "string", "enum": ["weekdays", "saturday", "sunday"]}
                    },
                    "required": ["day"],
                },
                handler=opening_hours,
            )
        ],
    )
    return phone, agent, {}


if __name__ == "__main__":
    phone, agent, serve_kwargs = app()
    asyncio.run(phone.serve(agent, port=8000, **serve_kwargs))
