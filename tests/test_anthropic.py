"""AnthropicLLM: the fake Messages API, the history conversion, the client over real sockets,
and a whole phone call answered by Claude (the fake) through the fake phone network."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import anthropic
import pytest

from getpatter.core.providers import TextDelta, ToolCallRequest, Usage
from getpatter.core.registry import Registry
from getpatter.errors import PatterConfigError, PatterConnectionError, ProviderError
from getpatter.plugins.anthropic._convert import CALL_START, UNANSWERED, to_anthropic
from getpatter.plugins.anthropic.llm import AnthropicLLM
from getpatter.testing.anthropic import FakeAnthropic, ToolUse
from getpatter.testing.anthropic.server import _Invalid, validate
from getpatter.testing.twilio import FakeTwilio

from call_kit import fake_fixture, loaded_on_import, peak, poll, said
from llm_kit import ACME, ANSWER, QUESTION, call_with_a_tool, calling, hours_tool, run, text_of

KEY = "sk-ant-api03-SECRET-do-not-print-0123456789"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
USER = [{"role": "user", "content": "hello"}]


fake = fake_fixture(FakeAnthropic, KEY)


def llm_for(fake: FakeAnthropic, **kwargs: Any) -> AnthropicLLM:
    return AnthropicLLM(api_key=KEY, base_url=fake.base_url, **kwargs)


async def post(fake: FakeAnthropic, body: dict[str, Any], headers: dict[str, str] = HEADERS):
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{fake.base_url}/v1/messages", json=body, headers=headers) as resp,
    ):
        return resp.status, resp.headers, await resp.text()


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


# --- the fake, checked against the docs and the official SDK -------------------------------


async def test_fake_checks_auth_and_version_like_the_api(fake: FakeAnthropic) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": USER}
    status, _, text = await post(fake, body, {"anthropic-version": "2023-06-01"})
    assert status == 401 and json.loads(text)["error"]["type"] == "authentication_error"
    status, _, text = await post(fake, body, {**HEADERS, "x-api-key": "wrong"})
    error = json.loads(text)
    assert status == 401 and error["type"] == "error" and error["request_id"].startswith("req_")
    assert error["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
    status, _, text = await post(fake, body, {"x-api-key": KEY})
    assert status == 400 and "anthropic-version" in json.loads(text)["error"]["message"]


async def test_fake_streams_named_events_in_the_documented_order(fake: FakeAnthropic) -> None:
    fake.replies = ["Hi there.", ["Checking.", ToolUse("lookup", {"id": 7, "q": "x" * 30})]]
    body = {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": USER, "stream": True}
    status, headers, text = await post(fake, body)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = sse(text)
    assert all(name == data["type"] for name, data in events)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["role"] == "assistant" and start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] > 0
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    assert events[-2][1]["usage"]["output_tokens"] == 2
    _, _, text = await post(fake, body)
    events = sse(text)
    tool_start = next(d for n, d in events if n == "content_block_start" and d["index"] == 1)
    assert tool_start["content_block"]["type"] == "tool_use"
    assert tool_start["content_block"]["input"] == {}
    fragments = [
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    ]
    assert len(fragments) > 1 and json.loads("".join(fragments)) == {"id": 7, "q": "x" * 30}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_the_official_sdk_reads_the_fake(fake: FakeAnthropic) -> None:
    fake.replies = [["Let me look.", ToolUse("lookup", {"id": 7})], "Plain answer."]
    client = anthropic.AsyncAnthropic(api_key=KEY, base_url=fake.base_url, max_retries=0)
    async with client.messages.stream(
        model="claude-haiku-4-5", max_tokens=100, messages=USER
    ) as stream:
        message = await stream.get_final_message()
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[1].input == {"id": 7} and message.stop_reason == "tool_use"
    plain = await client.messages.create(model="m", max_tokens=100, messages=USER)
    assert plain.content[0].text == "Plain answer." and plain.stop_reason == "end_turn"
    await client.close()


@pytest.mark.parametrize(
    ("messages", "complaint"),
    [
        ([{"role": "system", "content": "x"}, *USER], "role"),
        ([{"role": "assistant", "content": "Hi"}, *USER], "first message"),
        ([*USER, *USER], "alternate"),
        ([*USER, {"role": "assistant", "content": "Sure"}], "prefill"),
        ([{"role": "user", "content": [{"type": "text", "text": "  "}]}], "non-whitespace"),
        (
            [
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
            ],
            "corresponding `tool_use`",
        ),
        (
            [
                *USER,
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                },
                {"role": "user", "content": "and?"},
            ],
            "without `tool_result`",
        ),
    ],
)
def test_fake_rejects_what_the_api_rejects(messages: list[Any], complaint: str) -> None:
    with pytest.raises(_Invalid, match=complaint):
        validate({"model": "m", "max_tokens": 5, "messages": messages})


async def test_fake_overload_and_rate_limit(fake: FakeAnthropic) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": USER}
    fake.overload()
    fake.rate_limit()
    status, _, text = await post(fake, body)
    assert status == 529 and json.loads(text)["error"]["type"] == "overloaded_error"
    status, headers, text = await post(fake, body)
    assert status == 429 and headers["retry-after"] == "1"
    assert (await post(fake, body))[0] == 200


# --- the history conversion ------------------------------------------------------------------


def test_history_is_converted_and_repaired_into_what_the_api_accepts() -> None:
    history = [
        {"role": "system", "content": "You are Acme's agent."},
        {"role": "assistant", "content": "Acme, how can I help?"},
        {"role": "user", "content": "book me"},
        {"role": "user", "content": "for monday"},  # two user turns: a barge-in
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "book", "arguments": '{"d": 1}'},
                },
                {"id": "call_2", "type": "function", "function": {"name": "note", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"ok": true}'},
        {"role": "tool", "tool_call_id": "call_9", "content": "stray"},
        {"role": "assistant", "content": "Booked."},
    ]
    system, messages = to_anthropic(history)
    assert system == "You are Acme's agent."
    assert messages[0] == {"role": "user", "content": [{"type": "text", "text": CALL_START}]}
    assert [m["role"] for m in messages] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert [b["text"] for b in messages[2]["content"]] == ["book me", "for monday"]
    uses = messages[3]["content"]
    assert uses[0] == {"type": "tool_use", "id": "call_1", "name": "book", "input": {"d": 1}}
    assert uses[1]["input"] == {}
    results = messages[4]["content"]
    assert results[0]["tool_use_id"] == "call_2" and results[0]["content"] == UNANSWERED
    assert results[1] == {"type": "tool_result", "tool_use_id": "call_1", "content": '{"ok": true}'}
    assert results[2]["type"] == "text" and "stray" in results[2]["text"]
    validate({"model": "m", "max_tokens": 5, "system": system, "messages": messages})


# --- the client over real sockets -------------------------------------------------------------


async def test_streams_text_and_usage_with_the_right_request(fake: FakeAnthropic) -> None:
    fake.replies = ["We open at nine. See you then!"]
    llm = llm_for(fake, max_tokens=200, temperature=0.3)
    tools = [{"name": "lookup", "description": "Find", "parameters": {"type": "object"}}]
    history = [{"role": "system", "content": "Be brief."}, *USER]
    events = await run(llm, history, tools)
    texts = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(texts) > 3 and "".join(texts) == "We open at nine. See you then!"
    usage = events[-1]
    assert isinstance(usage, Usage) and usage.output_tokens == 7 and usage.input_tokens > 0
    assert usage.details["stop_reason"] == "end_turn"
    sent = fake.requests[0]
    assert sent["model"] == "claude-haiku-4-5" and sent["system"] == "Be brief."
    assert sent["max_tokens"] == 200 and sent["temperature"] == 0.3 and sent["stream"] is True
    assert sent["tools"] == [
        {
            "name": "lookup",
            "description": "Find",
            "input_schema": {"type": "object", "properties": {}},
        }
    ]


async def test_tool_use_becomes_one_request_and_its_result_goes_back(fake: FakeAnthropic) -> None:
    fake.replies = [["One moment.", ToolUse("lookup", {"id": 7, "when": "monday"})], "Found it."]
    llm = llm_for(fake)
    events = await run(llm, USER)
    calls = [e for e in events if isinstance(e, ToolCallRequest)]
    assert len(calls) == 1 and calls[0].name == "lookup"
    assert json.loads(calls[0].arguments) == {"id": 7, "when": "monday"}
    follow_up = [
        *USER,
        calling(calls, "One moment."),
        {"role": "tool", "tool_call_id": calls[0].id, "content": '{"found": true}'},
    ]
    events = await run(llm, follow_up)
    assert text_of(events) == "Found it."
    assert fake.requests[1]["messages"][-1]["content"][0]["tool_use_id"] == calls[0].id


async def test_closing_the_iterator_cancels_the_request(fake: FakeAnthropic) -> None:
    fake.replies = [" ".join(["word"] * 200)]
    fake.token_delay = 0.02
    stream = llm_for(fake).chat(USER)
    got = [await anext(stream), await anext(stream)]
    assert all(isinstance(e, TextDelta) for e in got)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await stream.aclose()
    await poll(lambda: fake.cancelled, 100, 0.01)
    assert fake.cancelled == 1 and fake.completed == 0
    assert loop.time() - started < 0.5


async def test_bad_key_is_a_connection_error_without_the_key(fake: FakeAnthropic) -> None:
    wrong = "sk-ant-api03-WRONG-secret-4242"
    llm = AnthropicLLM(api_key=wrong, base_url=fake.base_url)
    with pytest.raises(PatterConnectionError, match="Anthropic") as err:
        await run(llm, USER)
    assert "authentication_error" in str(err.value) and wrong not in str(err.value)
    assert wrong not in repr(llm) and KEY not in repr(llm_for(fake))


async def test_overload_is_retried_once_then_reported(fake: FakeAnthropic) -> None:
    fake.replies = ["Fine.", "Also fine."]
    fake.overload()
    events = await run(llm_for(fake), USER)
    assert text_of(events) == "Fine."
    fake.overload(2)
    with pytest.raises(PatterConnectionError, match="overloaded_error"):
        await run(llm_for(fake), USER)
    fake.rate_limit()
    with pytest.raises(PatterConnectionError, match="rate_limit_error"):
        await run(llm_for(fake), USER)
    assert [s for s, _ in fake.rejected] == [529, 529, 529, 429]  # no retry of a rate limit


async def test_a_stream_cut_mid_answer_is_asked_again_once_and_not_repeated(
    fake: FakeAnthropic,
) -> None:
    answer = "Our store opens at nine and closes at six on weekdays."
    fake.replies = [answer, "Next."]
    fake.drop_after(4)
    llm = llm_for(fake)
    events = await run(llm, USER)
    assert text_of(events) == answer
    assert fake.dropped == 1 and fake.completed == 1
    await fake.drop_connections()  # and the pooled connection dying between turns is fine too
    events = await run(llm, USER)
    assert text_of(events) == "Next."
    fake.replies = ["Once more, with feeling."]
    fake.drop_after(2, times=2)
    said: list[str] = []
    with pytest.raises(PatterConnectionError, match="cut"):
        async for event in llm.chat(USER):
            said += [event.text] if isinstance(event, TextDelta) else []
    assert "".join(said) == "Once more, "  # what was said before the second cut, once


async def test_refused_request_is_a_provider_error(fake: FakeAnthropic) -> None:
    with pytest.raises(ProviderError, match="invalid_request_error"):
        await run(AnthropicLLM(api_key=KEY, base_url=fake.base_url, max_tokens=10**9), USER)


def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(PatterConfigError, match="ANTHROPIC_API_KEY"):
        AnthropicLLM()
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    assert AnthropicLLM().options.base_url == "https://api.anthropic.com"


def test_registered_and_lazy() -> None:
    assert Registry().load("llm", "anthropic") is AnthropicLLM
    assert loaded_on_import("anthropic", ("anthropic",)) == "[]"


# --- a whole call ----------------------------------------------------------------------------


async def test_a_call_answered_by_claude_with_a_tool(
    serve: Callable[..., Any], net: FakeTwilio, fake: FakeAnthropic
) -> None:
    seen: list[dict[str, Any]] = []
    fake.replies = [
        ["Let me check.", ToolUse("check_hours", {"day": "monday"})],
        "We open at nine.",
    ]
    record, call, tts = await call_with_a_tool(
        serve, net, llm=llm_for(fake), tools=[hours_tool(seen)], **ACME
    )
    assert seen == [{"day": "monday"}]
    assert tts.texts == ["Acme, how can I help?", "Let me check.", "We open at nine."]
    first, second = fake.requests
    assert first["system"] == "You are Acme's phone agent."
    assert [m["role"] for m in first["messages"]] == ["user", "assistant", "user"]
    assert first["messages"][1]["content"][0]["text"] == "Acme, how can I help?"
    assert second["messages"][-1]["content"][0]["type"] == "tool_result"
    texts = said(record)
    assert ("user", QUESTION) in texts
    assert any(role == "assistant" and ANSWER in line for role, line in texts)
    assert peak(call.heard_audio()) > 2000
