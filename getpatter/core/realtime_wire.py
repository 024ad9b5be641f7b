"""The realtime contract: what a provider's wire is asked to do, and the events it reports.

A realtime provider implements `RealtimeWire` in its own messages and translates what its
model sends into the `RealtimeEvent`s below; `getpatter.core.realtime.RealtimeCall` does the
rest for every provider. `Outbox` is the ordered, bounded send queue every wire needs: one
writer per socket, control events after the audio that came before them, caller audio kept
(bounded, oldest dropped) while the socket is down, control events of a dead session dropped.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, Protocol, TypeVar

from getpatter.core.credentials import Secret
from getpatter.core.frame import AudioFrame
from getpatter.errors import PatterConfigError

if TYPE_CHECKING:
    from getpatter.core.media import InboundAudio
    from getpatter.core.realtime import RealtimeCall
    from getpatter.core.session import CallSession

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What the caller hears, in the carrier's voice, when the model cannot be reached.
FAILURE_MESSAGE: Final = (
    "Sorry, we're having technical difficulties and can't continue this call. "
    "Please call back in a few minutes. Goodbye."
)


@dataclass(frozen=True, slots=True)
class SessionSetup:
    """What a new model session is configured with (the first, or one after a drop)."""

    instructions: str  # the system prompt, plus the conversation so far when `resumed`
    tools: list[dict[str, Any]]  # {"name", "description", "parameters"} per function
    language: str  # the agent's language code, e.g. "en" or "en-US"
    resumed: bool


@dataclass(frozen=True, slots=True)
class ToolResult:
    call_id: str
    name: str
    output: str  # JSON text


@dataclass(frozen=True, slots=True)
class Usage:
    """A response's token usage, in the fields the price table knows."""

    input_tokens: int = 0
    output_tokens: int = 0
    input_audio_tokens: int = 0
    input_text_tokens: int = 0
    cached_tokens: int = 0
    output_audio_tokens: int = 0
    output_text_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ResponseStarted:
    """The model started a response; `scripted` if it is one `respond(say=...)` asked for."""

    response_id: str
    scripted: bool = False


@dataclass(frozen=True, slots=True)
class AgentAudio:
    """Agent speech: μ-law bytes at 8 kHz, or an int16 frame at any rate."""

    response_id: str
    item_id: str
    audio: bytes | AudioFrame


@dataclass(frozen=True, slots=True)
class AgentText:
    """More of the transcript of what the agent is saying."""

    response_id: str
    item_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class AgentAudioDone:
    response_id: str
    item_id: str


@dataclass(frozen=True, slots=True)
class AgentTextDone:
    """The item's final transcript (may come before or after its audio is done)."""

    response_id: str
    item_id: str
    text: str


@dataclass(frozen=True, slots=True)
class CallerSpeechStarted:
    """The model's own VAD heard the caller start talking."""


