"""Outbound reminder calls: ring each patient, say the reminder, take a yes or a no — and leave
a voicemail when an answering machine picks up.

    python examples/reminders/app.py                     # the real thing (see README.md)
    getpatter simulate examples/reminders/app.py:app --outbound --say "yes I will be there"
    getpatter simulate examples/reminders/app.py:app --outbound --answered-by machine
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from getpatter import LocalSTT, LocalTTS, Message, Patter, Twilio

#: Who to remind (in a real app: tomorrow's appointments from your calendar).
REMINDERS = [{"to": "+15550009876", "name": "Ann", "when": "tomorrow at ten"}]

VOICEMAIL = (
    "Hello, this is Acme Dental with a reminder of your appointment tomorrow at ten. "
    "Call us back on 555 000 1234 if you need to change it. Goodbye."
)
PHRASES = ["yes i will be there", "no i need to cancel", "can i move it", "thank you goodbye"]


async def on_message(msg: Message) -> str:
    text = msg.text.lower()
    if "cancel" in text or text.startswith("no"):
        answer = "No problem, I have cancelled it. Call us whenever you want a new time. Goodbye."
    elif "move" in text or "change" in text:
        answer = "Of course. Someone from the front desk will call you back today. Goodbye."
    elif "yes" in text:
        answer = "Great, see you then. Goodbye!"
    else:
        return "Sorry, I did not catch that. Will you make it: yes or no?"
    await msg.call_tool("end_call")  # hang up once the goodbye has been heard
    return answer


def app() -> tuple[Patter, Any, dict[str, Any]]:
    phone = Patter(
        carrier=Twilio(),  # TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN from the environment
        phone_number=os.environ.get("PHONE_NUMBER", "+15550001234"),
        webhook_url=os.environ.get("WEBHOOK_URL", ""),
    )
    agent = phone.agent(
        stt=LocalSTT(phrases=PHRASES),
        tts=LocalTTS(rate_wpm=160),
        first_message=(
            "Hello, this is Acme Dental calling to remind you of your appointment tomorrow at "
            "ten. Will you be able to make it?"
        ),
    )
    # voicemail_message: what a machine hears (machine_detection is on for outbound calls)
    return phone, agent, {"on_message": on_message, "voicemail_message": VOICEMAIL}


async def remind() -> None:
    """Serve, then place one call per reminder and report how each ended."""
    phone, agent, serve_kwargs = app()
    serving = asyncio.create_task(phone.serve(agent, port=8000, **serve_kwargs))
    await phone.ready
    try:
        for who in REMINDERS:
            call = await phone.call(
                to=who["to"],
                agent=agent.replace(
                    first_message=f"Hello {who['name']}, this is Acme Dental reminding you of "
                    f"your appointment {who['when']}. Will you be able to make it?"
                ),
                machine_detection=True,
                voicemail_message=VOICEMAIL,
            )
            record = await call.wait(timeout=600)
            print(f"{who['name']}: {record['end_reason']}")
    finally:
        await phone.disconnect()
        await serving


if __name__ == "__main__":
    asyncio.run(remind())
