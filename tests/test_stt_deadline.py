"""A turn is never lost to a streaming STT that stalls (issue: a deadline on the final).

Every streaming STT runs through the pipeline against its fake in a stall mode:
- ``no_final``: interims, but the final never comes (not even for the finalize message). The
  turn is taken from the last interim `final_timeout` + `final_grace` after the end of speech,
  with ``stt_timeout`` in its metrics.
- ``silent`` (the first socket only): the socket takes the audio and says nothing at all. The
  stream sees its finalize unanswered, reopens the socket, replays the utterance, and the
  late final still makes the turn.

Real sockets to the fakes, on the virtual clock (the in-memory carrier of pipeline_harness).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest

from getpatter.core.pipeline import PipelineOptions
from getpatter.core.providers import STT
from getpatter.plugins.assemblyai.stt import AssemblyAISTT
from getpatter.plugins.deepgram.stt import DeepgramSTT
from getpatter.plugins.soniox.stt import SonioxSTT
from getpatter.plugins.speechmatics.stt import SpeechmaticsSTT
from getpatter.testing.assemblyai import FakeAssemblyAI
from getpatter.testing.clock import run_virtual
from getpatter.testing.deepgram import FakeDeepgram
from getpatter.testing.soniox import FakeSoniox
from getpatter.testing.speechmatics import FakeSpeechmatics

from helpers import speech
from pipeline_harness import Harness, open_call

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # websockets.legacy

SPEECH = speech("hello.wav", lead=0.2, tail=0.0)
TEXT = "What time do you open?"
OPTIONS = PipelineOptions()
DEADLINE = OPTIONS.final_timeout + OPTIONS.final_grace


@dataclass
class Provider:
    """One streaming STT and how to build it against its fake."""

    name: str
    fake: Callable[[], Any]
    stt: Callable[[Any], STT]


PROVIDERS = [
    Provider(
        "deepgram",
        lambda: FakeDeepgram(transcripts=[TEXT], latency=0.05),
        lambda f: DeepgramSTT(api_key=f.api_key, base_url=f.ws_url),
    ),
    Provider(
        "assemblyai",
        lambda: FakeAssemblyAI(transcripts=[TEXT], latency=0.05),
        lambda f: AssemblyAISTT(api_key=f.api_key, base_url=f.ws_url),
    ),
    Provider(
        "speechmatics",
        lambda: FakeSpeechmatics(transcripts=[TEXT], latency=0.05),
        lambda f: SpeechmaticsSTT(api_key=f.api_key, ws_url=f.ws_url),
    ),
    Provider(
        "soniox",
        lambda: FakeSoniox(transcripts=[TEXT], latency=0.05),
        lambda f: SonioxSTT(api_key=f.api_key, base_url=f.ws_url),
    ),
]


def virtual(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    def test(provider: Provider) -> None:
        run_virtual(fn(provider))

    test.__name__ = fn.__name__
    return pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)(test)


async def call(provider: Provider, fake: Any) -> tuple[Harness, list[str]]:
    heard: list[str] = []

    async def on_message(m: Any) -> str:  # async: a plain function runs in a thread, and real
        heard.append(m["text"])  # threads let the virtual clock run past them under load
        return "We open at nine."

    h = await open_call(stt=provider.stt(fake), on_message=on_message)  # type: ignore[arg-type]
    return h, heard


@virtual
async def test_interims_without_a_final_still_make_the_turn(provider: Provider) -> None:
    async with provider.fake() as fake:
        fake.stall = "no_final"
        h, heard = await call(provider, fake)
        await h.feed(SPEECH)
        spoke_until = asyncio.get_running_loop().time()
        await h.silence(DEADLINE + 2.0)
        assert len(heard) == 1 and heard[0]  # the last interim: part of the sentence
        assert TEXT.lower().startswith(heard[0].lower().rstrip(".?"))
        [turn] = h.session.metrics.turns
        assert turn["stt_timeout"] is True and turn["user_text"] == heard[0]
        taken = next(e for e in h.session.events if e["kind"] == "turn")["final_at"]
        # the VAD's end of speech (≈0.6 s of silence) + the deadline, and no later
        assert taken - spoke_until <= OPTIONS.vad.end_silence_ms / 1000 + DEADLINE + 0.1
        await h.close()


@virtual
async def test_a_socket_that_says_nothing_is_reopened_and_the_turn_kept(
    provider: Provider,
) -> None:
    async with provider.fake() as fake:
        fake.stall = "silent"
        h, heard = await call(provider, fake)
        fake.stall = None  # the next socket works
        await h.feed(SPEECH)
        for _ in range(30):  # the reconnect is real I/O: under load it takes more ticks
            await h.silence(0.5)
            if heard:
                break
        await h.silence(2.0)  # the answer is heard: the turn is complete
        assert heard == [TEXT]
        assert h.engine_call.stt_stream.reconnects == 1  # type: ignore[union-attr]
        [turn] = h.session.metrics.turns
        assert turn["stt_timeout"] is False
        await h.close()
