"""Run one provider's first use in a fresh interpreter and say in which thread each module was
first imported (run by tests/test_sdk_import.py: `python tests/sdk_first_use.py <provider>...`).

An import hook is installed once getpatter, the plugins and the fakes are imported and a fake is
up (what the fakes need is not the provider's doing), before the provider is built; from then on
it records the thread of every module's first import.
Prints one JSON object: {"imports": {module: thread name}, "already": [SDK modules loaded before
the hook]}. Several providers given: they are used concurrently, on one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.abc
import json
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

from getpatter.core.audio import pcm16_bytes, ulaw_encode
from getpatter.core.realtime_wire import SessionSetup
from getpatter.testing.engines import speech_tone

#: top-level module names of the provider SDKs (google.genai: its own package under `google`)
SDKS = ("openai", "anthropic", "deepgram", "cartesia", "lmnt", "google.genai")

imports: dict[str, str] = {}


class _Recorder(importlib.abc.MetaPathFinder):
    """Records who imports what; finds nothing itself."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in sys.modules:
            imports.setdefault(fullname, threading.current_thread().name)
        return None


HELLO = [{"role": "user", "content": "Hello?"}]


async def _llm(llm: Any) -> None:
    async for _ in llm.chat(HELLO):
        pass
    await llm.aclose()


async def _tts(tts: Any) -> None:
    stream = await tts.open()
    try:
        async for _ in stream.synthesize("Hello there."):
            pass
    finally:
        await stream.aclose()


async def openai_llm() -> Callable[[], Awaitable[None]]:
    from getpatter.plugins.openai.llm import OpenAILLM
    from getpatter.testing.openai_http import FakeOpenAI

    fake = await _start(FakeOpenAI())
    llm = OpenAILLM("gpt-4o-mini", api_key=fake.api_key, base_url=fake.base_url)
    return lambda: _llm(llm)


async def groq() -> Callable[[], Awaitable[None]]:
    from getpatter.plugins.openai.compatible import GroqLLM
    from getpatter.testing.openai_http import FakeOpenAI

    fake = await _start(FakeOpenAI())
    llm = GroqLLM(api_key=fake.api_key, base_url=fake.base_url)
    return lambda: _llm(llm)


async def openai_tts() -> Callable[[], Awaitable[None]]:
    from getpatter.plugins.openai.tts import OpenAITTS
    from getpatter.testing.openai_http import FakeOpenAI

    fake = await _start(FakeOpenAI())
    tts = OpenAITTS(api_key=fake.api_key, base_url=fake.base_url)
    return lambda: _tts(tts)


async def openai_stt() -> Callable[[], Awaitable[None]]:
    from getpatter.plugins.openai.stt import OpenAITranscribeSTT
    from getpatter.testing.openai_http import FakeOpenAI

    fake = await _start(FakeOpenAI())
    stt = OpenAITranscribeSTT(api_key=fake.api_key, base_url=fake.base_url)

    async def use() -> None:
        stream = await stt.open()
        try:
            await stream.send(pcm16_bytes(speech_tone("Hello there.", 16000)))
            await stream.finalize()
            async for _ in stream.transcripts():
                break
        finally:
            await stream.aclose()

    return use


async def anthropic() -> Callable[[], Awaitable[None]]:
    from getpatter.plugins.anthropic.llm import AnthropicLLM
    from getpatter.testing.anthropic import FakeAnthropic

    fake = await _start(FakeAnthropic())
    llm = AnthropicLLM(api_key=fake.api_key, base_url=fake.base_url)
    return lambda: _llm(llm)


async def google_llm() -> Callable[[], Awaitable[None]]:
    from getpatter.plugins.google.llm import GoogleLLM
    from getpatter.testing.gemini_http import FakeGemini

    fake = await _start(FakeGemini())
    llm = GoogleLLM(api_key=fake.api_key, base_url=fake.base_url)
    return lambda: _llm(llm)