@dataclass(frozen=True, slots=True)
class CallerText:
    """The model's transcript of a caller turn."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallRequested:
    response_id: str
    call_id: str
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """A response is over: `completed`, `cancelled`, `failed`, ..."""

    response_id: str
    status: str = "completed"
    usage: Usage = field(default_factory=Usage)
    details: str = ""


@dataclass(frozen=True, slots=True)
class ModelError:
    """An error the model reported on a live session; the call goes on."""

    code: str
    message: str


RealtimeEvent = (
    ResponseStarted
    | AgentAudio
    | AgentText
    | AgentAudioDone
    | AgentTextDone
    | CallerSpeechStarted
    | CallerText
    | ToolCallRequested
    | ResponseDone
    | ModelError
)
EventHandler = Callable[[RealtimeEvent], Awaitable[None]]


class RealtimeWire(Protocol):
    """One call's connection to a realtime model, in the provider's own messages.

    Every send method queues and returns at once (never blocks); `open` and `receive` are
    the only awaits. Events go to the handler the engine's `wire()` was given, in order.
    """

    @property
    def number(self) -> int:
        """Sessions opened so far: 1 for the first, 2 after a reconnect, ..."""

    async def open(self, setup: SessionSetup) -> None:
        """Connect and configure a session. Raises PatterConnectionError (unreachable,
        refused, dropped during setup) or ProviderError (the model refused the settings)."""

    async def receive(self) -> None:
        """Hand every event to the handler until the socket closes (by us or the network)."""

    def send_audio(self, audio: InboundAudio) -> None:
        """Caller audio as the carrier sent it; kept while the socket is down (bounded)."""

    def respond(self, say: str | None = None) -> None:
        """Ask for a response; with `say`, one that speaks exactly that text (scripted)."""

    def cancel(self, response_id: str) -> None:
        """Stop a response in flight (a no-op where the model has no such command)."""

    def truncate(self, item_id: str, heard_ms: int) -> None:
        """The caller heard `heard_ms` of this item: make the model's memory match."""

    def add_user_text(self, text: str) -> None:
        """A caller turn in words (a key press), without asking for a response."""

    def send_tool_results(self, results: Sequence[ToolResult], respond: bool) -> None:
        """The outputs of one response's tool calls; `respond`: let the model go on."""

    def caller_turn(self, kind: str) -> None:
        """Only for models without their own turn detection: our VAD heard the caller
        `speech_started` or `speech_ended` (the end of the caller's turn)."""

    async def close(self) -> None: ...


class RealtimeEngine(Protocol):
    """What `RealtimeCall` needs of a provider's agent-level engine config."""

    name: ClassVar[str]  # for events and records, e.g. "openai_realtime"
    display_name: ClassVar[str]  # for log lines, e.g. "OpenAI Realtime"
    model: str
    barge_in: bool
    failure_message: str

    @property
    def server_turns(self) -> bool:
        """The model detects the caller's turns itself (its own VAD)."""

    def wire(self, call: CallSession, handle: EventHandler) -> RealtimeWire: ...


