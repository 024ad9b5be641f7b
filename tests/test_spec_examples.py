"""The spec's 'Making Outbound Calls' and 'Complete Example', run against the fake network.

Changed from the spec's text: the credentials and base URL point at the fake, the port is a
free one, and a test engine stands in for OpenAIRealtime (which arrives with its own issue).
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from getpatter import Guardrail, Patter, Tool, Twilio
from getpatter.testing.engines import ScriptedEngine
from getpatter.testing.twilio import FakeTwilio

from helpers import CALLER, HOST, NUMBER, speech


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_making_outbound_calls(net: FakeTwilio) -> None:
    port = free_port()
    net.route(HOST, f"127.0.0.1:{port}")
    net.set_callee("+15550009876", answer="machine", machine_greeting_s=0.3)

    phone = Patter(
        carrier=Twilio(net.account_sid, net.auth_token, base_url=net.base_url),
        phone_number=NUMBER,
        webhook_url=HOST,
    )
    agent = phone.agent(engine=ScriptedEngine(), first_message="Hello!")

    # --- the spec's main(), unchanged ---
    async def main() -> None:
        server_task = asyncio.create_task(phone.serve(agent, port=port))
        await phone.ready
        try:
            await phone.call(
                to="+15550009876",
                agent=agent,
                machine_detection=True,
                voicemail_message="Please call us back at 555-000-1234.",
            )
        finally:
            await asyncio.sleep(1.5)  # (test only: let the voicemail play before hanging up)
            await phone.disconnect()
            server_task.cancel()

    await main()
    fake = next(iter(net.calls.values()))
    assert fake.said == ["Please call us back at 555-000-1234."]
    assert fake.ended


async def test_complete_example(net: FakeTwilio, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    net.route(HOST, f"127.0.0.1:{port}")
    phone = Patter(
        carrier=Twilio(net.account_sid, net.auth_token, base_url=net.base_url),
        phone_number=NUMBER,
        webhook_url=HOST,
    )

    async def schedule_appointment(args: dict, ctx: dict) -> dict:  # type: ignore[type-arg]
        return {"confirmation": "ACME-123", "date": args["date"], "time": args["time"]}

    agent = phone.agent(
        engine=ScriptedEngine(replies=["Let me check that for you."]),
        system_prompt="""You are a friendly receptionist for Acme Corp.
Help callers schedule appointments, answer general questions, and transfer to the right department.
Transfer billing questions to +15550001111.
Transfer technical support to +15550002222.""",
        first_message="Thank you for calling Acme Corp! How can I help you today?",
        tools=[
            Tool(
                name="schedule_appointment",
                description="Schedule an appointment for the caller.",
                parameters={
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "description": "Caller's full name"},
                        "date": {"type": "string", "description": "Preferred date (YYYY-MM-DD)"},
                        "time": {"type": "string", "description": "Preferred time (HH:MM)"},
                        "reason": {"type": "string", "description": "Reason for appointment"},
                    },
                    "required": ["name", "date", "time"],
                },
                handler=schedule_appointment,
            ),
        ],
        guardrails=[
            Guardrail(
                name="No legal advice",
                blocked_terms=["lawsuit", "sue", "legal action"],
                replacement="I'm not able to provide legal guidance. Let me transfer you to our legal department.",  # noqa: E501
            ),
        ],
    )

    async def on_call_start(event):  # type: ignore[no-untyped-def]
        print(f"[CALL START] {event['direction']} call {event['call_id']}")
        print(f"  From: {event['caller']} -> To: {event['callee']}")

    async def on_call_end(event):  # type: ignore[no-untyped-def]
        print(f"[CALL END] {event['call_id']}")
        for entry in event["transcript"]:
            print(f"  [{entry['role']}]: {entry['text']}")

    async def on_transcript(event):  # type: ignore[no-untyped-def]
        print(f"  [{event['role']}]: {event['text']}")

    async def main() -> None:
        await phone.serve(
            agent,
            port=port,
            recording=True,
            on_call_start=on_call_start,
            on_call_end=on_call_end,
            on_transcript=on_transcript,
            voicemail_message="Hi, this is Acme Corp. Please call us back at your earliest convenience.",  # noqa: E501
        )

    # The spec runs main() with asyncio.run; here the test's loop runs it, and a caller dials in.
    server = asyncio.create_task(main())
    await phone.ready
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=1.0))
    engine = agent.engine
    assert isinstance(engine, ScriptedEngine)
    await call.wait_for(lambda: bool(engine.calls) and engine.calls[0].turn >= 1, 8)
    await asyncio.sleep(0.3)
    await call.hangup()
    await call.wait_ended()
    await asyncio.sleep(0.2)
    await phone.disconnect()
    await asyncio.wait_for(server, 5)
    out = capsys.readouterr().out
    assert f"[CALL START] inbound call {call.call_sid}" in out
    assert f"  From: {CALLER} -> To: {NUMBER}" in out
    assert "  [assistant]: Thank you for calling Acme Corp! How can I help you today?" in out
    assert "  [assistant]: Let me check that for you." in out
    assert f"[CALL END] {call.call_sid}" in out
    assert any(r.call_sid == call.call_sid for r in net.recordings.values())
