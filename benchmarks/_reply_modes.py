"""The "sentences" and "stall" modes of turn_latency.py: how a reply's sentences reach the
caller, through the real ElevenLabs plugin (its fake, on a socket) and the fake Twilio network.

One process (server, fake Twilio, fake ElevenLabs on one loop), one call at a time: these modes
time a single reply's path, not load. Times are the loop's, read where things happen: the
`on_message` generator stamps its yields, the fake ElevenLabs stamps each message it receives
and each context's first audio, the fake Twilio stamps each media frame it receives.

sentences  `on_message` is issue 16's generator: three sentences, a lookup (`--lookup`, 1 s)
           between yields. Per sentence: yield → its text at the TTS (target p50 <= 20 ms);
           the TTS's first-byte time (the fake's `first_audio_delay`, the baseline); and the
           TTS's first audio → that sentence's first frame at the carrier (found by byte
           offset in what the carrier received; target p50 <= 30 ms, so the caller hears a
           sentence within the TTS's first-byte time + 30 ms of it reaching the TTS).
stall      `on_message` answers three sentences at once; the TTS streams at real time (the
           worst case: nothing is buffered ahead) and its second sentence stalls (accepted,
           never answered). Figure: the longest silence the caller heard inside the reply
           (each frame plays from the later of its arrival and the end of the one before;
           target <= 2 s), against the same reply with no stall (the baseline), and the turn's
           `tts_retry` (1 expected).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _harness import CALLER, HOST, NUMBER, quantiles

ROOT = Path(__file__).resolve().parent.parent
KEY = "xi-bench-key"
FIRST_BYTE_S = 0.15  # the fake TTS's first-byte time (ElevenLabs flash is ~0.1-0.3 s)
SENTENCES = (
    "First, let me check the calendar.",
    "Tuesday at ten is free.",
    "I have booked it for you.",
)
STALL_REPLY = "Let me see what we have. We open at nine tomorrow. We close at six tonight."
YIELD_P50_MS, CARRIER_P50_MS, SILENCE_MAX_S = 20.0, 30.0, 2.0


def caller_ulaw() -> bytes:
    from getpatter.core.audio import ulaw_encode

    with wave.open(str(ROOT / "tests" / "data" / "hello.wav")) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
    lead = np.zeros(int(0.3 * 8000), np.int16)
    return ulaw_encode(np.concatenate([lead, pcm]))


@dataclass
class Rig:
    """A Patter serving a pipeline agent spoken by ElevenLabs (the fake), on the fake network."""

    net: Any
    tts_fake: Any
    phone: Any
    task: asyncio.Task[None]
    records: list[dict[str, Any]] = field(default_factory=list)

    async def close(self) -> None:
        await self.phone.disconnect()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self.task, 10)
        await self.tts_fake.stop()
        await self.net.stop()


async def open_rig(on_message: Callable[[dict[str, Any]], Any], audio_speed: float) -> Rig:
    from getpatter import Patter, Twilio
    from getpatter.plugins.elevenlabs.tts import ElevenLabsTTS
    from getpatter.testing.elevenlabs import FakeElevenLabs
    from getpatter.testing.providers import ScriptedSTT
    from getpatter.testing.twilio import FakeTwilio

    net = FakeTwilio()
    await net.start()
    net.add_number(NUMBER, voice_url=f"https://{HOST}/webhooks/twilio/voice")
    tts_fake = FakeElevenLabs(KEY, first_audio_delay=FIRST_BYTE_S, audio_speed=audio_speed)
    await tts_fake.start()
    phone = Patter(
        carrier=Twilio(net.account_sid, net.auth_token, base_url=net.base_url),
        phone_number=NUMBER,
        webhook_url=HOST,
        persist=False,
    )
    agent = phone.agent(
        stt=ScriptedSTT(["book me in for tuesday"]),
        tts=ElevenLabsTTS(api_key=KEY, base_url=tts_fake.base_url),
    )
    records: list[dict[str, Any]] = []

    def on_call_end(record: dict[str, Any]) -> None:
        records.append(record)

    task = asyncio.create_task(
        phone.serve(agent, port=0, host="127.0.0.1", on_message=on_message, on_call_end=on_call_end)
    )
    await asyncio.wait_for(phone.ready, 10)
    net.route(HOST, f"127.0.0.1:{phone.port}")
    return Rig(net, tts_fake, phone, task, records)


async def until(predicate: Callable[[], bool], limit: float = 20.0) -> bool:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def one_call(rig: Rig, sentences: int, during: Callable[[Any], Any] | None = None) -> Any:
    """Place a call, let the caller speak, wait until the reply's `sentences` contexts have
    ended and the line has been quiet for 0.6 s, hang up; returns (call, its TTS socket)."""
    loop = asyncio.get_running_loop()
    before, ended = len(rig.tts_fake.sessions), len(rig.records)
    call = await rig.net.place_call(from_=CALLER, to=NUMBER, audio=caller_ulaw())
    await until(lambda: len(rig.tts_fake.sessions) > before)
    session = rig.tts_fake.sessions[before]
    helper = asyncio.create_task(during(session)) if during is not None else None

    def quiet() -> bool:
        media = [t for t, event, _ in call.received if event == "media"]
        return bool(media) and loop.time() - media[-1] > 0.6

    await until(lambda: len(session.finals) >= sentences and quiet(), 30)
    if helper is not None:
        helper.cancel()
    await call.hangup()
    await until(lambda: len(rig.records) > ended)
    return call, session


def frames(call: Any) -> list[tuple[float, int]]:
    """(receive time, bytes) of each agent media frame at the carrier."""
    return [
        (t, len(base64.b64decode(m["media"]["payload"])))
        for t, event, m in call.received
        if event == "media"
    ]


def frame_at(received: list[tuple[float, int]], offset: int) -> float:
    """Receive time of the frame carrying byte `offset` of the agent's audio."""
    total = 0
    for t, n in received:
        if total + n > offset:
            return t
        total += n
    return float("nan")


