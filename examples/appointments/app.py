"""The docs' Complete Example: a receptionist on OpenAI Realtime that books appointments with a
tool and transfers billing and support questions to a human.

    python examples/appointments/app.py                    # on a real number (see README.md)
    getpatter serve examples/appointments/app.py:app       # the same, with the CLI's options
    getpatter simulate examples/appointments/app.py:app --fake-realtime --say "Hello"
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from getpatter import Guardrail, OpenAIRealtime, Patter, Tool, Twilio

BILLING = "+15550001111"
SUPPORT = "+15550002222"
BOOKED: list[dict[str, Any]] = []  # your reservation system goes here


async def schedule_appointment(args: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    """Called by the model with the caller's name, date and time; what it returns, the model
    reads back to the caller."""
    BOOKED.append({**args, "caller": ctx["caller"]})
    return {"confirmation": "ACME-123", "date": args["date"], "time": args["time"]}


def app() -> tuple[Patter, Any, dict[str, Any]]:
    phone = Patter(
        carrier=Twilio(),  # TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN from the environment
        phone_number=os.environ.get("PHONE_NUMBER", "+15550001234"),
        webhook_url=os.environ.get("WEBHOOK_URL", ""),
    )
    agent = phone.agent(
        engine=OpenAIRealtime(voice="marin"),  # OPENAI_API_KEY from the environment
        system_prompt=(
            "You are a friendly receptionist for Acme Corp. Help callers schedule "
            "appointments and answer general questions. Transfer billing questions to "
            f"{BILLING} and technical support to {SUPPORT}: tell the caller first."
        ),
        first_message="Thank you for calling Acme Corp! How can I help you today?",
        tools=[
            Tool(
                name="schedule_appointment",
                description="Schedule an appointment for the caller.",
                parameters={
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "description": "Caller's full name"},
                        "date": {"type": "string", "description": "Date (YYYY-MM-DD)"},
                        "time": {"type": "string", "description": "Time (HH:MM)"},
                    },
                    "required": ["name", "date", "time"],
                },
                handler=schedule_appointment,
            ),
        ],  # transfer_call and end_call are built in: the model can always use them
        guardrails=[
            Guardrail(
                name="No legal advice",
                blocked_terms=["lawsuit", "sue", "legal action"],
                replacement="I'm not able to give legal guidance, sorry.",
            )
        ],
    )

    def on_call_end(record: dict[str, Any]) -> None:
        print(f"[call end] {record['call_id']}: {record['end_reason']}")

    return phone, agent, {"on_call_end": on_call_end}


if __name__ == "__main__":
    phone, agent, serve_kwargs = app()
    asyncio.run(phone.serve(agent, port=8000, **serve_kwargs))