async def deepgram() -> Callable[[], Awaitable[None]]:
    from getpatter.plugins.deepgram.stt import DeepgramSTT
    from getpatter.testing.deepgram import FakeDeepgram

    fake = await _start(FakeDeepgram(latency=0.01))
    stt = DeepgramSTT(api_key=fake.api_key, base_url=fake.ws_url)

    async def use() -> None:
        stream = await stt.open()
        try:
            await stream.send(ulaw_encode(speech_tone("Hello there.", 8000)))
            await stream.finalize()
            async for t in stream.transcripts():
                if t.is_final:
                    break
        finally:
            await stream.aclose()

    return use


async def cartesia() -> Callable[[], Awaitable[None]]:
    from getpatter.plugins.cartesia.tts import CartesiaTTS
    from getpatter.testing.cartesia import FakeCartesia

    fake = await _start(FakeCartesia())
    tts = CartesiaTTS(api_key=fake.api_key, base_url=fake.base_url, ws_url=fake.ws_url)
    return lambda: _tts(tts)


async def lmnt() -> Callable[[], Awaitable[None]]:
    from getpatter.plugins.lmnt.tts import LmntTTS
    from getpatter.testing.lmnt import FakeLmnt

    fake = await _start(FakeLmnt())
    tts = LmntTTS(api_key=fake.api_key, base_url=fake.base_url)
    return lambda: _tts(tts)


SETUP = SessionSetup(instructions="Be brief.", tools=[], language="en", resumed=False)


async def openai_realtime() -> Callable[[], Awaitable[None]]:
    from getpatter.plugins.openai.realtime import OpenAIRealtime
    from getpatter.testing.openai_realtime import FakeRealtime

    fake = await _start(FakeRealtime())
    engine = OpenAIRealtime(
        api_key=fake.api_key, base_url=fake.base_url, websocket_base_url=fake.ws_url
    )

    async def use() -> None:
        conn = await engine.connect()
        await conn.close()

    return use


async def gemini_live() -> Callable[[], Awaitable[None]]:
    from getpatter.plugins.google.live import GeminiLive
    from getpatter.testing.gemini_live import FakeGeminiLive

    fake = await _start(FakeGeminiLive())
    engine = GeminiLive(api_key=fake.api_key, base_url=fake.base_url, ssl=fake.client_ssl())

    async def use() -> None:
        async with contextlib.AsyncExitStack() as stack:
            await engine.connect(SETUP, stack)

    return use


_fakes: list[Any] = []


async def _start(fake: Any) -> Any:
    """Start a fake, then record: what the fakes import is not the providers' doing."""
    _fakes.append(fake)
    await fake.__aenter__()
    _record()
    return fake


def _record() -> None:
    if not any(isinstance(f, _Recorder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Recorder())


PROVIDERS: dict[str, Callable[[], Awaitable[Callable[[], Awaitable[None]]]]] = {
    f.__name__: f
    for f in (
        openai_llm,
        groq,
        openai_tts,
        openai_stt,
        anthropic,
        google_llm,
        deepgram,
        cartesia,
        lmnt,
        openai_realtime,
        gemini_live,
    )
}


_PLUGINS_AND_FAKES = [
    *(f"getpatter.plugins.{m}" for m in ("anthropic.llm", "cartesia.tts", "deepgram.stt")),
    *(f"getpatter.plugins.{m}" for m in ("google.live", "google.llm", "lmnt.tts")),
    *(f"getpatter.plugins.openai.{m}" for m in ("compatible", "realtime", "stt", "tts")),
    *(f"getpatter.testing.{m}" for m in ("anthropic", "cartesia", "deepgram", "gemini_http")),
    *(f"getpatter.testing.{m}" for m in ("gemini_live", "lmnt", "openai_http", "openai_realtime")),
]


def _sdk_loaded() -> list[str]:
    return [m for m in SDKS if m in sys.modules]


async def main(names: list[str]) -> dict[str, Any]:
    # the plugins and the fakes: imported now, before the hook (they must not import the SDKs)
    for module in _PLUGINS_AND_FAKES:
        importlib.import_module(module)
    already = _sdk_loaded()
    uses = [await PROVIDERS[name]() for name in names]
    try:
        await asyncio.gather(*(use() for use in uses))
    finally:
        for fake in reversed(_fakes):
            await fake.__aexit__(None, None, None)
    return {"imports": imports, "already": already}


if __name__ == "__main__":
    threading.current_thread().name = "main"
    print(json.dumps(asyncio.run(main(sys.argv[1:]))))