# --- sentences ---------------------------------------------------------------------------------


async def sentences_mode(calls: int, lookup: float) -> tuple[bool, list[str]]:
    loop = asyncio.get_running_loop()
    yielded: list[float] = []

    async def on_message(msg: dict[str, Any]) -> Any:
        for i, sentence in enumerate(SENTENCES):
            if i:
                await asyncio.sleep(lookup)  # a database lookup
            yielded.append(loop.time())
            yield sentence

    rig = await open_rig(on_message, audio_speed=0.0)
    to_tts, ttfb, to_carrier, queued, problems = [], [], [], 0, []
    try:
        for _ in range(calls):
            yielded.clear()
            call, session = await one_call(rig, len(SENTENCES))
            got = frames(call)
            offset = 0
            previous_end = -np.inf
            for k, sentence in enumerate(SENTENCES, 1):
                ctx = f"s{k}"
                sent = [
                    t
                    for t, m in zip(session.received_at, session.received, strict=True)
                    if m.get("context_id") == ctx and m.get("flush")
                ]
                first = session.first_audio_at.get(ctx)
                if len(sent) != 1 or first is None or len(yielded) < k:
                    problems.append(f"{call.call_sid}: sentence {k} ({sentence!r}) not spoken")
                    break
                heard = frame_at(got, offset)
                to_tts.append(1000 * (sent[0] - yielded[k - 1]))
                ttfb.append(1000 * (first - sent[0]))
                if previous_end > first:  # still playing the previous one: queued behind it
                    queued += 1
                else:
                    to_carrier.append(1000 * (heard - first))
                previous_end = heard + session.audio_bytes[ctx] / 8000
                offset += session.audio_bytes[ctx]
    finally:
        await rig.close()
    a, b, c = quantiles(to_tts), quantiles(ttfb), quantiles(to_carrier)
    ok = a["p50"] <= YIELD_P50_MS and c["p50"] <= CARRIER_P50_MS and not problems
    lines = [
        f"== sentence generator: {calls} calls, {a['n']} sentences yielded {lookup:g} s apart "
        f"(issue 16's on_message), ElevenLabs fake first byte {1000 * FIRST_BYTE_S:.0f} ms",
        "                                                 p50 /     p99 /     max",
        f"  yield -> text at the TTS                    {fmt(a)}",
        f"  TTS first byte (the baseline)               {fmt(b)}",
        f"  TTS first audio -> first frame at carrier   {fmt(c)}"
        + (f"  ({queued} queued behind the sentence before, left out)" if queued else ""),
        f"  so: text at the TTS -> caller hears it = first byte + "
        f"{c['p50']:.1f} ms (p50); ratio to the first byte alone "
        f"{(b['p50'] + c['p50']) / b['p50']:.3f}",
        f"  {'PASS' if a['p50'] <= YIELD_P50_MS else 'FAIL'}  yield -> TTS p50 <= "
        f"{YIELD_P50_MS:g} ms",
        f"  {'PASS' if c['p50'] <= CARRIER_P50_MS else 'FAIL'}  TTS first audio -> carrier "
        f"p50 <= {CARRIER_P50_MS:g} ms (heard within the TTS first byte + {CARRIER_P50_MS:g} ms)",
    ]
    return ok, lines + [f"  PROBLEM {p}" for p in problems[:10]]


