"""The provider-neutral half of every realtime (speech-to-speech) engine.

A realtime provider writes only its wire format: a `RealtimeWire` (the contract is in
`core/realtime_wire.py`) that opens the model's socket, sends what `RealtimeCall` asks for
(caller audio, "respond", "cancel", "truncate", tool results) in the provider's own messages,
and translates what the model sends into `RealtimeEvent`s. Everything a caller would notice
lives here, once, for every provider:

- Each agent audio item is one utterance on the call's playout (`begin_utterance(item_id)` …
  `play(audio)` … `end_utterance(item_id)`), so the session knows how much of it was heard.
- Barge-in, whichever hears the caller first: our VAD (`on_caller_speech`) or the model's
  (`CallerSpeechStarted`). The agent stops where the caller stopped hearing it: the carrier's
  buffer is cleared, the reply in flight is cancelled, the model is told how much was heard
  (`truncate`), and the transcript records only the heard part (`interrupted=True`).
- Guardrails screen the agent's words as they stream in, through `core.guardrails.screen`,
  the pipeline's policy too: a guardrail whose check raises counts as violated (fail closed).
  A violation stops the reply and has the model say the guardrail's replacement.
- Tool calls run through `core.tools`; their results go back once the response that asked
  for them is done; `end_call` / `transfer_call` act once the speech in progress has played.
- A key press is a turn of its own: the agent stops, the model is told in words.
- A socket that drops mid-call is reopened as a new session whose instructions carry the
  conversation so far, after a backoff that grows with the drops of the last minute; more
  than `RECONNECTS_PER_MINUTE` drops in a minute, or a reconnect that fails, and the carrier
  says the engine's `failure_message` in its own voice and hangs up (reason `engine_failed`):
  the model that would have apologised is the thing that is gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from getpatter.core.frame import AudioFrame
from getpatter.core.guardrails import screen
from getpatter.core.media import InboundAudio
from getpatter.core.realtime_wire import (
    AgentAudio,
    AgentAudioDone,
    AgentText,
    AgentTextDone,
    CallerSpeechStarted,
    CallerText,
    EventHandler,
    ModelError,
    RealtimeEngine,
    RealtimeEvent,
    RealtimeWire,
    ResponseDone,
    ResponseStarted,
    SessionSetup,
    ToolCallRequested,
    ToolResult,
    Usage,
)
from getpatter.core.tools import ToolOutcome, run_tool, tool_schemas
from getpatter.errors import PatterConnectionError, ProviderError

if TYPE_CHECKING:
    import aiohttp

    from getpatter.agent import Guardrail
    from getpatter.core.session import CallSession

log = logging.getLogger(__name__)

RECONNECTS_PER_MINUTE: Final = 5  # socket drops survived in any 60 s; one more ends the call
RECONNECT_WINDOW: Final = 60.0
BACKOFF: Final = (0.0, 0.5, 1.0, 2.0, 4.0)  # delay before reopening, by drops in the window


def say_exactly(text: str) -> str:
    """Instructions that make a model speak `text` verbatim."""
    return f'Say exactly the following, word for word, and nothing else: "{text}"'


def cut_to_heard(text: str, fraction: float) -> str:
    """The start of `text` the caller heard, ending on a word boundary."""
    if fraction >= 0.98:
        return text
    if fraction <= 0:
        return ""
    n = int(len(text) * fraction)
    if 0 < n < len(text) and text[n].isalnum() and text[n - 1].isalnum():  # mid-word
        cut = text.rfind(" ", 0, n)
        n = cut if cut > 0 else n
    return text[:n].rstrip(" ,;:")


# --- the engine call ---------------------------------------------------------------------------


@dataclass
class _Utterance:
    """One agent audio item, from its first audio until the caller heard it (or not)."""

    item_id: str
    response_id: str
    link: int
    scripted: bool
    text: str = ""  # transcript so far
    final_text: str | None = None
    audio_ms: float = 0.0
    begun: bool = False
    done: asyncio.Future[bool] | None = None
    played: bool = False  # heard in full
    interrupted: bool = False
    blocked: bool = False
    recorded: bool = False

    @property
    def settled(self) -> bool:
        """Nothing of it is left to play."""
        return self.interrupted or self.blocked or self.played

    @property
    def best_text(self) -> str:
        return self.final_text if self.final_text is not None else self.text


@dataclass
class _Response:
    id: str
    scripted: bool
    tools: list[tuple[str, str, asyncio.Task[ToolOutcome]]] = field(default_factory=list)


def _audio_ms(audio: bytes | AudioFrame) -> float:
    if isinstance(audio, AudioFrame):
        return len(audio.samples) * 1000 / audio.sample_rate
    return len(audio) / 8  # μ-law, 8 kHz: one byte a sample


class RealtimeCall:
    """One call on a realtime engine (an `EngineCall`), whatever the provider."""

    def __init__(self, engine: RealtimeEngine, call: CallSession) -> None:
        self.engine = engine
        self.call = call
        self.agent = call.agent
        self.usage: list[dict[str, Any]] = []
        self.reconnects = 0
        self._wire = engine.wire(call, self._handle)
        self._drops: deque[float] = deque()  # loop times of the drops in the last minute
        self._closing = False
        self._active_response: str | None = None
        self._responses: dict[str, _Response] = {}
        self._utterances: dict[str, _Utterance] = {}
        self._dropped_items: set[str] = set()
        self._dropped_responses: set[str] = set()
        self._http: aiohttp.ClientSession | None = None

    # --- EngineCall ----------------------------------------------------------------------

    async def start(self) -> None:
        self.call.spawn(self._run(), self.engine.name)

    def push_audio(self, audio: InboundAudio) -> None:
        if not self._closing:
            self._wire.send_audio(audio)

    def on_caller_speech(self, kind: str, at: float) -> None:
        """The session's VAD heard the caller start or stop talking (after `push_audio`).

        With the model's turn detection on, this is the other half of "whichever is first":
        our VAD usually hears an interruption before the model says so, and the agent stops
        sooner. It only cuts speech that is playing; a response still being thought about is
        the model's own VAD's business. With turn detection off, our VAD is the only one:
        it ends the caller's turns and cancels whatever the model is doing."""
        if self._closing:
            return
        own_turns = not self.engine.server_turns
        if kind == "speech_started" and self.engine.barge_in and (own_turns or self._speaking()):
            self.call.spawn(self._barge_in(), "barge-in")
        if own_turns:
            self._wire.caller_turn(kind)

    def _speaking(self) -> bool:
        """Agent audio is queued or playing."""
        return any(u.begun and not u.settled for u in self._utterances.values())

    async def on_dtmf(self, digit: str) -> None:
        """A key press is a turn of its own, as in the pipeline: the agent stops, the model is
        told in words, and answers."""
        if self._closing:
            return
        await self._barge_in()  # also cancels a reply still being generated
        text = f"The caller pressed {digit} on the keypad."
        await self.call.add_transcript("user", text, dtmf=digit)
        self._wire.add_user_text(text)
        self._wire.respond()

    async def aclose(self) -> None:
        self._closing = True
        try:
            for utt in list(self._utterances.values()):  # speech still playing at hang-up
                if not utt.begun or utt.recorded or utt.interrupted or utt.blocked:
                    continue
                done = utt.done  # cancelled with the task that awaited it, at the call's end
                if done is not None and done.done() and not done.cancelled() and done.result():
                    utt.played = True  # heard in full; only the bookkeeping was cut short
                    await self._maybe_record(utt)
                else:
                    await self._record_heard(utt)
        finally:
            await self._wire.close()
            if self._http is not None:
                await self._http.close()

    # --- connection life -----------------------------------------------------------------

    async def _run(self) -> None:
        if not await self._open():
            return
        if self.call.first_message:
            self._wire.respond(say=self.call.first_message)
        loop = asyncio.get_running_loop()
        while True:
            await self._wire.receive()
            if self._closing:
                return
            now = loop.time()
            while self._drops and now - self._drops[0] > RECONNECT_WINDOW:
                self._drops.popleft()
            if len(self._drops) >= RECONNECTS_PER_MINUTE:
                self._fail(
                    PatterConnectionError(
                        f"the {self.engine.display_name} connection dropped "
                        f"{len(self._drops) + 1} times within a minute"
                    )
                )
                return
            delay = BACKOFF[min(len(self._drops), len(BACKOFF) - 1)]
            self._drops.append(now)
            self.reconnects += 1
            log.warning(
                "call %s: the %s connection dropped; reconnecting%s",
                self.call.call_id,
                self.engine.display_name,
                f" in {delay:g}s" if delay else "",
            )
            self.call.event("engine_reconnect", engine=self.engine.name)
            if delay:
                await asyncio.sleep(delay)
            if not await self._open():
                return
            last = self.call.transcript[-1]["role"] if self.call.transcript else ""
            if last == "user":  # the caller is waiting for an answer
                self._wire.respond()

    async def _open(self) -> bool:
        """A new session (the first, or after a drop); False if the call cannot go on."""
        self._active_response = None
        self._responses.clear()
        resumed = self._wire.number > 0
        instructions = self.call.system_prompt or "You are a helpful voice assistant on a call."
        if resumed:
            instructions += self._history_note()
        setup = SessionSetup(instructions, tool_schemas(self.agent), self.agent.language, resumed)
        try:
            await self._wire.open(setup)
        except (PatterConnectionError, ProviderError) as exc:
            self._fail(exc)
            return False
        return True

    def _fail(self, exc: Exception) -> None:
        log.error(
            "call %s: %s failed (%s: %s); hanging up",
            self.call.call_id,
            self.engine.display_name,
            type(exc).__name__,
            exc,
        )
        self.call.event("error", where=self.engine.name, error=f"{type(exc).__name__}: {exc}")
        if not self._closing and self.call.state != "ended":
            goodbye = self.engine.failure_message
            self.call.spawn(self.call.hangup("engine_failed", goodbye=goodbye), "hangup")

    def _history_note(self) -> str:
        lines = [f"{e['role']}: {e['text']}" for e in self.call.transcript if e.get("text")]
        lines += [
            f"assistant: {u.best_text}"
            for u in self._utterances.values()
            if u.best_text and not (u.recorded or u.blocked or u.interrupted)
        ]
        if not lines:
            return ""
        return (
            "\n\nThe connection to you was lost and has been restored in the middle of this "
            "phone call. Do not greet the caller again; carry on from here. The conversation "
            "so far:\n" + "\n".join(lines[-40:])
        )

    # --- receiving -----------------------------------------------------------------------

    async def _handle(self, event: RealtimeEvent) -> None:
        if isinstance(event, AgentAudio):
            self._on_audio(event)
        elif isinstance(event, AgentText):
            await self._on_text(event)
        elif isinstance(event, AgentAudioDone):
            self._on_audio_done(event)
        elif isinstance(event, AgentTextDone):
            utt = self._utterance(event.response_id, event.item_id)
            if utt is not None:
                utt.final_text = event.text or utt.text
                await self._maybe_record(utt)
        elif isinstance(event, CallerSpeechStarted):
            if self.engine.barge_in:
                await self._barge_in()
        elif isinstance(event, CallerText):
            text = event.text.strip()
            if text:
                await self.call.add_transcript("user", text)
        elif isinstance(event, ResponseStarted):
            self._active_response = event.response_id
            self._responses[event.response_id] = _Response(event.response_id, event.scripted)
        elif isinstance(event, ToolCallRequested):
            self._on_tool_call(event)
        elif isinstance(event, ResponseDone):
            self._on_response_done(event)
        elif isinstance(event, ModelError):
            log.warning(
                "call %s: %s error %s: %s",
                self.call.call_id,
                self.engine.display_name,
                event.code,
                event.message,
            )
            self.call.event(
                "engine_error", engine=self.engine.name, code=event.code, message=event.message
            )

    def _utterance(self, response_id: str, item_id: str) -> _Utterance | None:
        """The utterance an output event belongs to; None if it must not be heard."""
        if item_id in self._dropped_items or response_id in self._dropped_responses:
            return None
        utt = self._utterances.get(item_id)
        if utt is None:
            response = self._responses.get(response_id)
            scripted = response is not None and response.scripted
            utt = _Utterance(item_id, response_id, self._wire.number, scripted)
            self._utterances[item_id] = utt
        return utt

    def _on_audio(self, event: AgentAudio) -> None:
        utt = self._utterance(event.response_id, event.item_id)
        if utt is None or utt.settled:
            return
        if not utt.begun:
            utt.begun = True
            self.call.begin_utterance(utt.item_id)
        utt.audio_ms += _audio_ms(event.audio)
        self.call.play(event.audio)

    def _on_audio_done(self, event: AgentAudioDone) -> None:
        utt = self._utterance(event.response_id, event.item_id)
        if utt is None or utt.settled or utt.done is not None:
            return
        if not utt.begun:  # no audio at all: nothing to wait for
            utt.played = True
            self.call.spawn(self._maybe_record(utt), "transcript")
            return
        utt.done = self.call.end_utterance(utt.item_id)
        self.call.spawn(self._when_played(utt, utt.done), "utterance")

    async def _when_played(self, utt: _Utterance, done: asyncio.Future[bool]) -> None:
        if await done:
            utt.played = True
            await self._maybe_record(utt)

    async def _maybe_record(self, utt: _Utterance) -> None:
        if utt.played and utt.final_text is not None and not (utt.recorded or utt.blocked):
            utt.recorded = True
            self._utterances.pop(utt.item_id, None)  # no event can follow its final text
            if utt.final_text:
                await self.call.add_transcript("assistant", utt.final_text)

    async def _record_heard(self, utt: _Utterance) -> None:
        """Record the part of `utt` the caller heard (it was cut short)."""
        utt.recorded = True
        self._utterances.pop(utt.item_id, None)  # its later events are dropped by id
        heard_ms = self.call.heard_seconds(utt.item_id) * 1000
        fraction = heard_ms / utt.audio_ms if utt.audio_ms else 0.0
        text = cut_to_heard(utt.best_text, fraction)
        if text:
            await self.call.add_transcript("assistant", text, interrupted=True)

    async def _on_text(self, event: AgentText) -> None:
        utt = self._utterance(event.response_id, event.item_id)
        if utt is None or utt.settled:
            return
        utt.text += event.delta
        if utt.scripted:
            return  # our own words (first message, a replacement) are not checked
        _, guardrail = screen(utt.text, self.agent.guardrails)
        if guardrail is not None:
            await self._block(utt, guardrail)

    def _on_tool_call(self, event: ToolCallRequested) -> None:
        rid = event.response_id
        if rid in self._dropped_responses:
            return  # the caller interrupted: that turn's tool calls are dropped too
        response = self._responses.setdefault(rid, _Response(rid, scripted=False))
        task = self.call.spawn(self._run_tool(event.name, event.arguments), f"tool:{event.name}")
        response.tools.append((event.call_id, event.name, task))

    async def _run_tool(self, name: str, arguments: str) -> ToolOutcome:
        tool = self.agent.get_tool(name)
        if tool is not None and tool.webhook_url and self._http is None:
            import aiohttp

            self._http = aiohttp.ClientSession()
        return await run_tool(self.call, self.agent, name, arguments, http=self._http)

    def _on_response_done(self, event: ResponseDone) -> None:
        rid = event.response_id
        if self._active_response == rid:
            self._active_response = None
        if event.status == "failed":
            log.warning(
                "call %s: %s response failed: %s",
                self.call.call_id,
                self.engine.display_name,
                event.details,
            )
        turn: dict[str, Any] = {"response_id": rid, "status": event.status}
        turn["model"] = self.engine.model
        turn.update(_usage_fields(event.usage))
        self.usage.append(turn)
        self.call.event("usage", **turn)
        state = self._responses.pop(rid, None)
        if state is not None and state.tools:
            cancelled = event.status == "cancelled" or rid in self._dropped_responses
            self.call.spawn(self._finish_tools(state.tools, cancelled, self._wire.number), "tools")

    # --- tools ---------------------------------------------------------------------------

    async def _finish_tools(
        self,
        tools: Sequence[tuple[str, str, asyncio.Task[ToolOutcome]]],
        cancelled: bool,
        link: int,
    ) -> None:
        """Send every output of a response's tool calls, then act or let the model go on.

        Runs after the response is done (a new response while one is active is refused).
        Outputs for a session that has since been replaced (a reconnect) are not sent: their
        calls don't exist in the new one.
        """
        outcomes = [(call_id, name, await task) for call_id, name, task in tools]
        action = next((o for _, _, o in outcomes if o.action is not None), None)
        if link == self._wire.number:
            results = [ToolResult(call_id, name, o.output) for call_id, name, o in outcomes]
            self._wire.send_tool_results(results, respond=action is None and not cancelled)
        if action is None:
            return
        await self._speech_played()
        if action.action == "end_call":
            await self.call.hangup("agent_hangup")
            return
        try:
            await self.call.transfer(action.target)
        except Exception as exc:
            log.warning("call %s: transfer to %s failed: %s", self.call.call_id, action.target, exc)
            self._wire.respond(say="Sorry, I couldn't transfer your call. How else can I help?")

    async def _speech_played(self) -> None:
        """Wait until the agent's queued speech has played (or was cut); at most a minute."""
        pending = [
            u.done for u in self._utterances.values() if u.done is not None and not u.done.done()
        ]
        if pending:
            await asyncio.wait(pending, timeout=60)

    # --- barge-in and guardrails ---------------------------------------------------------

    def _stop(self, response_id: str | None) -> list[_Utterance]:
        """Mark the speaking utterances and the response in flight as dropped, and cancel it.

        Synchronous, so no audio can slip in between this and the clear.
        """
        playing = [u for u in self._utterances.values() if u.begun and not u.settled]
        for utt in playing:
            self._dropped_items.add(utt.item_id)
        if response_id is not None and response_id not in self._dropped_responses:
            self._dropped_responses.add(response_id)
            self._wire.cancel(response_id)
        return playing

    def _truncate(self, utt: _Utterance) -> int:
        """Tell the model how much of `utt` was heard, so its memory matches the caller's."""
        heard_ms = int(self.call.heard_seconds(utt.item_id) * 1000)
        heard_ms = max(0, min(heard_ms, int(utt.audio_ms)))
        if utt.link == self._wire.number:  # items of an earlier session don't exist any more
            self._wire.truncate(utt.item_id, heard_ms)
        return heard_ms

    async def _barge_in(self) -> None:
        """The caller started talking (or pressed a key): stop the agent where the caller
        stopped hearing it, and the reply in flight."""
        playing = self._stop(self._active_response)
        if not playing:
            return
        for utt in playing:
            utt.interrupted = True
        await self.call.clear()
        for utt in playing:
            heard_ms = self._truncate(utt)
            self.call.event("barge_in", item_id=utt.item_id, heard_ms=heard_ms)
            if not utt.recorded:
                await self._record_heard(utt)

    async def _block(self, utt: _Utterance, guardrail: Guardrail) -> None:
        """The agent was about to say something a guardrail forbids: say the replacement."""
        log.info("call %s: guardrail %r blocked a reply", self.call.call_id, guardrail.name)
        self.call.event("guardrail", name=guardrail.name, item_id=utt.item_id)
        rid = utt.response_id if self._active_response == utt.response_id else None
        playing = self._stop(rid)
        self._dropped_items.add(utt.item_id)
        self._dropped_responses.add(utt.response_id)
        utt.blocked = True
        for other in playing:
            other.interrupted = other.interrupted or other is not utt
        if utt.begun or playing:
            await self.call.clear()
        if utt.begun:
            self._truncate(utt)
        for other in playing:
            if other is not utt and not other.recorded:
                await self._record_heard(other)
        self._wire.respond(say=guardrail.replacement)


def _usage_fields(usage: Usage) -> dict[str, int]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "input_audio_tokens": usage.input_audio_tokens,
        "input_text_tokens": usage.input_text_tokens,
        "cached_tokens": usage.cached_tokens,
        "output_audio_tokens": usage.output_audio_tokens,
        "output_text_tokens": usage.output_text_tokens,
    }


__all__ = [
    "AgentAudio",
    "AgentAudioDone",
    "AgentText",
    "AgentTextDone",
    "CallerSpeechStarted",
    "CallerText",
    "EventHandler",
    "ModelError",
    "RealtimeCall",
    "RealtimeEngine",
    "RealtimeEvent",
    "RealtimeWire",
    "ResponseDone",
    "ResponseStarted",
    "SessionSetup",
    "ToolCallRequested",
    "ToolResult",
    "Usage",
    "cut_to_heard",
    "say_exactly",
]
