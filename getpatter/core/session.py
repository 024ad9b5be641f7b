"""CallSession: one call's life — its tasks, its engine, its playout, transcript and record.

A session exists from the carrier's webhook to hang-up. It owns every task of the call
(`spawn`), so ending it cancels and awaits them all; a failure inside one call ends that call
and nothing else. Its record is written exactly once, whatever way the call ends.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from getpatter.core.audio import AudioFrame
from getpatter.core.context import CALL_ID
from getpatter.core.engine import EngineCall, HearsCaller, ReportsTurns
from getpatter.core.media import InboundAudio
from getpatter.core.metrics import CallMetrics, TurnTimes, UtteranceTurns
from getpatter.core.observe import CallObserver, notify
from getpatter.core.playout import MediaEncoder, MediaSink, Playout, PlayoutScheduler

if TYPE_CHECKING:
    from getpatter.agent import Agent
    from getpatter.core.pricing import PriceTable
    from getpatter.core.vad import SpeechDetector

log = logging.getLogger(__name__)

Callback = Callable[[dict[str, Any]], Awaitable[Any] | Any]


@dataclass(slots=True)
class CallCallbacks:
    """The user's callbacks from `serve()`; any may be sync or async, and may fail safely."""

    on_call_start: Callback | None = None
    on_call_end: Callback | None = None
    on_transcript: Callback | None = None
    on_message: Callable[..., Any] | None = None
    on_metrics: Callback | None = None


class CallControl(Protocol):
    """Carrier-side commands a call can issue (the carrier's REST API): the part of the
    carrier contract (`Carrier`, core/carrier.py) a call uses."""

    async def hangup(self, call: CallSession) -> None: ...
    async def transfer(self, call: CallSession, to: str) -> None: ...
    async def start_recording(self, call: CallSession) -> None: ...
    async def say_and_hangup(self, call: CallSession, text: str) -> None:
        """Speak `text` in the carrier's own voice, then hang up (for an engine that can no
        longer speak); returns once the carrier has it in hand."""


async def invoke(callback: Callable[..., Any] | None, *args: Any, what: str = "callback") -> Any:
    """Run a user callback (sync or async); its exception is logged, never raised into the call."""
    if callback is None:
        return None
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            result = await result
        return result
    except Exception:
        log.exception("%s raised; the call carries on", what)
        return None


@dataclass(frozen=True, slots=True)
class MachineDetectionResult:
    """The carrier's answering-machine verdict for an outbound call."""

    call_id: str
    answered_by: str  # the carrier's raw value, e.g. "human", "machine_end_beep"
    is_machine: bool
    detection_ms: int | None = None

    @property
    def result(self) -> str:
        """`human`, `machine`, `fax` or `unknown`, whatever the carrier's vocabulary."""
        if self.is_machine:
            return "machine"
        return self.answered_by if self.answered_by in ("human", "fax") else "unknown"


AmdCallback = Callable[[MachineDetectionResult], Awaitable[None] | None]


@dataclass(slots=True)
class CallInfo:
    call_id: str
    caller: str
    callee: str
    direction: str  # "inbound" | "outbound"
    first_message: str | None = None  # None: the agent's own
    variables: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    voicemail_message: str = ""
    on_machine_detection: AmdCallback | None = None


