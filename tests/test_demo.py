"""`make demo`'s call, in a test: the receptionist on the embedded default, through the
simulator, with the three scripted caller turns."""

from __future__ import annotations

from typing import Any

import pytest

from getpatter import demo
from getpatter.testing import simulator as sim


async def test_the_demo_call(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    booked: list[dict[str, Any]] = []
    real = demo.schedule_appointment

    async def spy(args: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
        booked.append(args)
        return await real(args, ctx)

    monkeypatch.setattr(demo, "schedule_appointment", spy)
    sim.ensure_placeholder_credentials()
    phone, agent, serve_kwargs = demo.app()
    turns = [
        sim.CallerTurn("What are your opening hours?"),
        sim.CallerTurn("I would like to book an appointment for tomorrow at ten."),
        sim.CallerTurn("Sorry, I have to go now. Goodbye.", barge=True),
    ]
    lines: list[str] = []
    result = await sim.simulate(
        phone,
        agent,
        turns,
        serve_kwargs=serve_kwargs,
        wav_out=str(tmp_path / "call.wav"),
        printer=lines.append,
    )
    said = [(e["role"], e["text"], bool(e.get("interrupted"))) for e in result.transcript]
    assert said[0] == (
        "assistant",
        "Thank you for calling Acme Corp! How can I help you today?",
        False,
    )
    assert ("user", "what are your opening hours", False) in said
    assert any(r == "assistant" and "nine in the morning" in t for r, t, _ in said)
    assert ("user", "i would like to book an appointment for tomorrow at ten", False) in said
    assert booked == [{"date": "tomorrow", "time": "10:00"}]
    # the booking confirmation was cut off by the caller, and the agent said goodbye
    cut = [t for r, t, i in said if r == "assistant" and i]
    assert cut and "Done!" in cut[0] and "photo ID" not in cut[0]
    assert said[-1][:2] == ("assistant", "No problem at all. Goodbye!")
    latencies = [t.latency for t in result.turns]
    assert all(lat is not None and lat < 2.0 for lat in latencies), latencies
    assert result.record["end_reason"] == "hangup"
    assert result.wav_path and (tmp_path / "call.wav").stat().st_size > 8000 * 2 * 2 * 5
    assert any("[caller]" in line for line in lines)
    # the booking is a tool call, and the demo shows it (the issue's `[tool] …` line)
    tool_lines = [line for line in lines if "[tool]" in line]
    assert len(tool_lines) == 1, lines
    assert "schedule_appointment(date='tomorrow', time='10:00') → " in tool_lines[0]
    assert "ACME-123" in tool_lines[0]
    tool = next(e for e in result.record["events"] if e["kind"] == "tool")
    assert tool["name"] == "schedule_appointment" and tool["ok"]
