"""No secret in any log line, at DEBUG, whatever logger writes it.

Whole calls run through both fake carriers with every provider plugin pointed at its fake,
while the root logger takes everything at DEBUG (third-party loggers included:
`websockets.client` writes request headers, `Authorization: Bearer ...`, at that level).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from getpatter import OpenAIRealtime
from getpatter.core.credentials import SecretRedactor, redact_logs, secrets_in
from getpatter.plugins.anthropic.llm import AnthropicLLM
from getpatter.plugins.assemblyai.stt import AssemblyAISTT
from getpatter.plugins.cartesia.tts import CartesiaTTS
from getpatter.plugins.deepgram.stt import DeepgramSTT
from getpatter.plugins.elevenlabs.tts import ElevenLabsTTS
from getpatter.plugins.openai.llm import OpenAILLM
from getpatter.plugins.openai.stt import OpenAITranscribeSTT
from getpatter.plugins.openai.tts import OpenAITTS
from getpatter.plugins.speechmatics.stt import SpeechmaticsSTT
from getpatter.testing.anthropic import FakeAnthropic
from getpatter.testing.assemblyai import FakeAssemblyAI
from getpatter.testing.cartesia import FakeCartesia
from getpatter.testing.deepgram import FakeDeepgram
from getpatter.testing.elevenlabs import FakeElevenLabs
from getpatter.testing.openai_http import FakeOpenAI
from getpatter.testing.openai_realtime import FakeRealtime
from getpatter.testing.speechmatics import FakeSpeechmatics

from carrier_nets import Network, open_network, serve_on, stop
from helpers import CALLER, NUMBER, speech


def key(name: str) -> str:
    return f"{name}-SECRET-{secrets.token_hex(8)}"


class Everything(logging.Handler):
    """Every record of every logger, formatted as a handler would write it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.name, self.format(record)))


@contextlib.contextmanager
def everything_at_debug() -> Iterator[Everything]:
    root = logging.getLogger()
    handler, level = Everything(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def leaks(lines: list[tuple[str, str]], values: list[str]) -> list[str]:
    return [line for _, line in lines for v in values if v in line]


# --- the filter itself ----------------------------------------------------------------------


def test_redactor_covers_message_args_exceptions_and_third_party_loggers() -> None:
    secret = key("sk")
    release = redact_logs([secret, "short"])  # too short to redact: ordinary words survive
    try:
        with everything_at_debug() as seen:
            logging.getLogger("websockets.client").debug("> Authorization: Bearer %s", secret)
            logging.getLogger("some.lib").info(f"key={secret!r} as JSON {{'k': '{secret}'}}")
            try:
                raise RuntimeError(f"refused {secret}")
            except RuntimeError:
                logging.getLogger("getpatter.x").exception("failed: %s", "short")
    finally:
        release()
    text = "\n".join(line for _, line in seen.lines)
    assert secret not in text
    assert "Authorization: Bearer ***" in text and "failed: short" in text
    assert "RuntimeError: refused ***" in text
    # once released, the record factory is the default again
    assert logging.getLogRecordFactory() is logging.LogRecord


def test_redactor_is_a_filter_for_your_own_handler() -> None:
    secret = key("tok")
    redactor = SecretRedactor()
    redactor.add([secret])
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token %s", (secret,), None)
    assert redactor.filter(record) and record.getMessage() == "token ***"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "plain %s", ("args",), None)
    redactor.filter(record)
    assert (record.msg, record.args) == ("plain %s", ("args",))  # the template is kept
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d broken %s", (secret,), None)
    redactor.filter(record)  # logging will report the bad format, with these args
    assert record.args == ("***",)


def test_secrets_in_finds_provider_keys() -> None:
    rt, dg = key("rt"), key("dg")
    from getpatter.agent import Agent

    agent = Agent(engine=OpenAIRealtime(api_key=rt, base_url="http://127.0.0.1:9"))
    assert rt in secrets_in(agent)
    pipeline = Agent(stt=DeepgramSTT(api_key=dg), tts="local", llm=None)
    assert dg in secrets_in(pipeline)


