"""A take-away order line whose brain is any OpenAI-compatible chat server (OpenAI, vLLM, Ollama,
LM Studio, …): `on_message` streams the model's reply, and the agent speaks it sentence by
sentence while the rest is still being generated.

    OPENAI_BASE_URL=http://localhost:11434/v1 ORDER_MODEL=llama3.1 \\
        getpatter simulate examples/order_line/app.py:app --say "Two margheritas please"
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

from openai import AsyncOpenAI

from getpatter import LocalSTT, LocalTTS, Message, Patter, Twilio

MENU = "margherita 9 dollars, marinara 8 dollars, diavola 11 dollars, tiramisu 6 dollars"
PROMPT = (
    f"You take phone orders for Luigi's pizzeria. The menu: {MENU}. Keep answers short and "
    "spoken: no lists, no markdown. Repeat the order and the total before you finish."
)
PHRASES = ["two margheritas please", "and a tiramisu", "that is all thank you"]


def app() -> tuple[Patter, Any, dict[str, Any]]:
    phone = Patter(
        carrier=Twilio(),  # TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN from the environment
        phone_number=os.environ.get("PHONE_NUMBER", "+15550001234"),
        webhook_url=os.environ.get("WEBHOOK_URL", ""),
    )
    model = AsyncOpenAI(
        base_url=os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
        api_key=os.environ.get("OPENAI_API_KEY", "none"),  # local servers take any key
    )

    async def on_message(msg: Message) -> AsyncIterator[str]:
        stream = await model.chat.completions.create(
            model=os.environ.get("ORDER_MODEL", "gpt-4o-mini"),
            messages=[{"role": "system", "content": PROMPT}, *msg.history],  # type: ignore[list-item]
            stream=True,
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content

    agent = phone.agent(
        stt=LocalSTT(phrases=PHRASES),  # offline speech; swap in DeepgramSTT() etc. for real
        tts=LocalTTS(rate_wpm=160),
        first_message="Luigi's pizzeria, what can I get you?",
    )
    return phone, agent, {"on_message": on_message}


if __name__ == "__main__":
    phone, agent, serve_kwargs = app()
    asyncio.run(phone.serve(agent, port=8000, **serve_kwargs))