# --- stall -------------------------------------------------------------------------------------


def longest_silence(call: Any) -> float:
    """The longest silence the caller heard inside the reply: each frame plays from the later
    of its arrival and the end of the frame before (an arrival gap alone would count audio
    the carrier still had buffered, up to the server's 100 ms playout lead, as silence)."""
    longest, end = 0.0, None
    for t, n in frames(call):
        if end is not None:
            longest = max(longest, t - end)
        end = max(t, end if end is not None else t) + n / 8000
    return longest


async def stall_mode(calls: int) -> tuple[bool, list[str]]:
    async def stall_second(session: Any) -> None:
        # the first sentence has begun: the next context (the second sentence) will stall
        await until(lambda: "s1" in session.first_audio_at)
        session_fake.stall_next(0, whole_socket=False)

    rig = await open_rig(lambda msg: STALL_REPLY, audio_speed=1.0)
    session_fake = rig.tts_fake
    silences: dict[str, list[float]] = {"baseline": [], "stall": []}
    retries: list[int] = []
    problems: list[str] = []
    try:
        for _ in range(calls):
            for kind in ("baseline", "stall"):
                during = stall_second if kind == "stall" else None
                call, _ = await one_call(rig, 3, during)
                silences[kind].append(longest_silence(call))
                record = rig.records[-1]
                said = [e["text"] for e in record["transcript"] if e["role"] == "assistant"]
                if said != [STALL_REPLY]:
                    problems.append(f"{call.call_sid} ({kind}): the caller heard {said!r}")
                if kind == "stall":
                    retries += [t.get("tts_retry", 0) for t in record["metrics"]["turns"]]
    finally:
        await rig.close()
    base, stall = quantiles(silences["baseline"]), quantiles(silences["stall"])
    ok = stall["max"] <= SILENCE_MAX_S and not problems
    lines = [
        f"== stall: {calls} calls each way; a 3-sentence reply from a TTS streaming at real "
        f"time (first byte {1000 * FIRST_BYTE_S:.0f} ms), its 2nd sentence stalled",
        "                                                 p50 /     p99 /     max",
        f"  longest silence inside the reply, no stall  {fmt(base, 's')}",
        f"  longest silence inside the reply, stalled   {fmt(stall, 's')}",
        f"  ratio stalled / baseline (p50, >= 1 frame)  "
        f"{stall['p50'] / max(base['p50'], 0.02):.1f}",
        f"  tts_retry per stalled turn                  {sorted(set(retries))}",
        f"  {'PASS' if stall['max'] <= SILENCE_MAX_S else 'FAIL'}  longest silence with a "
        f"stalled sentence <= {SILENCE_MAX_S:g} s (max over the calls)",
    ]
    return ok, lines + [f"  PROBLEM {p}" for p in problems[:10]]


def fmt(q: dict[str, float], unit: str = "ms") -> str:
    if unit == "s":
        return f"{q['p50']:7.3f} / {q['p99']:7.3f} / {q['max']:7.3f} s"
    return f"{q['p50']:7.2f} / {q['p99']:7.2f} / {q['max']:7.2f} ms"


async def run(args: argparse.Namespace) -> bool:
    """The reply modes asked for in `args.mode`; prints their reports."""
    import logging

    logging.basicConfig(level=logging.ERROR)
    ok = True
    if "sentences" in args.mode:
        print("-- sentences: starting", flush=True)
        passed, lines = await sentences_mode(args.reply_calls, args.lookup)
        print("\n".join(lines) + "\n", flush=True)
        ok &= passed
    if "stall" in args.mode:
        print("-- stall: starting", flush=True)
        passed, lines = await stall_mode(args.reply_calls)
        print("\n".join(lines) + "\n", flush=True)
        ok &= passed
    return ok