@pytest.mark.parametrize(
    "provider",
    [
        "getpatter.plugins.google.live:GeminiLive",
        "getpatter.plugins.google.llm:GoogleLLM",
        "getpatter.plugins.ultravox.realtime:UltravoxRealtime",
        "getpatter.plugins.lmnt.tts:LmntTTS",
        "getpatter.plugins.rime.tts:RimeTTS",
        "getpatter.plugins.soniox.stt:SonioxSTT",
        "getpatter.plugins.speechmatics.stt:SpeechmaticsSTT",
        "getpatter.plugins.cartesia.tts:CartesiaTTS",
    ],
)
def test_every_providers_key_is_found_to_be_redacted(provider: str) -> None:
    """The providers the whole-call test below does not run: their key, passed the way a user
    passes it, is among the secrets a server keeps out of its logs."""
    import importlib

    module, name = provider.split(":")
    secret = key(name)
    instance = getattr(importlib.import_module(module), name)(api_key=secret)
    assert secret in secrets_in(instance)


# --- whole calls, every provider --------------------------------------------------------------


@contextlib.asynccontextmanager
async def fakes(keys: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
    async with contextlib.AsyncExitStack() as stack:
        out = {
            "realtime": await stack.enter_async_context(
                FakeRealtime(keys["openai_rt"], seconds_per_char=0.02)
            ),
            "openai": await stack.enter_async_context(
                FakeOpenAI(keys["openai"], transcripts=["what time do you open"])
            ),
            "deepgram": await stack.enter_async_context(
                FakeDeepgram(keys["deepgram"], transcripts=["hello there"], latency=0.01)
            ),
            "elevenlabs": await stack.enter_async_context(FakeElevenLabs(keys["elevenlabs"])),
            "cartesia": await stack.enter_async_context(FakeCartesia(keys["cartesia"])),
            "assemblyai": await stack.enter_async_context(
                FakeAssemblyAI(keys["assemblyai"], transcripts=["hello there"], latency=0.01)
            ),
            "speechmatics": await stack.enter_async_context(
                FakeSpeechmatics(keys["speechmatics"], transcripts=["hello there"])
            ),
            "anthropic": await stack.enter_async_context(FakeAnthropic(keys["anthropic"])),
        }
        yield out


def agents(f: dict[str, Any], keys: dict[str, str]) -> list[tuple[str, dict[str, Any], dict]]:
    """(carrier, agent kwargs, serve kwargs) for calls that together use every plugin."""

    async def echo(msg: dict[str, Any]) -> str:
        return f"You said {msg['text']}."

    rt = f["realtime"]
    oa = f["openai"].base_url
    return [
        (
            "twilio",
            {
                "engine": OpenAIRealtime(
                    api_key=keys["openai_rt"], base_url=rt.base_url, websocket_base_url=rt.ws_url
                ),
                "first_message": "Hi from realtime.",
            },
            {},
        ),
        (
            "telnyx",
            {
                "stt": DeepgramSTT(api_key=keys["deepgram"], base_url=f["deepgram"].ws_url),
                "tts": ElevenLabsTTS(
                    "voice-1", api_key=keys["elevenlabs"], base_url=f["elevenlabs"].base_url
                ),
                "llm": OpenAILLM(api_key=keys["openai"], base_url=oa),
                "first_message": "Hi from Deepgram.",
            },
            {},
        ),
        (
            "twilio",
            {
                "stt": AssemblyAISTT(api_key=keys["assemblyai"], base_url=f["assemblyai"].ws_url),
                "tts": CartesiaTTS(
                    api_key=keys["cartesia"],
                    base_url=f["cartesia"].base_url,
                    ws_url=f["cartesia"].ws_url,
                ),
                "llm": AnthropicLLM(api_key=keys["anthropic"], base_url=f["anthropic"].base_url),
                "first_message": "Hi from AssemblyAI.",
            },
            {},
        ),
        (
            "telnyx",
            {
                "stt": SpeechmaticsSTT(
                    api_key=keys["speechmatics"], ws_url=f["speechmatics"].ws_url
                ),
                "tts": OpenAITTS(api_key=keys["openai"], base_url=oa),
                "first_message": "Hi from Speechmatics.",
            },
            {"on_message": echo},
        ),
        (
            "twilio",
            {
                "stt": OpenAITranscribeSTT(api_key=keys["openai"], base_url=oa),
                "tts": OpenAITTS(api_key=keys["openai"], base_url=oa),
                "first_message": "Hi from OpenAI.",
            },
            {"on_message": echo},
        ),
    ]


async def one_call(kind: str, agent_kwargs: dict[str, Any], serve_kwargs: dict) -> list[str]:
    """A call that gets one answer to what the caller said; returns the carrier's secrets."""
    async with open_network(kind) as network:
        s = await serve_on(network, agent_kwargs, **serve_kwargs)
        try:
            call = await network.fake.place_call(
                from_=CALLER, to=NUMBER, audio=speech(lead=0.8, tail=6.0)
            )
            heard = s.events.setdefault("on_transcript", [])

            def answered() -> bool:
                roles = [e["role"] for e in heard]
                return "user" in roles and "assistant" in roles[roles.index("user") :]

            await call.wait_for(answered, 20)
            await call.hangup()
            await s.ended()
        finally:
            await stop(s)
        return carrier_secrets(network)


def carrier_secrets(network: Network) -> list[str]:
    f = network.fake
    return [f.auth_token] if network.kind == "twilio" else [f.api_key]


@pytest.fixture
def websockets_unfiltered() -> Iterator[None]:
    """websockets' loggers as an app without the Deepgram SDK has them: that SDK, once
    imported, hangs its own header filter on them (for everyone's sockets)."""
    # Deepgram's filter goes on now, not in the middle of the test; the other SDKs are those
    # the plugins import on first use in worker threads, where two first calls at once can
    # race on httpx's import (a plugin issue of its own, not what this test is about)
    import anthropic  # noqa: F401
    import deepgram  # noqa: F401
    import httpx  # noqa: F401
    import openai  # noqa: F401

    saved = {}
    for name in ("websockets.client", "websockets.server"):
        logger = logging.getLogger(name)
        saved[name] = list(logger.filters)
        for f in saved[name]:
            logger.removeFilter(f)
    yield
    for name, filters in saved.items():
        for f in filters:
            logging.getLogger(name).addFilter(f)


@pytest.mark.timeout(90)
@pytest.mark.usefixtures("websockets_unfiltered")
async def test_no_secret_reaches_any_log_at_debug_on_any_provider_or_carrier() -> None:
    keys = {
        n: key(n)
        for n in (
            "openai_rt openai deepgram elevenlabs cartesia assemblyai speechmatics anthropic"
        ).split()
    }
    async with fakes(keys) as f:
        first, *others = agents(f, keys)
        with everything_at_debug() as seen:
            # the realtime call alone first: a Deepgram client, once made, filters the
            # Authorization header out of websockets' logs for every socket of the process
            results = [await one_call(*first)]
            results += await asyncio.gather(*(one_call(k, a, s) for k, a, s in others))
    carrier_keys = [k for found in results for k in found]
    assert leaks(seen.lines, [*keys.values(), *carrier_keys]) == []
    loggers = {name for name, _ in seen.lines}
    # the loggers that would have carried them really wrote at DEBUG
    bearer = [line for name, line in seen.lines if "Bearer ***" in line]
    assert bearer, sorted(loggers)
    assert any(name.startswith("websockets") for name in loggers), sorted(loggers)
