"""Outbound calls through the fake network: AMD, voicemail, busy, no-answer, failures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from getpatter import CallError, MachineDetectionResult, PatterConfigError
from getpatter.testing.engines import ScriptedEngine
from getpatter.testing.twilio import FakeTwilio

CALLEE = "+15550009876"


async def test_outbound_human_with_amd(serve: Callable[..., Any], net: FakeTwilio) -> None:
    engine = ScriptedEngine()
    s = await serve({"engine": engine, "first_message": "Hi, this is Acme."})
    net.set_callee(CALLEE, answer="human")
    results: list[MachineDetectionResult] = []

    call = await s.phone.call(
        to=CALLEE,
        agent=s.phone.server.agent,
        first_message="Hello from Acme, calling about your order.",
        on_machine_detection=results.append,
    )
    fake = net.calls[call.call_id]
    await fake.wait_for(lambda: bool(results) and bool(engine.calls), 5)
    assert results[0].result == "human" and not results[0].is_machine
    assert results[0].call_id == call.call_id
    create = next(r for r in net.requests if r.path.endswith("/Calls.json"))
    assert create.form["MachineDetection"] == "DetectMessageEnd"
    assert create.form["AsyncAmd"] == "true"
    assert create.form["Timeout"] == "25"
    assert "Twiml" in create.form and "Url" not in create.form
    await fake.wait_for(lambda: len(fake.played) > 4000, 5)
    assert s.events["on_call_start"][0]["direction"] == "outbound"
    transcript = [e["text"] for e in s.events["on_transcript"]]
    assert transcript[0] == "Hello from Acme, calling about your order."
    await fake.hangup()
    record = await call.wait(5)
    assert record["answered"] and call.outcome == "hangup"


async def test_ring_timeout_none_omits_the_parameter(
    serve: Callable[..., Any], net: FakeTwilio
) -> None:
    s = await serve({"engine": ScriptedEngine()})
    net.set_callee(CALLEE, answer="busy")
    call = await s.phone.call(to=CALLEE, agent=s.phone.server.agent, ring_timeout=None)
    await call.wait(5)
    create = next(r for r in net.requests if r.path.endswith("/Calls.json"))
    assert "Timeout" not in create.form


async def test_call_refusals(serve: Callable[..., Any], net: FakeTwilio) -> None:
    s = await serve({"engine": ScriptedEngine()})
    agent = s.phone.server.agent
    with pytest.raises(PatterConfigError, match=r"E\.164"):
        await s.phone.call(to="555-1234", agent=agent)
    # The carrier refuses an unknown caller ID: a CallError with Twilio's message, no secret.
    with pytest.raises(CallError) as err:
        await s.phone.call(to=CALLEE, agent=agent, from_number="+15551112222")
    assert net.auth_token not in str(err.value)
    assert s.phone.server is not None
    for _ in range(20):
        if not s.phone.server.sessions:
            break
        import asyncio

        await asyncio.sleep(0.05)
    assert not s.phone.server.sessions  # the failed attempt left nothing behind
    assert s.events["on_call_end"][0]["end_reason"] == "failed"


async def test_call_before_ready_is_refused() -> None:
    from getpatter import Patter, Twilio

    phone = Patter(
        carrier=Twilio("AC" + "0" * 32, "token"), phone_number="+15550001234", webhook_url="x.io"
    )
    with pytest.raises(CallError, match="ready"):
        await phone.call(to=CALLEE, agent=phone.agent(engine=ScriptedEngine()))
