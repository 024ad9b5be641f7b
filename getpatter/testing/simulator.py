"""The call simulator: a real call to your app through the fake phone network, offline.

The app's own `Patter` is rewired to a `FakeTwilio` on 127.0.0.1 (credentials, REST base
URL, public hostname), so the call takes the real Twilio path: a signed webhook, TwiML, the
media socket, μ-law at real time. The caller's side is scripted: sentences spoken by LocalTTS,
or a WAV. The result has the transcript, each turn's latency and a stereo recording.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import os
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
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
    """`module:attr` or `path/to/file.py:attr` → (phone, agent, serve kwargs); see
    `getpatter.apps.load_app` for what `attr` may be."""
    from getpatter.apps import load_app as load

    app = load(spec)
    return app.phone, app.agent, app.serve_kwargs


#: stand-ins so an app that reads its keys from the environment loads without real ones
PLACEHOLDERS = {
    "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
    "TWILIO_AUTH_TOKEN": "simulated",
}
FAKE_OPENAI_KEY = "sk-getpatter-simulated"


def ensure_placeholder_credentials(*, fake_realtime: bool = False) -> None:
    """So an app that builds `Twilio()` (and, for `--fake-realtime`, `OpenAIRealtime()`) from
    the environment loads without real keys."""
    for name, value in PLACEHOLDERS.items():
        os.environ.setdefault(name, value)
    if fake_realtime:
        os.environ.setdefault("OPENAI_API_KEY", FAKE_OPENAI_KEY)


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
    keep_history: bool = False,
    fake_realtime: bool | Any = False,
    after_call: Callable[[Simulation], Awaitable[None]] | None = None,
) -> Simulation:
    """Place one call to the app through the fake network and play the caller's turns.

    The call is kept out of the app's call history (an in-memory store) unless
    `keep_history`. `fake_realtime` runs an `OpenAIRealtime` agent against the fake model of
    `getpatter.testing.openai_realtime` instead of OpenAI: True for one that echoes each turn,
    or a running `FakeRealtime` with your own script (its api_key is used).
    `after_call(result)` runs once the call has ended, while the server (and its dashboard)
    is still up.
    """
    say = printer or (lambda _line: None)
    result = Simulation()
    serve_kwargs = dict(serve_kwargs or {})
    user_on_transcript = serve_kwargs.pop("on_transcript", None)
    user_on_call_end = serve_kwargs.pop("on_call_end", None)
    ended = asyncio.Event()
    t_start = time.monotonic()

    def stamp() -> str:
        return f"  {time.monotonic() - t_start:6.2f}s"

    async def on_transcript(event: dict[str, Any]) -> None:
        result.transcript.append(event)
        who = "agent " if event["role"] == "assistant" else "caller"
        cut = "  (interrupted)" if event.get("interrupted") else ""
        say(f"{stamp()}  [{who}] {event['text']}{cut}")
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
    async with contextlib.AsyncExitStack() as stack:
        if fake_realtime is True:
            agent = await stack.enter_async_context(_fake_model(agent, turns))
        elif fake_realtime:
            agent = _on_fake_model(agent, fake_realtime)
        net = await stack.enter_async_context(FakeTwilio())
        cfg = phone.config
        if cfg.telephony_provider != "twilio":
            # the agent is what is being tried: its calls take Twilio's path here
            say(f"  (a {cfg.telephony_provider.capitalize()} app: simulated over Twilio's path)")
            cfg.telephony_provider = "twilio"
        cfg.twilio_sid, cfg.twilio_token = net.account_sid, net.auth_token
        cfg.twilio_base_url, cfg.webhook_url = net.base_url, PUBLIC_HOST
        if not keep_history:
            cfg.persist_root = None  # a simulated call is not one of the app's real calls
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
        watching: asyncio.Task[None] | None = None
        try:
            await asyncio.wait_for(phone.ready, 10)
            watching = asyncio.create_task(_watch_tools(phone, say, stamp))
            net.route(PUBLIC_HOST, f"127.0.0.1:{phone.port}")
            if serve_kwargs.get("dashboard", True):
                result.dashboard_url = f"http://127.0.0.1:{phone.port}/dashboard"
                say(f"  dashboard while the call runs: {result.dashboard_url}")
            call = await _connect(net, phone, agent, cfg.phone_number, outbound, answered_by)
            result.call = call
            # an agent with a greeting speaks first: give its engine time to come up
            greeting = 3.0 if not getattr(agent, "first_message", "") else turn_timeout
            await wait_until(lambda: bool(agent_media_times(call)), greeting)
            await _play_turns(call, turns, audios, result, barge_delay, quiet_s, turn_timeout)
            if not call.ended:
                await call.hangup()
            await asyncio.wait_for(ended.wait(), 10)
            media = agent_media_times(call)
            for tr in result.turns:
                tr.first_reply_audio = next((t for t in media if t > tr.speech_end), None)
            if wav_out:
                result.wav_path = stereo_recording(call, wav_out)
            if after_call is not None:
                await after_call(result)
        finally:
            if watching is not None:
                watching.cancel()
            await phone.disconnect()
            await asyncio.gather(serving, return_exceptions=True)
    return result


async def _play_turns(
    call: FakeCall,
    turns: Sequence[CallerTurn],
    audios: list[np.ndarray],
    result: Simulation,
    barge_delay: float,
    quiet_s: float,
    turn_timeout: float,
) -> None:
    loop = asyncio.get_running_loop()
    for turn, audio in zip(turns, audios, strict=True):
        if turn.barge:
            await wait_until(
                lambda: (
                    bool(agent_media_times(call)) and not agent_quiet_for(call, 0.2, loop.time())
                ),
                turn_timeout,
            )
            await asyncio.sleep(barge_delay)
        else:
            await wait_until(lambda: agent_quiet_for(call, quiet_s, loop.time()), turn_timeout)
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


# --- what the agent's tools did ------------------------------------------------------------


def tool_line(event: dict[str, Any]) -> str:
    """`[tool]   schedule_appointment(date='tomorrow', time='10:00') → confirmation='ACME-123'`."""
    args = _loads(event.get("arguments", ""))
    if isinstance(args, dict):
        shown_args = ", ".join(f"{k}={v!r}" for k, v in args.items())
    else:
        shown_args = "" if args in ("", None) else repr(args)
    out = _loads(event.get("result", ""))
    if isinstance(out, dict):
        shown = ", ".join(f"{k}={v!r}" for k, v in out.items())
    else:
        shown = repr(out) if isinstance(out, str) else json.dumps(out)
    mark = "→" if event.get("ok", True) else "✗"
    return f"[tool]   {event.get('name', '?')}({shown_args}) {mark} {shown}"


def _loads(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


async def _watch_tools(phone: Any, say: Callable[[str], None], stamp: Callable[[], str]) -> None:
    """Print each tool call of the app's calls as it happens (from the calls' event logs)."""
    seen: dict[int, int] = {}
    while True:
        server = phone.server
        for session in list(server.sessions.values()) if server is not None else []:
            events = session.events
            start = seen.get(id(session), 0)
            for event in events[start:]:
                if event.get("kind") == "tool":
                    say(f"{stamp()}  {tool_line(event)}")
            seen[id(session)] = len(events)
        await asyncio.sleep(0.05)


# --- the fake model ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _fake_model(agent: Any, turns: Sequence[CallerTurn]) -> AsyncIterator[Any]:
    """The agent, its `OpenAIRealtime` engine pointed at the offline fake model, which
    transcribes each caller turn as its script says and answers with a fixed sentence."""
    from getpatter.testing.openai_realtime import FakeRealtime

    _on_fake_model(agent, None)  # the agent must be a realtime one: fail before starting
    heard = [t.text or "something" for t in turns]
    replies = [f"This is the offline stand-in for the model. You said: {text}" for text in heard]
    async with FakeRealtime(
        api_key=FAKE_OPENAI_KEY,
        transcripts=heard,
        responses=replies,
        audio_speed=1.0,
        default_reply="This is the offline stand-in for the model.",
    ) as fake:
        yield _on_fake_model(agent, fake)


def _on_fake_model(agent: Any, fake: Any) -> Any:
    """`agent` with its `OpenAIRealtime` engine talking to `fake` (a `FakeRealtime`)."""
    from getpatter.plugins.openai.realtime import OpenAIRealtime

    engine = getattr(agent, "engine", None)
    if not isinstance(engine, OpenAIRealtime):
        raise PatterConfigError(
            "--fake-realtime runs an OpenAIRealtime agent against a fake model; this app's "
            f"agent has {'no engine' if engine is None else type(engine).__name__}"
        )
    if fake is None:
        return agent
    stand_in = dataclasses.replace(
        engine, api_key=fake.api_key, base_url=fake.base_url, websocket_base_url=fake.ws_url
    )
    return agent.replace(engine=stand_in)


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