class ModelTurns:
    """For models that give their turns no ids (Gemini, Ultravox): one id per model turn, used
    for its response and its one audio item; whether the turn is one a `respond(say=...)`
    asked for (`expect`, in order); its transcript so far; the caller's words before it."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.text = ""
        self.cut = False  # the model stopped it (the caller talked over it)
        self._count = 0
        self._session = 0
        self._scripted: deque[bool] = deque()
        self._heard: list[str] = []

    def new_session(self, number: int) -> None:
        self._session, self.id = number, None
        self._scripted.clear()

    def expect(self, scripted: bool) -> None:
        """A request that makes the model take a turn was sent."""
        self._scripted.append(scripted)

    def heard(self, text: str) -> None:
        """A piece of the caller's transcript; reported when the model's next turn starts."""
        self._heard.append(text)

    def start(self) -> list[RealtimeEvent]:
        if self.id is not None:
            return []
        self._count += 1
        self.id, self.text, self.cut = f"turn-{self._session}-{self._count}", "", False
        scripted = self._scripted.popleft() if self._scripted else False
        events: list[RealtimeEvent] = []
        if self._heard:
            events.append(CallerText("".join(self._heard)))
            self._heard.clear()
        return [*events, ResponseStarted(self.id, scripted)]

    def audio(self, audio: bytes | AudioFrame) -> list[RealtimeEvent]:
        events = self.start()
        assert self.id is not None
        return [*events, AgentAudio(self.id, self.id, audio)]

    def said(self, delta: str) -> list[RealtimeEvent]:
        events = self.start()
        assert self.id is not None
        self.text += delta
        return [*events, AgentText(self.id, self.id, delta)] if delta else events

    def tool_calls(self, calls: Sequence[tuple[str, str, str]]) -> list[RealtimeEvent]:
        """(call id, name, JSON arguments) of a turn that ends by calling tools."""
        events = self.start()
        assert self.id is not None
        turn = self.id
        events += [ToolCallRequested(turn, *call) for call in calls]
        return events + self.end()

    def end(
        self, status: str = "completed", usage: Usage | None = None, audio_done: bool = True
    ) -> list[RealtimeEvent]:
        turn, self.id = self.id, None
        if turn is None:
            return []
        done: list[RealtimeEvent] = [AgentAudioDone(turn, turn)] if audio_done else []
        return [
            *done,
            AgentTextDone(turn, turn, self.text),
            ResponseDone(turn, status, usage or Usage()),
        ]


class Outbox(Generic[T]):
    """A wire's send queue: caller audio in batches of `batch_bytes`, encoded by `encode`,
    and control messages, sent in order by one task (`run`) through `send`."""

    def __init__(self, batch_bytes: int, max_audio: int, encode: Callable[[bytes], T]) -> None:
        self._batch_bytes = batch_bytes
        self._max_audio = max_audio
        self._encode = encode
        self._items: deque[tuple[bool, T]] = deque()  # (is audio, message)
        self._audio = 0
        self._batch = bytearray()
        self._wake = asyncio.Event()
        self._sessions = 0

    def audio(self, data: bytes) -> None:
        self._batch += data
        if len(self._batch) >= self._batch_bytes:
            self._flush()
            self._wake.set()

    def control(self, message: T) -> None:
        """Queue a control message after the audio that came before it."""
        self._flush()
        self._items.append((False, message))
        self._wake.set()

    def new_session(self) -> None:
        """A new socket: the control messages queued for the old one are dropped (those
        queued before the first socket are for it, and kept)."""
        self._sessions += 1
        if self._sessions == 1:
            self._wake.set()
            return
        kept = [item for item in self._items if item[0]]
        self._items.clear()
        self._items.extend(kept)
        self._wake.set()

    def _flush(self) -> None:
        if not self._batch:
            return
        self._items.append((True, self._encode(bytes(self._batch))))
        self._batch.clear()
        self._audio += 1
        if self._audio > self._max_audio:
            for i, (is_audio, _) in enumerate(self._items):
                if is_audio:
                    del self._items[i]
                    self._audio -= 1
                    break

    async def run(self, send: Callable[[T], Awaitable[None]], what: str) -> None:
        """Send until a send fails (the socket is gone: the receiver notices and reopens)."""
        while True:
            while not self._items:
                self._wake.clear()
                await self._wake.wait()
            is_audio, message = self._items[0]
            try:
                await send(message)
            except Exception as exc:
                log.debug("%s: send failed: %r", what, exc)
                return
            self._items.popleft()
            if is_audio:
                self._audio -= 1


class RealtimeOptions:
    """What every provider's engine config takes the same way (a mixin: it adds no fields).

    The config keeps its key as `_secret`, and has `model`, `base_url`, `barge_in`,
    `failure_message` ("" hangs up silently), `connect_timeout` and `temperature`."""

    _secret: Secret
    model: str
    base_url: str
    barge_in: bool
    failure_message: str
    connect_timeout: float
    temperature: float | None

    def _check_options(self) -> None:
        who = type(self).__name__
        t = self.temperature
        if t is not None and (
            isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t)
        ):
            raise PatterConfigError(f"{who} temperature must be a number, got {t!r}")
        if not isinstance(self.barge_in, bool):
            raise PatterConfigError(f"{who} barge_in must be True or False")
        if not isinstance(self.failure_message, str):
            raise PatterConfigError(f"{who} failure_message must be a string")
        self.failure_message = self.failure_message.strip()
        ct = self.connect_timeout
        if isinstance(ct, bool) or not isinstance(ct, int | float) or not ct > 0:
            raise PatterConfigError(f"{who} connect_timeout must be a positive number")

    @property
    def key(self) -> Secret:
        """The API key (call `.reveal()` where it must be sent)."""
        return self._secret

    def open(self, call: CallSession) -> RealtimeCall:
        from getpatter.core.realtime import RealtimeCall

        return RealtimeCall(self, call)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        voice = getattr(self, "voice", None)
        return (
            f"{type(self).__name__}(model={self.model!r}, voice={voice!r}, "
            f"base_url={self.base_url!r}, api_key={'<set>' if self._secret else '<unset>'})"
        )
