"""The call simulator: a real call to your app through the fake phone network, offline.

The app's own `Patter` is rewired to a `FakeTwilio` on 127.0.0.1 (credentials, REST base
URL, public hostname), so the call takes the real Twilio path: a signed webhook, TwiML, the
media socket, μ-law at real time. The caller's side is scripted: sentences spoken by LocalTTS,
or a WAV. The result has the transcript, each turn's latency and a stereo recording.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import os
import sys
import time
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from getpatter.core.audio import pcm16_array, ulaw_decode
from getpatter.errors import PatterConfigError
from getpatter.testing.twilio import FakeCall, FakeTwilio

PUBLIC_HOST = "simulated.getpatter.test"
CALLER = "+15557654321"
SILENCE_LEVEL = 300  # int16 amplitude below which audio counts as silence


@dataclass
class CallerTurn:
    """One thing the caller says: after the agent's reply, or over it (`barge`)."""

    text: str = ""
    audio: np.ndarray | None = None  # int16 at 8 kHz; spoken by LocalTTS from `text` if None
    barge: bool = False


@dataclass
class TurnResult:
    caller_text: str
    speech_end: float  # loop time the caller's last voiced sample left the phone
    first_reply_audio: float | None  # loop time the agent's next audio reached the phone

    @property
    def latency(self) -> float | None:
        if self.first_reply_audio is None:
            return None
        return self.first_reply_audio - self.speech_end


@dataclass
class Simulation:
    turns: list[TurnResult] = field(default_factory=list)
    transcript: list[dict[str, Any]] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    wav_path: str | None = None
    call: FakeCall | None = None
    dashboard_url: str = ""


# --- loading the app -----------------------------------------------------------------------


