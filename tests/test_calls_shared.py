"""Whole calls, run unchanged on every carrier (Twilio, Telnyx, Plivo fakes), over real sockets.

Carrier-specific checks (signatures, wire details, the exact dial request) live in
test_calls_twilio.py / test_calls_outbound.py and test_calls_telnyx.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from engine_kits import Call, Kit, hello

from getpatter import Guardrail, MachineDetectionResult, Patter, Tool
from getpatter.testing.engines import ScriptedEngine

from carrier_nets import Network
from helpers import CALLER, HOST, NUMBER, speech

CALLEE = "+15550009876"


def media_times(network: Network, call: Any) -> list[float]:
    return network.app_sent(call, "media")


async def test_inbound_call_end_to_end(serve_any: Callable[..., Any], network: Network) -> None:
    engine = ScriptedEngine(replies=["Sure, let me help."])
    s = await serve_any({"engine": engine, "first_message": "Thanks for calling Acme!"})
    call = await network.fake.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=2.0))
    await call.wait_for(lambda: len(engine.calls) == 1 and engine.calls[0].turn >= 1, 8)
    await asyncio.sleep(0.5)
    await call.hangup()
    await call.wait_ended()
    ends = await s.ended()

    call_id = network.call_id(call)
    start = s.events["on_call_start"][0]
    assert start["call_id"] == call_id
    assert (start["caller"], start["callee"], start["direction"]) == (CALLER, NUMBER, "inbound")
    roles = [(e["role"], e["text"]) for e in s.events["on_transcript"]]
    assert roles[0] == ("assistant", "Thanks for calling Acme!")
    assert ("user", "<utterance 1>") in roles and ("assistant", "Sure, let me help.") in roles
    assert ends[0]["call_id"] == call_id and ends[0]["end_reason"] == "hangup"
    assert ends[0]["duration"] > 1.0
    # The caller really heard the greeting, paced at real time (≤ ~100 ms ahead).
    assert np.abs(call.heard_audio().astype(np.int32)).max() > 2000
    times = media_times(network, call)
    assert len(times) > 20
    assert times[-1] - times[0] >= (len(times) - 1) * 0.02 - 0.15
    assert s.phone.server is not None and not s.phone.server.sessions
    assert not s.phone.server._carrier_ids  # a finished call leaves nothing to look up
    assert engine.calls[0].closed
    assert not getattr(call, "errors", []), call.errors


async def test_barge_in_clears_and_nothing_stale_follows(
    serve_any: Callable[..., Any], network: Network
) -> None:
    engine = ScriptedEngine(replies=["ok"])
    long_greeting = "This is a very long greeting that goes on and on. " * 6
    await serve_any({"engine": engine, "first_message": long_greeting})
    call = await network.fake.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=1.5, tail=3))
    await call.wait_for(lambda: call.clears >= 1, 6)
    clear_at = network.app_sent(call, "clear")[0]
    ec = engine.calls[0]
    await call.wait_for(lambda: ec.turn >= 1, 5)
    # Nothing of the interrupted greeting reached the caller after the clear.
    reply_start = min((t for t in media_times(network, call) if t > clear_at), default=float("inf"))
    assert reply_start - clear_at > 0.3
    assert ec.interrupted and ec.interrupted[0].startswith("turn-0")
    assert 1.0 < ec.call.heard_seconds(ec.interrupted[0]) < 3.0
    await call.hangup()


async def test_dtmf_reaches_the_engine_and_can_transfer(
    serve_any: Callable[..., Any], network: Network
) -> None:
    engine = ScriptedEngine(transfer_to="+15550002222")
    s = await serve_any({"engine": engine})
    call = await network.fake.place_call(from_=CALLER, to=NUMBER)
    await call.wait_for(lambda: bool(engine.calls), 3)
    await call.send_dtmf("5")
    await call.send_dtmf("0")
    await call.wait_for(lambda: call.transfers == ["+15550002222"], 5)
    assert engine.calls[0].dtmf == ["5", "0"]  # once each, whatever paths DTMF takes
    assert (await s.ended())[0]["end_reason"] == "transferred"


async def test_hangup_by_the_agent(serve_any: Callable[..., Any], network: Network) -> None:
    engine = ScriptedEngine()
    s = await serve_any({"engine": engine})
    call = await network.fake.place_call(from_=CALLER, to=NUMBER)
    await call.wait_for(lambda: bool(engine.calls), 3)
    await call.send_dtmf("#")
    await call.wait_ended(5)
    assert call.status == "completed"
    assert (await s.ended())[0]["end_reason"] == "dtmf_hangup"


async def test_hangup_with_last_words_in_the_carriers_voice(
    serve_any: Callable[..., Any], network: Network
) -> None:
    """An engine that can no longer speak (its model is gone) still says goodbye: the carrier
    speaks the words, then hangs up."""
    engine = ScriptedEngine(goodbye="Sorry, we have to end this call. Goodbye.")
    s = await serve_any({"engine": engine})
    call = await network.fake.place_call(from_=CALLER, to=NUMBER)
    await call.wait_for(lambda: bool(engine.calls), 3)
    await call.send_dtmf("#")
    await call.wait_ended(8)
    assert call.status == "completed"
    assert call.said == ["Sorry, we have to end this call. Goodbye."]
    [record] = await s.ended()
    assert record["end_reason"] == "dtmf_hangup"
    assert record["transcript"][-1]["text"] == "Sorry, we have to end this call. Goodbye."
    assert s.events["on_transcript"][-1]["carrier_voice"] is True


async def test_recording_is_started_when_media_starts(
    serve_any: Callable[..., Any], network: Network
) -> None:
    await serve_any({"engine": ScriptedEngine()}, recording=True)
    call = await network.fake.place_call(from_=CALLER, to=NUMBER)
    await call.wait_for(lambda: network.recorded(call), 3)
    await call.hangup()


async def test_disconnect_during_live_calls(
    serve_any: Callable[..., Any], network: Network
) -> None:
    engine = ScriptedEngine()
    s = await serve_any({"engine": engine, "first_message": "Hi!"})
    calls = [await network.fake.place_call(from_=CALLER, to=NUMBER) for _ in range(3)]
    await calls[0].wait_for(lambda: len(engine.calls) == 3, 5)
    await s.phone.disconnect()
    await s.phone.disconnect()  # idempotent
    await asyncio.wait_for(s.task, 15)
    ends = s.events["on_call_end"]
    assert sorted(e["call_id"] for e in ends) == sorted(network.call_id(c) for c in calls)
    assert {e["end_reason"] for e in ends} == {"server_stopped"}
    for c in calls:
        await c.wait_ended(5)  # hung up through the carrier, politely
    assert all(ec.closed for ec in engine.calls)


# --- every engine: OpenAI Realtime, Gemini Live, the pipeline --------------------------------


def said(s: Any) -> list[tuple[str, str]]:
    return [(e["role"], e["text"]) for e in s.events.get("on_transcript", [])]


def saying(s: Any, role: str, text: str) -> Callable[[], bool]:
    return lambda: (role, text) in said(s)


async def finished(s: Any, call: Any, within: float = 8.0) -> dict[str, Any]:
    await call.wait_for(lambda: call.ended or bool(call.transfers), within)
    await call.wait_for(lambda: bool(s.events.get("on_call_end")), within)
    record: dict[str, Any] = s.events["on_call_end"][0]
    return record


async def test_a_whole_call_on_every_engine(
    serve_any: Callable[..., Any], network: Network, kit: Kit
) -> None:
    reply = "Sure, a table for two at eight."
    agent = kit.agent([reply], ["I would like a table."], first_message="Thanks for calling!")
    s = await serve_any(agent)
    call = await network.fake.place_call(from_=CALLER, to=NUMBER)
    await call.wait_for(saying(s, "assistant", "Thanks for calling!"), 8)  # heard in full
    await call.send_audio(hello(0.3, 1.0))
    await call.wait_for(saying(s, "assistant", reply), 12)
    await call.hangup()
    record = await finished(s, call)

    assert said(s) == [
        ("assistant", "Thanks for calling!"),
        ("user", "I would like a table."),
        ("assistant", reply),
    ]
    assert np.abs(call.heard_audio().astype(np.int32)).max() > 2000
    assert record["end_reason"] == "hangup" and record["call_id"] == network.call_id(call)
    assert not getattr(call, "errors", []), call.errors


async def test_barge_in_on_every_engine(
    serve_any: Callable[..., Any], network: Network, kit: Kit
) -> None:
    greeting = "Welcome to Acme, where we have many wonderful things to tell you about. " * 4
    s = await serve_any(kit.agent(["Sorry, go ahead."], first_message=greeting.strip()))
    call = await network.fake.place_call(from_=CALLER, to=NUMBER)
    await call.wait_for(lambda: len(call.played) > 12000, 8)  # 1.5 s of the greeting heard
    await call.send_audio(hello(0.0, 1.0))
    await call.wait_for(lambda: call.clears >= 1, 8)
    clear_at = network.app_sent(call, "clear")[0]
    await call.wait_for(saying(s, "assistant", "Sorry, go ahead."), 10)
    await call.hangup()
    await finished(s, call)

    first = s.events["on_transcript"][0]
    assert first["role"] == "assistant" and first["interrupted"] is True
    assert 5 < len(first["text"]) < len(greeting) / 2 and greeting.startswith(first["text"])
    # Nothing of the greeting after the clear: the next audio is the reply, after the caller.
    after = [t for t in media_times(network, call) if t > clear_at]
    assert after and after[0] - clear_at > 0.3


async def test_a_tool_call_on_every_engine(
    serve_any: Callable[..., Any], network: Network, kit: Kit
) -> None:
    seen: list[dict[str, Any]] = []

    async def book(args: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
        seen.append(args)
        return {"confirmation": "ACME-123"}

    tool = Tool(
        "book",
        "Book a table.",
        {"type": "object", "properties": {"time": {"type": "string"}}},
        handler=book,
    )
    agent = kit.agent([Call("book", {"time": "20:00"}), "Booked, ACME-123."], tools=[tool])
    s = await serve_any(agent)
    call = await network.fake.place_call(from_=CALLER, to=NUMBER, audio=hello(0.3, 1.0))
    await call.wait_for(saying(s, "assistant", "Booked, ACME-123."), 12)
    await call.hangup()
    record = await finished(s, call)

    assert seen == [{"time": "20:00"}]
    assert {"confirmation": "ACME-123"} in kit.tool_outputs()
    assert [(t["name"], t["ok"]) for t in record["events"] if t["kind"] == "tool"] == [
        ("book", True)
    ]


async def test_a_key_press_is_a_turn_on_every_engine(
    serve_any: Callable[..., Any], network: Network, kit: Kit
) -> None:
    menu = "Press one for sales, two for support, or stay on the line for more options. " * 3
    s = await serve_any(kit.agent(["Connecting you to support."], first_message=menu.strip()))
    call = await network.fake.place_call(from_=CALLER, to=NUMBER)
    await call.wait_for(lambda: len(call.played) > 8000, 6)  # a second of the menu heard
    await call.send_dtmf("2")
    await call.wait_for(saying(s, "assistant", "Connecting you to support."), 10)
    await call.hangup()
    await finished(s, call)

    assert call.clears >= 1  # the menu stopped at the key press
    users = [e for e in s.events["on_transcript"] if e["role"] == "user"]
    assert [(e["text"], e["dtmf"]) for e in users] == [("The caller pressed 2 on the keypad.", "2")]
    assert s.events["on_transcript"][0]["interrupted"] is True


async def test_a_guardrail_that_raises_blocks_on_every_engine(
    serve_any: Callable[..., Any], network: Network, kit: Kit
) -> None:
    """One policy for every engine: a guardrail whose check raises blocks the text."""

    def broken(text: str) -> bool:
        raise RuntimeError("moderation is down")

    replacement = "Let me find someone who can help with that."
    guard = Guardrail("Moderation", check=broken, replacement=replacement)
    s = await serve_any(kit.agent(["Here is what you asked for."], guardrails=[guard]))
    call = await network.fake.place_call(from_=CALLER, to=NUMBER, audio=hello(0.3, 1.0))
    await call.wait_for(saying(s, "assistant", replacement), 12)
    await call.hangup()
    record = await finished(s, call)

    assert not any("what you asked" in text for _, text in said(s))
    assert [e["name"] for e in record["events"] if e["kind"] == "guardrail"] == ["Moderation"]


# --- outbound ------------------------------------------------------------------------------


async def test_outbound_human_with_amd(serve_any: Callable[..., Any], network: Network) -> None:
    engine = ScriptedEngine()
    s = await serve_any({"engine": engine, "first_message": "Hi, this is Acme."})
    network.fake.set_callee(CALLEE, answer="human")
    results: list[MachineDetectionResult] = []
    call = await s.phone.call(
        to=CALLEE,
        agent=s.phone.server.agent,
        first_message="Hello from Acme, calling about your order.",
        on_machine_detection=results.append,
    )
    fake = network.fake_call(call.call_id)
    await fake.wait_for(lambda: bool(results) and bool(engine.calls), 5)
    assert results[0].result == "human" and not results[0].is_machine
    assert results[0].call_id == call.call_id
    await fake.wait_for(lambda: len(fake.played) > 4000, 5)
    assert s.events["on_call_start"][0]["direction"] == "outbound"
    assert s.events["on_transcript"][0]["text"] == "Hello from Acme, calling about your order."
    await fake.hangup()
    record = await call.wait(5)
    assert record["answered"] and call.outcome == "hangup"
    assert record["call_id"] == network.call_id(fake)
    assert not s.phone.server._carrier_ids


async def test_outbound_machine_gets_the_voicemail(
    serve_any: Callable[..., Any], network: Network
) -> None:
    s = await serve_any({"engine": ScriptedEngine()})
    network.fake.set_callee(CALLEE, answer="machine", machine_greeting_s=0.5)
    results: list[MachineDetectionResult] = []
    call = await s.phone.call(
        to=CALLEE,
        agent=s.phone.server.agent,
        machine_detection=True,
        on_machine_detection=results.append,
        voicemail_message="Please call us back at 555-000-1234.",
    )
    record = await call.wait(8)
    fake = network.fake_call(call.call_id)
    assert results and results[0].is_machine and results[0].result == "machine"
    assert call.outcome == "voicemail"
    assert record["transcript"][-1]["text"] == "Please call us back at 555-000-1234."
    await fake.wait_ended(5)
    assert fake.said == ["Please call us back at 555-000-1234."]


@pytest.mark.parametrize(
    ("answer", "outcome"), [("busy", "busy"), ("no-answer", "no_answer"), ("failed", "failed")]
)
async def test_outbound_not_answered(
    serve_any: Callable[..., Any], network: Network, answer: str, outcome: str
) -> None:
    engine = ScriptedEngine()
    s = await serve_any({"engine": engine})
    network.fake.set_callee(CALLEE, answer=answer)
    call = await s.phone.call(
        to=CALLEE, agent=s.phone.server.agent, machine_detection=False, ring_timeout=1
    )
    record = await call.wait(6)
    assert call.outcome == outcome
    assert not record["answered"] and not engine.calls


# --- the spec's examples -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_making_outbound_calls(network: Network) -> None:
    """The spec's 'Making Outbound Calls', with the carrier pointed at the fake."""
    port = free_port()
    network.fake.route(HOST, f"127.0.0.1:{port}")
    network.fake.set_callee("+15550009876", answer="machine", machine_greeting_s=0.3)
    phone = Patter(carrier=network.carrier(), phone_number=NUMBER, webhook_url=HOST)
    agent = phone.agent(engine=ScriptedEngine(), first_message="Hello!")

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
    fake = next(iter(network.fake.calls.values()))
    await fake.wait_ended(5)
    assert fake.said == ["Please call us back at 555-000-1234."]