class CallSession:
    """One call. Engines talk to the caller through this object."""

    def __init__(
        self,
        info: CallInfo,
        agent: Agent,
        *,
        callbacks: CallCallbacks,
        control: CallControl,
        scheduler: PlayoutScheduler,
        on_record: Callable[[dict[str, Any]], Awaitable[None] | None] | None = None,
        recording: bool = False,
        pricing: PriceTable | None = None,
        journal: Callable[[CallSession], None] | None = None,
        observers: Sequence[CallObserver] = (),
    ) -> None:
        self.info = info
        self.key = info.call_id  # the server's handle for this call (the media socket path)
        self.agent = agent
        self.callbacks = callbacks
        self.control = control
        self.recording = recording
        self.state = "pending"  # pending → live → ended
        self.transcript: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.created_at = time.time()
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.end_reason = ""
        self.stream_id = ""
        self.playout: Playout | None = None
        self.engine: EngineCall | None = None
        self._scheduler = scheduler
        self._on_record = on_record
        self._journal = journal  # told of each change, so history keeps up while the call runs
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ending: asyncio.Task[None] | None = None
        self.ended = asyncio.get_running_loop().create_future()
        self.metrics = CallMetrics(
            pricing, carrier=str(getattr(control, "name", "")), direction=info.direction
        )
        self._turns: UtteranceTurns | None = None  # for engines that don't report turns
        self._caller_vad: SpeechDetector | None = None  # see `_watch_caller`
        self._on_caller_speech: Callable[[str, float], None] | None = None
        self._metric_tasks: set[asyncio.Task[Any]] = set()
        # the context every task of this call runs in (which call it is; observers such as
        # tracing add their own variables through `context.run`)
        self.context = contextvars.copy_context()
        self.context.run(CALL_ID.set, info.call_id)
        self.observers = tuple(observers)
        notify(self.observers, "call_started", self)

    # --- identity ------------------------------------------------------------------------

    @property
    def call_id(self) -> str:
        return self.info.call_id

    @property
    def caller(self) -> str:
        return self.info.caller

    @property
    def callee(self) -> str:
        return self.info.callee

    @property
    def direction(self) -> str:
        return self.info.direction

    @property
    def first_message(self) -> str:
        if self.info.first_message:
            return self.info.first_message
        return self.agent.render_first_message(self.info.variables)

    @property
    def system_prompt(self) -> str:
        return self.agent.render_prompt(self.info.variables)

    def event(self, kind: str, **data: Any) -> None:
        self.events.append({"t": time.time(), "kind": kind, **data})
        self.metrics.on_event(kind, data)
        if self.observers:
            notify(self.observers, "call_event", self, kind, data)
        if kind == "usage" and self._turns is not None:
            self._turns.model_done()

    # --- metrics -------------------------------------------------------------------------

    def call_seconds(self) -> float:
        if self.started_at is None:
            return 0.0
        return max(0.0, (self.ended_at or time.time()) - self.started_at)

    def complete_turn(self, times: TurnTimes) -> None:
        """A turn is over: keep its metrics and hand them to `on_metrics` (once per turn)."""
        event = self.metrics.complete(times, self.call_seconds())
        if event is not None and self.observers:
            notify(self.observers, "turn_completed", self, times, self.metrics.turns[-1])
        if event is None or self.callbacks.on_metrics is None:
            return
        event["call_id"] = self.call_id
        task = asyncio.get_running_loop().create_task(
            invoke(self.callbacks.on_metrics, event, what="on_metrics")
        )
        self._metric_tasks.add(task)
        task.add_done_callback(self._metric_tasks.discard)

    # --- tasks ---------------------------------------------------------------------------

    def adopt_context(self) -> None:
        """Make the current task (e.g. the media socket's handler) run as part of this call:
        its log lines name the call, its spans are the call's."""
        for var, value in self.context.items():
            var.set(value)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "") -> asyncio.Task[Any]:
        """Run `coro` as part of this call: cancelled when the call ends; a crash ends the call."""
        task = asyncio.get_running_loop().create_task(
            coro, name=f"{self.call_id}:{name}", context=self.context.copy()
        )
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or self.state == "ended":
            return
        exc = task.exception()
        if exc is not None:
            log.error(
                "call %s: task %s failed: %r", self.call_id, task.get_name(), exc, exc_info=exc
            )
            self.event("error", where=task.get_name(), error=repr(exc))
            self.end_soon(f"error: {type(exc).__name__}")

    # --- media ---------------------------------------------------------------------------

    async def attach_media(
        self, stream_id: str, encoder: MediaEncoder, sink: MediaSink, engine: EngineCall
    ) -> None:
        """The media stream is up: start playout, tell the user, start the engine."""
        self.stream_id = stream_id
        self.state = "live"
        self.started_at = time.time()
        self.playout = Playout(encoder, sink)
        self._scheduler.attach(self.playout)
        self.engine = engine
        self.metrics.identify(engine)
        self._watch_caller(engine)
        self.event("media_started", stream_id=stream_id)
        if self._journal is not None:
            self._journal(self)
        await invoke(
            self.callbacks.on_call_start,
            {
                "call_id": self.call_id,
                "caller": self.caller,
                "callee": self.callee,
                "direction": self.direction,
                "parameters": dict(self.info.parameters),
            },
            what="on_call_start",
        )
        if self.recording:
            self.spawn(self.control.start_recording(self), "recording")
        await engine.start()

    def _watch_caller(self, engine: EngineCall) -> None:
        """One VAD over the caller's audio, when someone needs it: the turn metrics of an
        engine that doesn't time its own turns, and an engine that wants to know when the
        caller starts or stops talking (`on_caller_speech(kind, at)`, e.g. for barge-in).
        Engines with their own VAD (the pipeline) declare `reports_turns` and get none.
        Both capabilities are declared in `core/engine.py`."""
        if not (isinstance(engine, ReportsTurns) and engine.reports_turns):
            self._turns = UtteranceTurns("realtime", self.complete_turn)
        if isinstance(engine, HearsCaller):
            self._on_caller_speech = engine.on_caller_speech
        if self._turns is not None or self._on_caller_speech is not None:
            from getpatter.core.vad import resolve_vad

            self._caller_vad = resolve_vad(self.agent.vad).create(8000)  # the agent's choice

    def push_audio(self, audio: InboundAudio) -> None:
        if self.engine is not None and self.state == "live":
            self.engine.push_audio(audio)  # first: an engine sees the audio before its turn ends
            if self._caller_vad is not None:
                frame = audio.frame
                events = self._caller_vad.process(frame)
                if events:
                    now = asyncio.get_running_loop().time()
                    for event in events:
                        at = now - max(0.0, frame.end - event.timestamp)  # frame ends ~now
                        if self._turns is not None:
                            self._turns.caller_speech(event.kind, at)
                        if self._on_caller_speech is not None:
                            self._on_caller_speech(event.kind, at)

    def on_mark(self, name: str) -> None:
        if self.playout is not None:
            self.playout.on_mark(name)

    async def on_dtmf(self, digit: str) -> None:
        self.event("dtmf", digit=digit)
        if self.engine is not None:
            await self.engine.on_dtmf(digit)

    # --- what engines call ---------------------------------------------------------------

    def begin_utterance(self, label: str) -> None:
        if self.playout is not None:
            self.playout.begin(label)
            if self._turns is not None:
                self._turns.audio_started(label)

    def play(self, audio: bytes | AudioFrame) -> None:
        """Queue agent audio: μ-law bytes at 8 kHz, or int16 frames at any rate."""
        if self.playout is not None:
            self.playout.play(audio)

    def end_utterance(self, label: str) -> asyncio.Future[bool]:
        """Close an utterance; resolves True once heard in full, False if cut by a barge-in."""
        if self.playout is None:
            fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            fut.set_result(False)
            return fut
        done = self.playout.end(label)
        if self._turns is not None:
            turns = self._turns
            done.add_done_callback(
                lambda f: turns.audio_settled(
                    label, not f.cancelled() and f.exception() is None and f.result() is True
                )
            )
        return done

    async def clear(self) -> None:
        """Barge-in: drop every bit of agent audio the caller has not heard yet."""
        if self.playout is not None:
            await self.playout.clear()
            self.event("clear")
            if self._turns is not None:
                self._turns.cleared()

    def heard_seconds(self, label: str) -> float:
        return self.playout.heard_seconds(label) if self.playout is not None else 0.0

    async def add_transcript(self, role: str, text: str, **extra: Any) -> None:
        entry = {"role": role, "text": text, "t": time.time(), **extra}
        self.transcript.append(entry)
        if self._journal is not None:
            self._journal(self)
        if self._turns is not None:
            if role == "user":
                self._turns.user_transcript(text)
            else:
                self._turns.agent_text(text)
        await invoke(
            self.callbacks.on_transcript,
            {"call_id": self.call_id, "role": role, "text": text, **extra},
            what="on_transcript",
        )

    async def hangup(self, reason: str = "agent_hangup", *, goodbye: str = "") -> None:
        """End the call from our side: ask the carrier to hang up, then end the session.

        `goodbye` is spoken first in the carrier's own voice: last words for when the engine
        can no longer speak (its model is unreachable), so the caller is never left with a
        silent line or a click."""
        self.event("hangup", reason=reason)
        self.end_reason = self.end_reason or reason  # the carrier's stop may arrive first
        if goodbye:
            try:
                await self.control.say_and_hangup(self, goodbye)
            except Exception as exc:
                log.warning("call %s: carrier could not say goodbye: %s", self.call_id, exc)
            else:  # only words the carrier took are the caller's to hear
                await self.add_transcript("assistant", goodbye, carrier_voice=True)
                await self.end(reason)
                return
        try:
            await self.control.hangup(self)
        except Exception as exc:
            log.warning("call %s: carrier hangup failed: %s", self.call_id, exc)
        await self.end(reason)

    async def transfer(self, to: str) -> None:
        """Cold transfer to a number; our part of the call ends once the carrier takes it."""
        self.event("transfer", to=to)
        previous, self.end_reason = self.end_reason, self.end_reason or "transferred"
        try:
            await self.control.transfer(self, to)
        except BaseException:
            self.end_reason = previous
            raise
        await self.end("transferred")

    # --- the end -------------------------------------------------------------------------

    def end_soon(self, reason: str) -> None:
        if self._ending is None:
            self._ending = asyncio.get_running_loop().create_task(self._end(reason))

    async def end(self, reason: str = "hangup") -> None:
        """Idempotent: the first reason wins; every caller waits for the record to be written."""
        if self._ending is None:
            self._ending = asyncio.get_running_loop().create_task(self._end(reason))
        await asyncio.shield(self._ending)

    async def _end(self, reason: str) -> None:
        self.state = "ended"
        self.end_reason = self.end_reason or reason
        self.ended_at = time.time()
        current = asyncio.current_task()
        try:
            tasks = [t for t in self._tasks if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.engine is not None:
                try:
                    await asyncio.wait_for(self.engine.aclose(), 5)
                except Exception as exc:
                    log.warning("call %s: engine close failed: %r", self.call_id, exc)
            if self.playout is not None:
                self.playout.close()
                self._scheduler.detach(self.playout)
        finally:
            if self._turns is not None:
                self._turns.close()
            if self._metric_tasks:  # on_metrics of the last turns lands before on_call_end
                await asyncio.wait(set(self._metric_tasks), timeout=5)
            record = self.record()
            try:
                if self._on_record is not None:
                    result = self._on_record(record)
                    if inspect.isawaitable(result):
                        await result
            except Exception:
                log.exception("call %s: writing the call record failed", self.call_id)
            notify(self.observers, "call_ended", self, record)
            await invoke(self.callbacks.on_call_end, record, what="on_call_end")
            if not self.ended.done():
                self.ended.set_result(reason)

    def record(self) -> dict[str, Any]:
        start = self.started_at or self.created_at
        end = self.ended_at or time.time()
        return {
            "call_id": self.call_id,
            "caller": self.caller,
            "callee": self.callee,
            "direction": self.direction,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration": round(end - start, 3) if self.started_at else 0.0,
            "end_reason": self.end_reason,
            "answered": self.started_at is not None,
            "transcript": [{"role": e["role"], "text": e["text"]} for e in self.transcript],
            "events": list(self.events),
            "created_at": self.created_at,
            "metrics": self.metrics.summary(self.call_seconds()),
        }
