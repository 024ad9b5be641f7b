"""One view of every conversation engine, so whole-call tests run unchanged on each: OpenAI
Realtime and Gemini Live (each against its wire-level fake) and the STT → LLM → TTS pipeline
(scripted providers). A script is a list of replies (text, or a `Call` of a tool) and what the
caller says, one transcript per turn."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from getpatter import GeminiLive, OpenAIRealtime, UltravoxRealtime
from getpatter.testing.gemini_live import FakeGeminiLive
from getpatter.testing.openai_realtime import FakeRealtime, FunctionCall
from getpatter.testing.providers import ScriptedLLM, ScriptedSTT, ScriptedTTS, ToolCallScript
from getpatter.testing.ultravox import FakeUltravox

from helpers import speech

ENGINES = ("openai", "gemini", "pipeline")
OPENAI_KEY = "sk-test-realtime-key"
GEMINI_KEY = "gemini-test-key-0123"
ULTRAVOX_KEY = "ultravox-test-key-0123"


@dataclass(frozen=True)
class Call:
    """A scripted model turn that calls a tool."""

    name: str
    arguments: dict[str, Any]


Reply = str | Call


def hello(lead: float = 0.3, tail: float = 0.8) -> np.ndarray:
    """The caller says "Hello," (0.8 s) after `lead` s of silence."""
    z = np.zeros
    clip = speech(lead=0, tail=0)[:6400]
    return np.concatenate([z(int(lead * 8000), np.int16), clip, z(int(tail * 8000), np.int16)])


@dataclass
class Kit:
    kind: str
    fake: Any = None  # FakeRealtime | FakeGeminiLive | None
    llm: ScriptedLLM | None = None

    def agent(
        self, replies: Sequence[Reply] = (), transcripts: Sequence[str] = (), **kwargs: Any
    ) -> dict[str, Any]:
        """`phone.agent(**...)` for this engine, scripted to answer `replies` in turn."""
        if self.kind == "pipeline":
            self.llm = ScriptedLLM([_llm_reply(r) for r in replies] or ["Okay."])
            stt = ScriptedSTT(list(transcripts) or ["Hello."])
            return {"stt": stt, "tts": ScriptedTTS(), "llm": self.llm, **kwargs}
        self.fake.responses = [_model_reply(r) for r in replies]
        self.fake.transcripts = list(transcripts)
        return {"engine": self.engine(), **kwargs}

    def engine(self, **options: Any) -> Any:
        if self.kind == "openai":
            return OpenAIRealtime(
                api_key=options.pop("api_key", OPENAI_KEY),
                base_url=self.fake.base_url,
                websocket_base_url=self.fake.ws_url,
                **options,
            )
        if self.kind == "ultravox":
            return UltravoxRealtime(
                api_key=options.pop("api_key", ULTRAVOX_KEY), base_url=self.fake.base_url, **options
            )
        return GeminiLive(
            api_key=options.pop("api_key", GEMINI_KEY),
            base_url=self.fake.base_url,
            ssl=self.fake.client_ssl(),
            **options,
        )

    def tool_outputs(self) -> list[dict[str, Any]]:
        """Every tool result the model was given, as parsed JSON."""
        import json

        if self.kind == "openai":
            return [json.loads(o["output"]) for s in self.fake.sessions for o in s.tool_outputs]
        if self.kind == "gemini":
            return [r["response"] for s in self.fake.sessions for r in s.tool_responses]
        if self.kind == "ultravox":
            return [json.loads(r["result"]) for c in self.fake.calls for r in c.tool_results]
        assert self.llm is not None
        return [
            json.loads(m["content"])
            for m in self.llm.requests[-1]
            if m.get("role") == "tool" and isinstance(m.get("content"), str)
        ]


def _model_reply(reply: Reply) -> Any:
    return FunctionCall(reply.name, reply.arguments) if isinstance(reply, Call) else reply


def _llm_reply(reply: Reply) -> Any:
    return ToolCallScript(reply.name, reply.arguments) if isinstance(reply, Call) else reply


@contextlib.asynccontextmanager
async def open_kit(kind: str) -> AsyncIterator[Kit]:
    if kind == "pipeline":
        yield Kit(kind)
        return
    fake: Any
    if kind == "openai":
        fake = FakeRealtime(OPENAI_KEY, seconds_per_char=0.03)
    elif kind == "ultravox":
        fake = FakeUltravox(ULTRAVOX_KEY, seconds_per_char=0.03)
    else:
        fake = FakeGeminiLive(GEMINI_KEY, seconds_per_char=0.03)
    async with fake:
        yield Kit(kind, fake)