async def test_complete_example(network: Network, capsys: pytest.CaptureFixture[str]) -> None:
    """The spec's 'Complete Example', a test engine standing in for OpenAIRealtime."""
    port = free_port()
    network.fake.route(HOST, f"127.0.0.1:{port}")
    phone = Patter(carrier=network.carrier(), phone_number=NUMBER, webhook_url=HOST)

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

    # The spec runs main() with asyncio.run; here the test's loop runs it and a caller dials in.
    server = asyncio.create_task(main())
    await phone.ready
    call = await network.fake.place_call(from_=CALLER, to=NUMBER, audio=speech(lead=1.0))
    engine = agent.engine
    assert isinstance(engine, ScriptedEngine)
    await call.wait_for(lambda: bool(engine.calls) and engine.calls[0].turn >= 1, 8)
    await asyncio.sleep(0.3)
    await call.hangup()
    await call.wait_ended()
    await asyncio.sleep(0.2)
    await phone.disconnect()
    await asyncio.wait_for(server, 15)
    out = capsys.readouterr().out
    call_id = network.call_id(call)
    assert f"[CALL START] inbound call {call_id}" in out
    assert f"  From: {CALLER} -> To: {NUMBER}" in out
    assert "  [assistant]: Thank you for calling Acme Corp! How can I help you today?" in out
    assert "  [assistant]: Let me check that for you." in out
    assert f"[CALL END] {call_id}" in out
    assert network.recorded(call)
