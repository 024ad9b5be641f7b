"""GroqLLM and CerebrasLLM: OpenAILLM presets, each against FakeOpenAI served under the
provider's own path (Groq `/openai/v1`, Cerebras `/v1`), and a whole call answered by each."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from getpatter import Tool
from getpatter.core.providers import TextDelta, ToolCallRequest, Usage
from getpatter.core.registry import Registry
from getpatter.errors import PatterConfigError, PatterConnectionError
from getpatter.plugins.openai.compatible import (
    CEREBRAS_BASE_URL,
    GROQ_BASE_URL,
    CerebrasLLM,
    GroqLLM,
)
from getpatter.plugins.openai.llm import OpenAILLM
from getpatter.testing.openai_http import FakeOpenAI, ToolCall
from getpatter.testing.twilio import FakeTwilio

from call_kit import peak, said
from llm_kit import QUESTION, call_with_a_tool, calling, text_of

KEY = "gsk_SECRET-do-not-print-4242"
USER = [{"role": "user", "content": "When do you open?"}]
LOOKUP = {
    "name": "lookup_hours",
    "description": "Opening hours for a day",
    "parameters": {"type": "object", "properties": {"day": {"type": "string"}}},
}
PRESETS = {
    "groq": (GroqLLM, "/openai/v1", GROQ_BASE_URL, "GROQ_API_KEY"),
    "cerebras": (CerebrasLLM, "/v1", CEREBRAS_BASE_URL, "CEREBRAS_API_KEY"),
}


@pytest.fixture(params=sorted(PRESETS))
async def preset(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[type[OpenAILLM], FakeOpenAI]]:
    cls, prefix, _, _ = PRESETS[request.param]
    async with FakeOpenAI(KEY, prefix=prefix) as fake:
        yield cls, fake


def test_defaults_keys_and_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, (cls, prefix, url, env) in PRESETS.items():
        assert url.endswith(prefix)
        monkeypatch.delenv(env, raising=False)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")  # never used by a preset
        with pytest.raises(PatterConfigError, match=env):
            cls()
        monkeypatch.setenv(env, KEY)
        llm = cls()
        assert llm.options.base_url == url and KEY not in repr(llm)
        assert repr(llm).startswith(cls.__name__)
        assert Registry().load("llm", name) is cls


async def test_streams_text_and_usage_on_the_providers_path(
    preset: tuple[type[OpenAILLM], FakeOpenAI],
) -> None:
    cls, fake = preset
    fake.replies = ["We open at nine."]
    llm = cls(api_key=KEY, base_url=fake.base_url)
    events = [e async for e in llm.chat(USER)]
    assert text_of(events) == "We open at nine."
    assert isinstance(events[-1], Usage) and events[-1].output_tokens == 4
    sent = fake.requests[0]
    assert sent["path"] == f"{fake.prefix}/chat/completions"
    assert sent["headers"]["Authorization"] == f"Bearer {KEY}"
    assert sent["body"]["model"] == llm.options.model and sent["body"]["stream"] is True
    await llm.aclose()


async def test_tool_call_round_trip(preset: tuple[type[OpenAILLM], FakeOpenAI]) -> None:
    cls, fake = preset
    fake.interleave_tool_calls = True
    fake.replies = [
        [ToolCall("lookup_hours", {"day": "monday"}, "c1"), ToolCall("lookup_hours", {}, "c2")],
        "Nine, both days.",
    ]
    llm = cls(api_key=KEY, base_url=fake.base_url)
    calls = [e async for e in llm.chat(USER, [LOOKUP]) if isinstance(e, ToolCallRequest)]
    assert [(c.id, json.loads(c.arguments)) for c in calls] == [
        ("c1", {"day": "monday"}),
        ("c2", {}),
    ]
    history = [
        *USER,
        calling(calls),
        *({"role": "tool", "tool_call_id": c.id, "content": "9am"} for c in calls),
    ]
    text = [e.text async for e in llm.chat(history, [LOOKUP]) if isinstance(e, TextDelta)]
    assert "".join(text) == "Nine, both days."  # the fake checked the tool messages
    await llm.aclose()


async def test_a_refused_key_names_the_providers_variable(
    preset: tuple[type[OpenAILLM], FakeOpenAI],
) -> None:
    cls, fake = preset
    env = PRESETS["groq" if cls is GroqLLM else "cerebras"][3]
    wrong = "gsk_WRONG-secret-31337"
    with pytest.raises(PatterConnectionError, match=env) as info:
        [e async for e in cls(api_key=wrong, base_url=fake.base_url).chat(USER)]
    assert wrong not in str(info.value) and "OPENAI_API_KEY" not in str(info.value)


@pytest.mark.parametrize("name", sorted(PRESETS))
async def test_a_call_answered_with_a_tool(
    serve: Callable[..., Any], net: FakeTwilio, name: str
) -> None:
    cls, prefix, _, _ = PRESETS[name]
    async with FakeOpenAI(KEY, prefix=prefix) as fake:
        fake.replies = [ToolCall("lookup_hours", {"day": "monday"}, "call_9"), "We open at nine."]
        days: list[str] = []

        def lookup(args: dict[str, Any], ctx: Any) -> dict[str, str]:
            days.append(args["day"])
            return {"opens": "9:00"}

        record, call, tts = await call_with_a_tool(
            serve,
            net,
            llm=cls(api_key=KEY, base_url=fake.base_url),
            tools=[Tool("lookup_hours", "Opening hours", LOOKUP["parameters"], handler=lookup)],
            first_message="Hi",
        )
        assert days == ["monday"] and tts.texts == ["Hi", "We open at nine."]
        assert all(r["path"] == f"{prefix}/chat/completions" for r in fake.requests)
        assert ("user", QUESTION) in said(record)
        assert peak(call.heard_audio()) > 2000
