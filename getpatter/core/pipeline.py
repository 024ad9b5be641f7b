"""The pipeline engine: VAD-gated STT → on_message or LLM → TTS, one `PipelineCall` per call.

Turn-taking: the VAD decides when the caller speaks. Audio is streamed to the STT while they
do (with a little pre-roll), the STT is finalized when the VAD hears them stop, and the turn
is taken on the final transcript. A provider that shows interim results but never sends the
final (it happens on real lines) does not lose the turn: `final_timeout` after the end of
speech the STT is finalized again, and shortly after that the last interim is the turn
(`stt_timeout` in its metrics). A final that comes only later (a stalled socket the STT
reopened) still makes a turn, unless the caller has spoken again.

Caller speech that starts while the agent talks is a barge-in: the reply is cancelled first
(so it can never play again), then the carrier is cleared, then the agent's turn is cut to the
words the caller heard.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from getpatter.core.audio import AudioFrame, pcm16_bytes, ulaw_encode
from getpatter.core.chunker import ChunkerOptions
from getpatter.core.media import InboundAudio
from getpatter.core.metrics import TurnTimes
from getpatter.core.providers import LLM, STT, TTS, STTStream
from getpatter.core.reply import Reply, ReplyTimeout
from getpatter.core.reply_text import ReplyText, static_text
from getpatter.core.resample import Resampler
from getpatter.core.vad import VADOptions, VADProvider, WebRTCVAD, resolve_vad
from getpatter.errors import PatterConfigError

if TYPE_CHECKING:
    from getpatter.agent import Agent
    from getpatter.core.session import CallSession
    from getpatter.core.tools import ToolOutcome

log = logging.getLogger(__name__)

_FINALIZE = object()  # sentinel on the STT send queue: finalize the utterance


@dataclass(slots=True)
class PipelineOptions:
    barge_in: bool = True
    # Extra caller speech (audio time) required after the VAD's start before a barge-in. The
    # VAD itself already needs ~120 ms of voice in a 200 ms window, which rejects coughs.
    barge_in_guard_ms: float = 0.0
    # From the end of speech to the STT's final: then finalize again, and `final_grace` later
    # take the last interim as the turn.
    final_timeout: float = 1.0
    final_grace: float = 0.25
    preroll_ms: int = 300
    first_token_timeout: float = 10.0
    # Per sentence: with no TTS audio this long after its text, the sentence is asked for once
    # more (the plugin's fallback path), then the reply apologises (see core.synthesis).
    first_audio_timeout: float = 1.5
    # Sentences synthesized ahead of the one playing, so the next one's audio is there when
    # this one ends (no first-byte wait at the boundary). Each is billed even when a barge-in
    # cuts the reply before it: 1 covers any TTS that streams at least at real time. 0: one
    # sentence at a time.
    tts_lookahead: int = 1
    # Mid-sentence: once its audio has started, a sentence whose TTS sends nothing more for
    # this long (and the caller has heard all it did send) is given up, cut to what was
    # heard, and the reply goes on with its next sentence (see core.reply). None: no limit.
    audio_gap_timeout: float | None = 1.0
    max_tool_rounds: int = 5
    apology: str = "Sorry, I'm having trouble right now. Could you say that again?"
    # Said before hanging up when the STT is lost for good (its provider already tried to
    # reconnect): the agent can still speak but no longer hear.
    hearing_lost: str = (
        "Sorry, I can't hear you any more because of a technical problem. "
        "Please call back in a few minutes. Goodbye."
    )
    vad: VADOptions = field(default_factory=VADOptions)
    chunker: ChunkerOptions = field(default_factory=ChunkerOptions)


class PipelineEngine:
    """Agent-level pipeline config: the STT, TTS and (optional) LLM every call will use."""

    def __init__(
        self,
        stt: STT,
        tts: TTS,
        llm: LLM | None = None,
        options: PipelineOptions | None = None,
        vad: VADProvider | None = None,
    ) -> None:
        for name, value, proto in (("stt", stt, STT), ("tts", tts, TTS)):
            if not isinstance(value, proto):
                raise PatterConfigError(
                    f"{name}={type(value).__name__}(...) does not implement the {name.upper()} "
                    "protocol (see getpatter.core.providers)"
                )
        if llm is not None and not isinstance(llm, LLM):
            raise PatterConfigError(f"llm={type(llm).__name__}(...) has no chat() method")
        self.stt, self.tts, self.llm = stt, tts, llm
        self.options = options or PipelineOptions()
        # turn-taking and barge-in: the agent's VAD, else webrtcvad tuned by options.vad
        self.vad: VADProvider = vad if vad is not None else WebRTCVAD(self.options.vad)

    @classmethod
    def for_agent(
        cls,
        agent: Agent,
        options: PipelineOptions | None = None,
        keys: Mapping[str, str] | None = None,
    ) -> PipelineEngine:
        """Resolve the agent's providers (instances or registered names; `local` by default).

        `keys` maps an environment variable to its key (the server passes LocalConfig's, e.g.
        RIME_API_KEY → `config.rime_key`): a provider named by the agent gets the key of the
        variable its plugin declares, so the app's config, not only the environment, is used.
        """
        stt = _by_name("stt", agent.stt if agent.stt is not None else "local", keys)
        tts = _by_name("tts", agent.tts if agent.tts is not None else "local", keys)
        llm = _by_name("llm", agent.llm, keys) if agent.llm is not None else None
        vad = resolve_vad(agent.vad, options.vad if options is not None else None)
        return cls(stt, tts, llm, options, vad)

    def open(self, call: CallSession) -> PipelineCall:
        return PipelineCall(self, call)


def _by_name(kind: str, value: object, keys: Mapping[str, str] | None) -> Any:
    """A provider instance as is; a name built from the registry, with its key from `keys`."""
    from getpatter.core.registry import default_registry, resolve

    if isinstance(value, str) and keys:
        spec = default_registry().get(kind, value)
        key = next((keys[env] for env in spec.env if keys.get(env)), "")
        if key and "api_key" in inspect.signature(spec.load()).parameters:
            return resolve(kind, value, api_key=key)
    return resolve(kind, value)


class PipelineCall:
    """One call's conversation loop."""

    reports_turns = True  # it times its own turns (the session need not guess them)

    def __init__(self, engine: PipelineEngine, call: CallSession) -> None:
        self.engine = engine
        self.call = call
        self.options = opts = engine.options
        self.vad = engine.vad.create(8000)
        self.history: list[dict[str, Any]] = []
        self.stt_stream: STTStream | None = None
        self.tts_stream: Any = None
        self._send_q: asyncio.Queue[bytes | object] = asyncio.Queue()
        self._preroll: deque[bytes] = deque(maxlen=max(1, opts.preroll_ms // 20))
        self._gate_open = False
        stt = engine.stt
        self._stt_ulaw = stt.encoding == "mulaw" and stt.sample_rate == 8000
        self._resampler = None if stt.sample_rate == 8000 else Resampler(8000, stt.sample_rate)
        self._finals: list[str] = []
        self._interim = ""  # the latest interim text since the last final
        self._late_finals_stale = False  # the turn took an interim: its late final is a dupe
        self._orphaned = False  # a turn found no text: a late final makes it
        self._turn_waiter: asyncio.Task[None] | None = None
        self._final_arrived = asyncio.Event()
        self._reply: Reply | None = None
        self._reply_task: asyncio.Task[None] | None = None
        self._barge_at: float | None = None
        self._speech_end_at: float | None = None  # loop time of the VAD's end of speech
        self._caller_stopped_at: float | None = None  # loop time of their last voiced audio
        self._onset_at: float | None = None  # loop time the caller's speech began
        self._stt_bytes_per_s = stt.sample_rate * (1 if stt.encoding == "mulaw" else 2)
        self._replies = 0
        self._pending_action: ToolOutcome | None = None
        self._texts = ReplyText(
            call, self.history, engine.llm, engine.options.max_tool_rounds, self._act_later
        )
        self._barging = False
        self._deaf = False  # the STT is lost: saying goodbye
        self._closing = False
        self.turns: list[dict[str, Any]] = []

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        agent = self.call.agent
        self.stt_stream = await self.engine.stt.open(language=agent.language)
        self.tts_stream = await self.engine.tts.open()
        self.call.spawn(self._send_audio(), "stt-send")
        self.call.spawn(self._read_transcripts(), "stt-read")
        if self.call.first_message:
            self._start_reply(None, static_text(self.call.first_message))

    async def aclose(self) -> None:
        self._closing = True
        if self._reply is not None:  # hung up during a reply: its turn ends here
            self._complete_turn(self._reply, interrupted=False)
        for closer in (self.stt_stream, self.tts_stream):
            if closer is not None:
                try:
                    await closer.aclose()
                except Exception as exc:
                    log.warning("call %s: provider close failed: %r", self.call.call_id, exc)

    # --- caller audio --------------------------------------------------------------------

    def push_audio(self, audio: InboundAudio) -> None:
        frame = audio.frame
        # once the STT is lost nothing takes this audio: don't convert it or queue it
        payload = b"" if self._deaf else self._stt_payload(audio, frame)
        if self._gate_open and payload:
            self._send_q.put_nowait(payload)
        elif payload:
            self._preroll.append(payload)
        for event in self.vad.process(frame):
            # the VAD decides a little after the fact: map its audio time to loop time
            at = asyncio.get_running_loop().time() - max(0.0, frame.end - event.timestamp)
            if event.kind == "speech_started":
                self._onset_at = at
                self._late_finals_stale = self._orphaned = False
                self._gate_open = True
                while self._preroll:
                    self._send_q.put_nowait(self._preroll.popleft())
                if self._should_barge():
                    self._barge_at = event.timestamp + self.options.barge_in_guard_ms / 1000
            else:
                self._gate_open = False
                self._barge_at = None
                self._send_q.put_nowait(_FINALIZE)
                self._speech_end_at = asyncio.get_running_loop().time()
                self._caller_stopped_at = at
                self._await_turn()
        if self._barge_at is None and self.vad.speaking and self._should_barge():
            # the agent started talking while the caller still is: don't talk over them
            self._barge_at = frame.end + self.options.barge_in_guard_ms / 1000
        if self._barge_at is not None and self.vad.speaking and frame.end >= self._barge_at:
            self._barge_at = None
            if self.agent_speaking and not self._barging:
                self._barging = True  # a burst of buffered frames must not barge in twice
                self.call.spawn(self.barge_in(), "barge-in")

    def _stt_payload(self, audio: InboundAudio, frame: AudioFrame) -> bytes:
        if self._stt_ulaw:
            return audio.payload
        if self._resampler is not None:
            frame = self._resampler.process(frame)
        if self.engine.stt.encoding == "mulaw":
            return ulaw_encode(frame.samples)
        return pcm16_bytes(frame.samples)

    async def _send_audio(self) -> None:
        assert self.stt_stream is not None
        try:
            while True:
                payload = await self._send_q.get()
                if payload is _FINALIZE:
                    await self.stt_stream.finalize()
                elif isinstance(payload, bytes):
                    self.call.metrics.add_stt_audio(len(payload) / self._stt_bytes_per_s)
                    await self.stt_stream.send(payload)
        except Exception as exc:
            self._hearing_lost(exc)

    async def _read_transcripts(self) -> None:
        assert self.stt_stream is not None
        try:
            async for transcript in self.stt_stream.transcripts():
                self._on_transcript(transcript.text.strip(), transcript.is_final)
        except Exception as exc:
            self._hearing_lost(exc)
            return
        self._hearing_lost(None)  # the stream ended on its own, the call did not

    def _on_transcript(self, text: str, is_final: bool) -> None:
        if not text:
            return
        if not is_final:
            if not self._late_finals_stale:
                self._interim = text
            return
        self._interim = ""
        if self._late_finals_stale:
            log.info("call %s: a late final after the turn was taken; dropped", self.call.call_id)
            return
        self._finals.append(text)
        self._final_arrived.set()
        if self._orphaned and not self.vad.speaking:
            self._orphaned = False
            self._await_turn()

    def _hearing_lost(self, exc: BaseException | None) -> None:
        """The STT is gone for good (its provider reconnects by itself first). The agent can
        still speak, so it says so and hangs up, instead of the line going dead."""
        if self._deaf or self._closing or self.call.state == "ended":
            return
        self._deaf = True
        why = repr(exc) if exc is not None else "the transcript stream ended"
        log.error("call %s: speech recognition lost (%s); saying goodbye", self.call.call_id, why)
        self.call.event("error", where="stt", error=why)
        self.call.spawn(self._say_goodbye(), "goodbye")

    async def _say_goodbye(self) -> None:
        previous = self._reply_task
        if previous is not None and not previous.done():  # let the answer in progress finish
            await asyncio.wait([previous], timeout=30)
        text = self.options.hearing_lost
        self._start_reply(None, static_text(text))
        reply, task = self._reply, self._reply_task
        assert reply is not None and task is not None
        await asyncio.wait([task], timeout=30 + len(text) * 0.1)
        if reply.first_audio_at is None:  # the TTS failed too: the carrier's voice says it
            await self.call.hangup("stt_failed", goodbye=text)
        else:
            await self.call.hangup("stt_failed")

    # --- turns ---------------------------------------------------------------------------

    def _await_turn(self) -> None:
        if self._turn_waiter is None or self._turn_waiter.done():
            self._turn_waiter = self.call.spawn(self._take_turn(), "turn")

    async def _take_turn(self) -> None:
        """End of speech: wait (bounded) for the STT's final transcript, then answer it."""
        timed_out = False
        if not self._finals:
            self._final_arrived.clear()
            if not await self._final_within(self.options.final_timeout):
                self._send_q.put_nowait(_FINALIZE)  # ask again, where the provider can
                if not await self._final_within(self.options.final_grace):
                    if not self._interim:
                        log.info("call %s: no transcript for that speech yet", self.call.call_id)
                        self._orphaned = True
                        return
                    log.warning(
                        "call %s: no final transcript %.2fs after the end of speech; "
                        "taking the last interim",
                        self.call.call_id,
                        self.options.final_timeout + self.options.final_grace,
                    )
                    self._finals.append(self._interim)
                    self._interim = ""
                    self._late_finals_stale = timed_out = True
        final_at = asyncio.get_running_loop().time()
        text, self._finals = " ".join(self._finals), []
        await self._user_turn(text, final_at=final_at, stt_timeout=timed_out)

    async def _final_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._final_arrived.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _user_turn(
        self, text: str, *, final_at: float, dtmf: str = "", stt_timeout: bool = False
    ) -> None:
        self.history.append({"role": "user", "content": text})
        extra = {"dtmf": dtmf} if dtmf else {}
        await self.call.add_transcript("user", text, **extra)
        if self.engine.llm is None and self.call.callbacks.on_message is not None:
            source = self._texts.on_message(text, dtmf)
        elif self.engine.llm is not None:
            source = self._texts.llm_reply()
        else:
            log.error("call %s: pipeline has neither an llm nor on_message", self.call.call_id)
            return
        turn = {
            "final_at": final_at,
            "speech_end_at": None if dtmf else self._speech_end_at,
            "caller_stopped_at": None if dtmf else self._caller_stopped_at,
            "text": text,
            "stt_timeout": stt_timeout,
        }
        self._start_reply(turn, source)

    async def on_dtmf(self, digit: str) -> None:
        if self.agent_speaking:
            await self.barge_in()
        loop = asyncio.get_running_loop()
        text = f"The caller pressed {digit} on the keypad."
        await self._user_turn(text, final_at=loop.time(), dtmf=digit)

    # --- replies -------------------------------------------------------------------------

    def _should_barge(self) -> bool:
        # not over the goodbye when the STT is lost: nothing the caller says can be heard
        return (
            self.options.barge_in and not self._barging and not self._deaf and self.agent_speaking
        )

    @property
    def agent_speaking(self) -> bool:
        reply_running = self._reply_task is not None and not self._reply_task.done()
        playout = self.call.playout
        return reply_running or (playout is not None and playout.busy)

    def _start_reply(self, turn: dict[str, Any] | None, source: AsyncIterator[str]) -> None:
        if self._reply is not None:
            self._reply.cancelled = True
        self._replies += 1
        tts = self.engine.tts
        reply = Reply(
            self.call,
            self.tts_stream,
            tts.sample_rate,
            tts.encoding,
            label=f"reply-{self._replies}",
            chunker=self.options.chunker,
            first_audio_timeout=self.options.first_audio_timeout,
            lookahead=self.options.tts_lookahead,
            audio_gap_timeout=self.options.audio_gap_timeout,
            turn=turn,
        )
        self._reply = reply
        self._reply_task = self.call.spawn(self._run_reply(reply, turn, source), reply.label)

    async def _run_reply(
        self, reply: Reply, turn: dict[str, Any] | None, source: AsyncIterator[str]
    ) -> None:
        self._pending_action = None
        try:
            await reply.speak_stream(source, self.options.first_token_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._apologise(reply, exc)
        if reply.cancelled:  # a newer turn took over before this reply was all spoken
            self._complete_turn(reply, interrupted=True)
            return
        done = reply.finish()
        if turn is not None and reply.first_audio_at is not None:
            self._record_turn(turn, reply)
        heard_all = await done  # a barge-in cancels this task while it waits here
        self._complete_turn(reply, interrupted=not heard_all)
        if reply.text:
            self.history.append({"role": "assistant", "content": reply.text})
            await self.call.add_transcript("assistant", reply.text)
        action = self._pending_action
        if action is not None and heard_all:
            if action.action == "end_call":
                self.call.spawn(self.call.hangup("agent_ended_call"), "end_call")
            elif action.action == "transfer":
                self.call.spawn(self.call.transfer(action.target), "transfer")

    async def _apologise(self, reply: Reply, exc: Exception) -> None:
        kind = "timed out" if isinstance(exc, ReplyTimeout) else f"failed: {exc!r}"
        log.error("call %s: reply %s; apologising", self.call.call_id, kind)
        self.call.event("reply_error", error=repr(exc))
        if reply.cancelled:
            return
        try:
            await reply.speak(self.options.apology)
        except Exception as again:
            log.error("call %s: could not speak the apology either: %r", self.call.call_id, again)

    def _record_turn(self, turn: dict[str, Any], reply: Reply) -> None:
        assert reply.first_audio_at is not None
        latency = {
            "final_to_first_audio": reply.first_audio_at - turn["final_at"],
        }
        if turn.get("speech_end_at") is not None:
            latency["speech_end_to_first_audio"] = reply.first_audio_at - turn["speech_end_at"]
        self.turns.append(latency)
        self.call.event(
            "turn", final_at=turn["final_at"], first_audio_at=reply.first_audio_at, **latency
        )

    def _complete_turn(
        self, reply: Reply, *, interrupted: bool, cleared_at: float | None = None
    ) -> None:
        if reply.turn_done:
            return
        reply.turn_done = True
        turn = reply.turn or {}
        self.call.complete_turn(
            TurnTimes(
                engine="pipeline",
                label=reply.label,
                user_text=turn.get("text", ""),
                agent_text=reply.heard_text() if interrupted else reply.text,
                caller_stopped_at=turn.get("caller_stopped_at"),
                endpointed_at=turn.get("speech_end_at"),
                final_at=turn.get("final_at"),
                text_first_at=reply.text_first_at,
                text_done_at=reply.text_done_at,
                tts_ttfb=reply.tts_ttfb,
                tts_retry=reply.tts_retries,
                tts_gap=reply.tts_gaps,
                first_audio_at=reply.first_audio_at,
                barge_onset_at=self._onset_at if cleared_at is not None else None,
                cleared_at=cleared_at,
                interrupted=interrupted,
                stt_timeout=bool(turn.get("stt_timeout")),
            )
        )

    async def barge_in(self) -> None:
        """Cancel the reply (it never plays again), clear the carrier, keep what was heard."""
        try:
            await self._barge_in()
        finally:
            self._barging = False

    async def _barge_in(self) -> None:
        reply, task = self._reply, self._reply_task
        if reply is None:
            await self.call.clear()
            return
        reply.cancelled = True
        if task is not None and not task.done():
            task.cancel()
        await self.call.clear()
        cleared_at = asyncio.get_running_loop().time()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        self.call.event("barge_in", reply=reply.label)
        self._complete_turn(reply, interrupted=True, cleared_at=cleared_at)
        heard = reply.heard_text()
        if heard:  # the agent's turn, cut to the words the caller actually heard
            self.history.append({"role": "assistant", "content": heard})
            await self.call.add_transcript("assistant", heard, interrupted=True)
        self._reply = None

    def _act_later(self, outcome: ToolOutcome) -> None:
        """A tool ended or transferred the call: carried out once this reply is heard."""
        self._pending_action = outcome
