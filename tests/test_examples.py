"""Every app in examples/ runs: through the call simulator (Twilio) or the fake Telnyx network,
with the loopback fakes standing in for the model providers."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from getpatter import DeepgramSTT, ElevenLabsTTS, OpenAILLM, Patter
from getpatter.testing.deepgram import FakeDeepgram
from getpatter.testing.elevenlabs import FakeElevenLabs
from getpatter.testing.openai_http import FakeOpenAI, ToolCall
from getpatter.testing.openai_realtime import FakeRealtime, FunctionCall
from getpatter.testing.simulator import CallerTurn, ensure_placeholder_credentials, simulate
from getpatter.testing.telnyx import FakeTelnyx

from helpers import CALLER, HOST, NUMBER, speech

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    path = EXAMPLES / name / "app.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def said(result: Any, role: str) -> list[str]:
    return [e["text"] for e in result.transcript if e["role"] == role]


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_placeholder_credentials()
    monkeypatch.delenv("WEBHOOK_URL", raising=False)


def test_every_example_has_a_readme_and_a_test() -> None:
    apps = sorted(p.parent.name for p in EXAMPLES.glob("*/app.py"))
    assert apps == ["appointments", "order_line", "reminders", "telnyx_receptionist"]
    for name in apps:
        readme = (EXAMPLES / name / "README.md").read_text()
        assert "app.py" in readme and "tests/test_examples.py" in readme


async def test_appointments_books_with_the_tool_and_transfers_to_a_human(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-example")
    example = load("appointments")
    example.BOOKED.clear()
    booking = {"name": "Ann Lee", "date": "2025-06-02", "time": "10:00"}
    fake = FakeRealtime(
        api_key="sk-example",
        transcripts=["I'd like an appointment on June second at ten.", "A question on my bill."],
        responses=[
            FunctionCall("schedule_appointment", booking),
            "You're booked for June second at ten; your confirmation is ACME-123.",
            # (a real model says "let me put you through" in the same response; the fake's
            # responses are either speech or a tool call)
            FunctionCall("transfer_call", {"number": example.BILLING}),
        ],
        audio_speed=2.0,
    )
    phone, agent, serve_kwargs = example.app()
    assert type(agent.engine).__name__ == "OpenAIRealtime" and agent.engine.voice == "marin"
    async with fake:
        result = await simulate(
            phone,
            agent,
            [CallerTurn("book me in"), CallerTurn("billing please")],
            serve_kwargs=serve_kwargs,
            fake_realtime=fake,
            printer=None,
        )
    assert example.BOOKED == [{**booking, "caller": "+15557654321"}]
    agent_said = said(result, "assistant")
    assert agent_said[0] == "Thank you for calling Acme Corp! How can I help you today?"
    assert any("ACME-123" in text for text in agent_said)
    assert result.record["end_reason"] == "transferred"
    assert result.call is not None and result.call.transfers == [example.BILLING]
    tools = [e["name"] for e in result.record["events"] if e["kind"] == "tool"]
    assert tools == ["schedule_appointment", "transfer_call"]


async def test_reminders_confirms_with_a_person_and_hangs_up() -> None:
    example = load("reminders")
    phone, agent, serve_kwargs = example.app()
    result = await simulate(
        phone,
        agent,
        [CallerTurn("yes I will be there")],
        serve_kwargs=serve_kwargs,
        outbound=True,
        answered_by="human",
        printer=None,
    )
    assert said(result, "assistant") == [
        "Hello, this is Acme Dental calling to remind you of your appointment tomorrow at ten. "
        "Will you be able to make it?",
        "Great, see you then. Goodbye!",
    ]
    assert result.record["direction"] == "outbound"
    assert result.record["end_reason"] == "agent_ended_call"  # the agent hung up itself


async def test_reminders_leaves_a_voicemail_for_a_machine() -> None:
    example = load("reminders")
    phone, agent, serve_kwargs = example.app()
    result = await simulate(
        phone, agent, [], serve_kwargs=serve_kwargs, outbound=True, answered_by="machine",
        printer=None,
    )  # fmt: skip
    assert result.record["end_reason"] == "voicemail"
    assert said(result, "assistant")[-1] == example.VOICEMAIL
    assert any(e["kind"] == "amd" for e in result.record["events"])


async def test_order_line_streams_from_an_openai_compatible_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reply = (
        "Two margheritas, that's eighteen dollars. Anything else? "
        "We also have a very good tiramisu today."
    )
    async with FakeOpenAI("sk-local", replies=[reply], token_delay=0.05) as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
        monkeypatch.setenv("ORDER_MODEL", "llama-3.1-8b")
        example = load("order_line")
        phone, agent, serve_kwargs = example.app()
        result = await simulate(
            phone,
            agent,
            [CallerTurn("two margheritas please")],
            serve_kwargs=serve_kwargs,
            printer=None,
        )
        request = fake.chat_requests[0]
    assert request["model"] == "llama-3.1-8b" and request["stream"] is True
    assert (
        request["messages"][0]["role"] == "system" and "Luigi" in request["messages"][0]["content"]
    )
    assert request["messages"][-1] == {"role": "user", "content": "two margheritas please"}
    assert said(result, "user") == ["two margheritas please"]
    assert said(result, "assistant")[-1] == reply
    # spoken while it streamed: the first sentence went to speech before the model finished
    turn = result.record["metrics"]["turns"][1]
    assert turn["latency"]["llm_ttft_ms"] < turn["latency"]["llm_total_ms"] - 300
    assert (
        turn["latency"]["total_ms"]
        < turn["latency"]["endpoint_ms"] + turn["latency"]["llm_total_ms"]
    )


async def test_telnyx_receptionist_answers_uses_its_tool_and_transfers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = load("telnyx_receptionist")
    for name in ("DEEPGRAM_API_KEY", "OPENAI_API_KEY", "ELEVENLABS_API_KEY"):
        monkeypatch.setenv(name, "example-key")
    async with (
        FakeTelnyx() as telnyx,
        FakeDeepgram(
            transcripts=["What are your hours on Saturday?", "Can I talk to someone?"]
        ) as dg,
        FakeOpenAI(
            replies=[
                ToolCall("opening_hours", {"day": "saturday"}),
                "On Saturday we're open from ten to two.",
                ToolCall("transfer_call", {"number": example.FRONT_DESK}),
                "Of course, I'm putting you through to the front desk.",
            ]
        ) as oa,
        FakeElevenLabs(audio_speed=4.0) as el,
    ):
        monkeypatch.setenv("TELNYX_API_KEY", telnyx.api_key)
        monkeypatch.setenv("TELNYX_CONNECTION_ID", telnyx.connection_id)
        monkeypatch.setenv("TELNYX_PUBLIC_KEY", telnyx.public_key)
        monkeypatch.setenv("WEBHOOK_URL", HOST)
        phone, agent, serve_kwargs = example.app()
        assert isinstance(phone, Patter) and phone.config.telephony_provider == "telnyx"
        assert isinstance(agent.stt, DeepgramSTT) and isinstance(agent.llm, OpenAILLM)
        assert isinstance(agent.tts, ElevenLabsTTS)
        # the app's own agent (prompt, greeting, tool), its providers aimed at the fakes
        phone.config.telnyx_base_url = telnyx.base_url
        agent = agent.replace(
            stt=DeepgramSTT(api_key=dg.api_key, base_url=dg.ws_url),
            llm=OpenAILLM(model="gpt-4o-mini", api_key=oa.api_key, base_url=oa.base_url),
            tts=ElevenLabsTTS(api_key=el.api_key, base_url=el.base_url),
        )
        telnyx.add_number(NUMBER, f"https://{HOST}/webhooks/telnyx/voice")
        ended: list[dict[str, Any]] = []
        task = asyncio.create_task(
            phone.serve(agent, port=0, host="127.0.0.1", on_call_end=ended.append, **serve_kwargs)
        )
        try:
            await asyncio.wait_for(phone.ready, 10)
            telnyx.route(HOST, f"127.0.0.1:{phone.port}")
            audio = np.concatenate([speech(lead=3.0, tail=4.0), speech(lead=0.0, tail=8.0)])
            call = await telnyx.place_call(from_=CALLER, to=NUMBER, audio=audio)
            await call.wait_for(lambda: bool(call.transfers), 40)
            for _ in range(200):
                if ended:
                    break
                await asyncio.sleep(0.05)
        finally:
            await phone.disconnect()
            await asyncio.gather(task, return_exceptions=True)
    assert call.transfers == [example.FRONT_DESK]
    record = ended[0]
    assert record["end_reason"] == "transferred"
    texts = [(e["role"], e["text"]) for e in record["transcript"]]
    assert texts[0] == ("assistant", "Harbour Clinic, good morning. How can I help?")
    assert ("user", "What are your hours on Saturday?") in texts
    assert ("assistant", "On Saturday we're open from ten to two.") in texts
    tool = next(e for e in record["events"] if e["kind"] == "tool")
    assert tool["name"] == "opening_hours" and '"10:00 to 14:00"' in tool["result"]
    first = oa.chat_requests[0]
    assert "Harbour Clinic" in first["messages"][0]["content"]
    assert {t["function"]["name"] for t in first["tools"]} >= {"opening_hours", "transfer_call"}