def load_app(spec: str) -> tuple[Any, Any, dict[str, Any]]:
    """`module:attr` or `path/to/file.py:attr` → (phone, agent, serve kwargs).

    `attr` may be a factory; it may give `(phone, agent)`, `(phone, agent, serve_kwargs)` or
    an object with `phone`, `agent` and optionally `serve_kwargs` attributes.
    """
    target, _, attr = spec.partition(":")
    if not attr:
        raise PatterConfigError(f"APP must be 'module:attr' or 'file.py:attr', got {spec!r}")
    if target.endswith(".py"):
        path = Path(target).resolve()
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        if module_spec is None or module_spec.loader is None:
            raise PatterConfigError(f"cannot load {target}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[path.stem] = module
        module_spec.loader.exec_module(module)
    else:
        sys.path.insert(0, os.getcwd())
        module = importlib.import_module(target)
    app = getattr(module, attr)
    if callable(app) and not hasattr(app, "serve"):
        app = app()
    if isinstance(app, tuple):
        phone, agent, *rest = app
        return phone, agent, dict(rest[0]) if rest else {}
    return app.phone, app.agent, dict(getattr(app, "serve_kwargs", {}) or {})


def ensure_placeholder_credentials() -> None:
    """So an app that builds `Twilio()` from the environment loads without real keys."""
    os.environ.setdefault("TWILIO_ACCOUNT_SID", "AC" + "0" * 32)
    os.environ.setdefault("TWILIO_AUTH_TOKEN", "simulated")


# --- the caller's voice --------------------------------------------------------------------


async def speak(text: str, rate_wpm: int = 150) -> np.ndarray:
    """The caller's line, spoken by LocalTTS at telephone rate."""
    from getpatter.plugins.local.tts import LocalTTS

    tts = LocalTTS(rate_wpm=rate_wpm, sample_rate=8000, encoding="pcm16")
    stream = await tts.open()
    try:
        chunks = [chunk async for chunk in stream.synthesize(text)]
    finally:
        await stream.aclose()
    return pcm16_array(b"".join(chunks))


def read_wav(path: str) -> np.ndarray:
    with wave.open(path) as w:
        if w.getsampwidth() != 2:
            raise PatterConfigError(f"{path}: only 16-bit PCM WAV files are supported")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        if w.getnchannels() > 1:
            data = data.reshape(-1, w.getnchannels())[:, 0]
        rate = w.getframerate()
    if rate != 8000:
        import soxr

        data = soxr.resample(data.astype(np.float32), rate, 8000).astype(np.int16)
    return data.astype(np.int16)


# --- watching the line ---------------------------------------------------------------------


def agent_media_times(call: FakeCall) -> list[float]:
    return [t for t, event, _ in call.received if event == "media"]


def agent_quiet_for(call: FakeCall, seconds: float, now: float) -> bool:
    times = agent_media_times(call)
    # the app sends ~100 ms ahead of what plays, so the line goes quiet a little after
    return not times or now - times[-1] >= seconds + 0.1


async def wait_until(pred: Callable[[], bool], limit: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return False


def _frames_sent(call: FakeCall) -> int:
    return sum(1 for _, event, _ in call.sent if event == "media")


def _voiced_end(audio: np.ndarray) -> float:
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > SILENCE_LEVEL)
    return (int(loud[-1]) + 1) / 8000 if len(loud) else 0.0


# --- the recording -------------------------------------------------------------------------


def stereo_recording(call: FakeCall, path: str) -> str:
    """Caller left, agent right, on one timeline (what each side sent, as the line played it)."""
    t0 = min([t for t, _, _ in call.sent] + [t for t, _, _ in call.received] or [0.0])
    caller = [
        (t, ulaw_decode(_b64(msg["media"]["payload"])))
        for t, event, msg in call.sent
        if event == "media"
    ]
    agent: list[tuple[float, np.ndarray]] = []
    buffer_end = 0.0
    for t, event, msg in call.received:
        if event == "media":
            samples = ulaw_decode(_b64(msg.get("media", {}).get("payload", "")))
            start = max(t, buffer_end)
            agent.append((start, samples))
            buffer_end = start + len(samples) / 8000
        elif event == "clear":
            agent = [(s, a[: max(0, int((t - s) * 8000))]) for s, a in agent]
            buffer_end = t
    end = max([s + len(a) / 8000 for s, a in caller + agent] or [t0])
    n = int((end - t0) * 8000) + 1
    left, right = np.zeros(n, np.int16), np.zeros(n, np.int16)
    for track, parts in ((left, caller), (right, agent)):
        for start, audio in parts:
            i = round((start - t0) * 8000)
            track[i : i + len(audio)] = audio[: max(0, n - i)]
    with wave.open(path, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.column_stack([left, right]).astype("<i2").tobytes())
    return path


def _b64(text: str) -> bytes:
    import base64

    return base64.b64decode(text) if text else b""


# --- the run -------------------------------------------------------------------------------


async def simulate(
    phone: Any,
    agent: Any,
    turns: Sequence[CallerTurn],
    *,
    serve_kwargs: dict[str, Any] | None = None,
    wav_out: str | None = None,
    outbound: bool = False,
    answered_by: str = "human",
    barge_delay: float = 1.0,
    quiet_s: float = 0.8,
    turn_timeout: float = 20.0,
    printer: Callable[[str], None] | None = print,
) -> Simulation:
    """Place one call to the app through the fake network and play the caller's turns."""
    say = printer or (lambda _line: None)
    result = Simulation()
    serve_kwargs = dict(serve_kwargs or {})
    user_on_transcript = serve_kwargs.pop("on_transcript", None)
    user_on_call_end = serve_kwargs.pop("on_call_end", None)
    ended = asyncio.Event()
    t_start = time.monotonic()

    async def on_transcript(event: dict[str, Any]) -> None:
        result.transcript.append(event)
        who = "agent " if event["role"] == "assistant" else "caller"
        cut = "  (interrupted)" if event.get("interrupted") else ""
        say(f"  {time.monotonic() - t_start:6.2f}s  [{who}] {event['text']}{cut}")
        if user_on_transcript is not None:
            out = user_on_transcript(event)
            if inspect.isawaitable(out):
                await out

    async def on_call_end(event: dict[str, Any]) -> None:
        result.record = event
        ended.set()
        if user_on_call_end is not None:
            out = user_on_call_end(event)
            if inspect.isawaitable(out):
                await out

    audios = [t.audio if t.audio is not None else await speak(t.text) for t in turns]
    async with FakeTwilio() as net:
        cfg = phone.config
        if cfg.telephony_provider != "twilio":
            raise PatterConfigError("the simulator speaks Twilio; build the app with Twilio()")
        cfg.twilio_sid, cfg.twilio_token = net.account_sid, net.auth_token
        cfg.twilio_base_url, cfg.webhook_url = net.base_url, PUBLIC_HOST
        net.add_number(cfg.phone_number, voice_url=f"https://{PUBLIC_HOST}/webhooks/twilio/voice")
        serving = asyncio.create_task(
            phone.serve(
                agent,
                port=0,
                host="127.0.0.1",
                on_transcript=on_transcript,
                on_call_end=on_call_end,
                **serve_kwargs,
            )
        )
        try:
            await asyncio.wait_for(phone.ready, 10)
            net.route(PUBLIC_HOST, f"127.0.0.1:{phone.port}")
            if serve_kwargs.get("dashboard", True):
                result.dashboard_url = f"http://127.0.0.1:{phone.port}/dashboard"
                say(f"  dashboard while the call runs: {result.dashboard_url}")
            call = await _connect(net, phone, agent, cfg.phone_number, outbound, answered_by)
            result.call = call
            loop = asyncio.get_running_loop()
            # let a greeting start before judging the line quiet
            await wait_until(lambda: bool(agent_media_times(call)), 3.0)
            for turn, audio in zip(turns, audios, strict=True):
                if turn.barge:
                    await wait_until(
                        lambda: (
                            bool(agent_media_times(call))
                            and not agent_quiet_for(call, 0.2, loop.time())
                        ),
                        turn_timeout,
                    )
                    await asyncio.sleep(barge_delay)
                else:
                    await wait_until(
                        lambda: agent_quiet_for(call, quiet_s, loop.time()), turn_timeout
                    )
                first_frame = _frames_sent(call)
                await call.send_audio(audio)
                frames = (len(audio) + 159) // 160
                voiced_end = _voiced_end(audio)
                target = first_frame + frames
                await wait_until(
                    lambda target=target: _frames_sent(call) >= target,  # type: ignore[misc]
                    len(audio) / 8000 + 5,
                )
                sent = [t for t, e, _ in call.sent if e == "media"]
                speech_end = sent[min(first_frame, len(sent) - 1)] + voiced_end
                result.turns.append(TurnResult(turn.text or "<audio>", speech_end, None))
                # the agent's answer has to start before the caller goes on
                await wait_until(
                    lambda end=speech_end: any(t > end for t in agent_media_times(call)),  # type: ignore[misc]
                    turn_timeout,
                )
            await wait_until(lambda: agent_quiet_for(call, quiet_s, loop.time()), turn_timeout)
            if not call.ended:
                await call.hangup()
            await asyncio.wait_for(ended.wait(), 10)
        finally:
            await phone.disconnect()
            await asyncio.gather(serving, return_exceptions=True)
        media = agent_media_times(call)
        for tr in result.turns:
            tr.first_reply_audio = next((t for t in media if t > tr.speech_end), None)
        if wav_out:
            result.wav_path = stereo_recording(call, wav_out)
    return result


async def _connect(
    net: FakeTwilio, phone: Any, agent: Any, number: str, outbound: bool, answered_by: str
) -> FakeCall:
    if not outbound:
        return await net.place_call(from_=CALLER, to=number)
    callee = "+15550009876"
    net.set_callee(callee, answer="machine" if answered_by == "machine" else "human")
    placed = await phone.call(to=callee, agent=agent)
    fake = net.calls[placed.call_id]
    await fake.wait_for(lambda: fake.stream_open or fake.ended, 30)
    return fake


def latency_table(sim: Simulation) -> str:
    lines = ["  turn  caller said                              caller stops → agent audio"]
    for i, tr in enumerate(sim.turns, 1):
        lat = "—" if tr.latency is None else f"{tr.latency * 1000:7.0f} ms"
        lines.append(f"  {i:>4}  {tr.caller_text[:40]:<40} {lat}")
    return "\n".join(lines)
