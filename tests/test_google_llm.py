"""GoogleLLM: the fake Gemini API's protocol, the client over real sockets (streaming, function
calls with their thought signatures, errors, drops), and a whole call answered by Gemini."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from getpatter.core.providers import TextDelta, ToolCallRequest, Usage
from getpatter.core.registry import Registry
from getpatter.errors import PatterConfigError, PatterConnectionError, ProviderError
from getpatter.plugins.google.llm import GoogleLLM
from getpatter.testing.gemini_http import FakeGemini, FunctionCall
from getpatter.testing.twilio import FakeTwilio

from call_kit import fake_fixture, loaded_on_import, peak, poll, said
from llm_kit import (
    ACME,
    ANSWER,
    HOURS,
    QUESTION,
    call_with_a_tool,
    calling,
    hours_tool,
    run,
    text_of,
)

KEY = "AIzaSECRET-do-not-print-1234"


fake = fake_fixture(FakeGemini, KEY)


def llm_for(fake: FakeGemini, **kwargs: Any) -> GoogleLLM:
    return GoogleLLM(api_key=KEY, base_url=fake.base_url, **kwargs)


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    return [
        json.loads(line[len("data: ") :])
        for line in raw.decode().split("\r\n\r\n")
        if line.startswith("data: ")
    ]


# --- the fake ------------------------------------------------------------------------------


async def test_fake_checks_the_key_like_the_api(fake: FakeGemini) -> None:
    url = f"{fake.base_url}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=body) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["status"] == "PERMISSION_DENIED"
        async with http.post(url, json=body, headers={"x-goog-api-key": "wrong"}) as resp:
            error = (await resp.json())["error"]
            assert resp.status == 400 and error["status"] == "INVALID_ARGUMENT"
            assert error["details"][0]["reason"] == "API_KEY_INVALID"
        async with http.post(url + f"&key={KEY}", json=body) as resp:
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            events = sse_events(await resp.read())
    assert fake.rejected == [403, 400]
    assert "".join(p["text"] for e in events for p in e["candidates"][0]["content"]["parts"]) == (
        "Okay."
    )
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"
    assert events[-1]["usageMetadata"]["candidatesTokenCount"] > 0


@pytest.mark.parametrize(
    ("contents", "complaint"),
    [
        ([], "contents is not specified"),
        ([{"role": "assistant", "parts": [{"text": "x"}]}], "valid role"),
        ([{"role": "user", "parts": []}], "must not be empty"),
        (
            [
                {"role": "user", "parts": [{"text": "x"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "a", "args": {}}}]},
                {"role": "user", "parts": [{"text": "no answer to the call"}]},
            ],
            "function call turn",
        ),
        (
            [
                {"role": "user", "parts": [{"text": "x"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "a", "args": {}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "b", "response": {}}}]},
            ],
            "number of function response parts",
        ),
    ],
)
async def test_fake_rejects_what_the_api_rejects(
    fake: FakeGemini, contents: list[Any], complaint: str
) -> None:
    url = f"{fake.base_url}/v1beta/models/m:streamGenerateContent?alt=sse"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url, json={"contents": contents}, headers={"x-goog-api-key": KEY}
        ) as r:
            assert r.status == 400
            assert complaint in (await r.json())["error"]["message"]


async def test_fake_sends_one_json_array_without_sse(fake: FakeGemini) -> None:
    url = f"{fake.base_url}/v1/models/m:streamGenerateContent"
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=body, headers={"x-goog-api-key": KEY}) as resp:
            events = await resp.json()
    assert isinstance(events, list) and events[-1]["candidates"][0]["finishReason"] == "STOP"


# --- the client ----------------------------------------------------------------------------


async def test_streams_text_and_usage_with_the_right_request(fake: FakeGemini) -> None:
    fake.replies = ["Hello there, how can I help you today?"]
    llm = llm_for(fake, temperature=0.3, max_tokens=200)
    events = await run(
        llm,
        [
            {"role": "system", "content": "Be brief."},
            {"role": "assistant", "content": "Acme, hello!"},
            {"role": "user", "content": "hi"},
        ],
    )
    text = [e.text for e in events if isinstance(e, TextDelta)]
    assert "".join(text) == "Hello there, how can I help you today?" and len(text) > 2
    usage = [e for e in events if isinstance(e, Usage)]
    assert len(usage) == 1 and usage[0].output_tokens > 0 and usage[0].input_tokens > 0
    assert events[-1] is usage[0]
    request = fake.requests[0]
    assert request["headers"]["x-goog-api-key"] == KEY and request["query"]["alt"] == "sse"
    assert request["path"].endswith("/models/gemini-2.5-flash:streamGenerateContent")
    body = request["body"]
    assert body["systemInstruction"]["parts"][0]["text"] == "Be brief."
    assert [c["role"] for c in body["contents"]] == ["model", "user"]
    assert body["generationConfig"] == {"temperature": 0.3, "maxOutputTokens": 200}
    await llm.aclose()


async def test_a_function_call_round_trip_keeps_ids_names_and_signatures(
    fake: FakeGemini,
) -> None:
    fake.thought_signatures = True
    fake.replies = [
        [FunctionCall("check_hours", {"day": "monday"}), FunctionCall("check_hours", {"day": "x"})],
        "We open at nine.",
    ]
    llm = llm_for(fake)
    history: list[dict[str, Any]] = [{"role": "user", "content": "when do you open?"}]
    events = await run(llm, history, [HOURS])
    calls = [e for e in events if isinstance(e, ToolCallRequest)]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("check_hours", {"day": "monday"}),
        ("check_hours", {"day": "x"}),
    ]
    assert len({c.id for c in calls}) == 2
    decl = fake.bodies[0]["tools"][0]["functionDeclarations"][0]
    assert decl["name"] == "check_hours" and decl["parametersJsonSchema"] == HOURS["parameters"]
    history += [
        calling(calls),
        {"role": "tool", "tool_call_id": calls[0].id, "content": '{"opens": "9am"}'},
        {"role": "tool", "tool_call_id": calls[1].id, "content": "closed"},
    ]
    events = await run(llm, history, [HOURS])
    assert text_of(events) == "We open at nine."
    contents = fake.bodies[1]["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    answers = [p["functionResponse"] for p in contents[2]["parts"]]
    assert answers == [
        {"id": calls[0].id, "name": "check_hours", "response": {"opens": "9am"}},
        {"id": calls[1].id, "name": "check_hours", "response": {"result": "closed"}},
    ]
    assert contents[1]["parts"][0]["thoughtSignature"]  # sent back: else the API says 400


async def test_closing_the_iterator_stops_reading_the_stream(fake: FakeGemini) -> None:
    fake.replies = [" ".join(["word"] * 40)]
    fake.token_delay = 0.05
    llm = llm_for(fake)
    stream = llm.chat([{"role": "user", "content": "talk"}])
    assert isinstance(await anext(stream), TextDelta)
    await stream.aclose()
    await poll(lambda: fake.aborted, 40, 0.05)
    assert fake.aborted == 1 and fake.completed == 0


async def test_bad_key_and_quota_are_connection_errors_without_the_key(fake: FakeGemini) -> None:
    wrong = "AIzaWRONG-secret-31337"
    with pytest.raises(PatterConnectionError, match="GEMINI_API_KEY") as err:
        await run(
            GoogleLLM(api_key=wrong, base_url=fake.base_url), [{"role": "user", "content": "x"}]
        )
    assert wrong not in str(err.value) and KEY not in str(err.value)
    fake.quota_exceeded = True
    with pytest.raises(PatterConnectionError, match="429"):
        await run(llm_for(fake), [{"role": "user", "content": "x"}])


async def test_a_refused_request_is_a_provider_error(fake: FakeGemini) -> None:
    with pytest.raises(ProviderError, match="400") as err:
        await run(llm_for(fake), [{"role": "user", "content": "x"}], [{"name": "bad name!"}])
    assert not isinstance(err.value, PatterConnectionError)


async def test_a_drop_before_output_is_retried_once(fake: FakeGemini) -> None:
    llm = llm_for(fake)
    fake.first_token_delay = 0.3
    task = asyncio.ensure_future(run(llm, [{"role": "user", "content": "x"}]))
    await poll(lambda: fake.requests, 200, 0.01)
    await asyncio.sleep(0.05)  # the request is in, its answer not yet begun
    assert await fake.drop_connections() >= 1
    events = await task
    assert text_of(events) == "Okay."
    assert len(fake.requests) == 2


def test_keys_come_from_the_environment_and_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    with pytest.raises(PatterConfigError, match="GEMINI_API_KEY"):
        GoogleLLM()
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    llm = GoogleLLM()
    assert KEY not in repr(llm) and KEY not in repr(llm.options)
    monkeypatch.setenv("GOOGLE_API_KEY", "  ")  # blank: not taken
    assert GoogleLLM()._key.reveal() == KEY
    with pytest.raises(PatterConfigError, match="temperature"):
        GoogleLLM(temperature=5)


def test_registered_and_lazy() -> None:
    assert Registry().load("llm", "google") is GoogleLLM
    assert loaded_on_import("google", ("google",)) == "[]"


# --- a whole call --------------------------------------------------------------------------


async def test_a_call_answered_by_gemini_with_a_tool(
    serve: Callable[..., Any], net: FakeTwilio, fake: FakeGemini
) -> None:
    seen: list[dict[str, Any]] = []
    fake.thought_signatures = True
    fake.replies = [FunctionCall("check_hours", {"day": "monday"}), "We open at nine."]
    record, call, tts = await call_with_a_tool(
        serve, net, llm=llm_for(fake), tools=[hours_tool(seen)], **ACME
    )
    assert seen == [{"day": "monday"}]
    assert tts.texts == ["Acme, how can I help?", "We open at nine."]
    first, second = fake.bodies
    assert first["systemInstruction"]["parts"][0]["text"] == "You are Acme's phone agent."
    assert [c["role"] for c in first["contents"]] == ["model", "user"]
    assert [c["role"] for c in second["contents"]] == ["model", "user", "model", "user"]
    assert "functionResponse" in second["contents"][-1]["parts"][0]
    texts = said(record)
    assert ("user", QUESTION) in texts
    assert any(role == "assistant" and ANSWER in line for role, line in texts)
    assert peak(call.heard_audio()) > 2000
