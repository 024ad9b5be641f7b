"""One call on a fake phone network, seen from the network's side: what the far end said and
heard, what the app sent, and helpers for tests to wait on any of it.

Each carrier's `FakeCall` adds its ids and states; everything here is carrier-neutral.
"""

# ruff: noqa: ASYNC109  (timeout= parameters are the public test API)

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .audio import FRAME_S, AudioInput, Int16Array, load_audio, ulaw_decode


class OpenOrNot(Protocol):
    """All a call needs to know of its media socket."""

    open: bool


@dataclass
class CallError:
    """One mistake of the app's (or a failure to reach it) that the carrier would report,
    with the carrier's own code (Twilio: a number; Telnyx and Plivo: a string)."""

    code: Any
    message: str
    time: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


class PhoneCall:
    """The far end of one call. Everything the app did is recorded with loop timestamps."""

    #: the media event that echoes a mark; its name is read by `echoed_mark`
    mark_echo_event = "mark"

    def __init__(
        self, *, direction: str, from_: str, to: str, audio: AudioInput | None = None
    ) -> None:
        self.direction = direction
        self.from_ = from_
        self.to = to
        self.answered_by: str | None = None  # AMD result, once detected
        self.custom_parameters: dict[str, str] = {}
        #: every message the app sent on a media socket: (loop time, event, message)
        self.received: list[tuple[float, str, dict[str, Any]]] = []
        #: every message the fake sent on a media socket: (loop time, event, message)
        self.sent: list[tuple[float, str, dict[str, Any]]] = []
        #: μ-law the fake has played to the far end, 160 bytes per 20 ms, in order
        self.played = bytearray()
        self.marks_echoed: list[str] = []
        self.clears = 0
        self.dtmf_sent: list[str] = []  # keys the far end pressed
        self.errors: list[CallError] = []
        self.said: list[str] = []  # text the carrier spoke with its own voice
        self.transfers: list[str] = []  # where the app sent the call
        self.created_at = asyncio.get_running_loop().time()
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self._inbound = bytearray(load_audio(audio))  # far-end audio not yet streamed
        self._stream: OpenOrNot | None = None
        self._changed = asyncio.Event()
        self._finished = asyncio.Event()

    # --- state -----------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        raise NotImplementedError

    @property
    def error_codes(self) -> list[Any]:
        return [e.code for e in self.errors]

    @property
    def stream_open(self) -> bool:
        return self._stream is not None and self._stream.open

    def heard_audio(self) -> Int16Array:
        """What the far end heard from the app, decoded to int16 at 8 kHz."""
        return ulaw_decode(self.played)

    def _notify(self) -> None:
        """Wake every wait_for(); called on any state change."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _error(self, code: Any, message: str, **detail: Any) -> None:
        loop_time = asyncio.get_running_loop().time()
        self.errors.append(CallError(code, message, loop_time, dict(detail)))
        self._notify()

    # --- far-end actions -------------------------------------------------------------------

    async def send_audio(self, audio: AudioInput) -> None:
        """Queue more far-end audio; streamed after what is already queued, at real time."""
        self._inbound.extend(load_audio(audio))

    # --- waiting helpers -------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until predicate() is true; re-checked on every state change (and every 20 ms)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                try:
                    await asyncio.wait_for(self._changed.wait(), FRAME_S)
                except TimeoutError:
                    pass

    def echoed_mark(self, event: str, msg: dict[str, Any]) -> str | None:
        """The mark a message the fake sent echoes, if it is an echo."""
        if event != self.mark_echo_event:
            return None
        mark = msg.get("mark")
        return mark.get("name") if isinstance(mark, dict) else None

    async def wait_for_mark(self, name: str, timeout: float = 5.0) -> float:
        """Wait until mark `name` has been echoed; returns the loop time of the echo."""
        await self.wait_for(lambda: name in self.marks_echoed, timeout)
        return next(t for t, ev, m in self.sent if self.echoed_mark(ev, m) == name)

    async def wait_ended(self, timeout: float = 10.0) -> None:
        """Wait until the call is over and its final webhooks have been delivered."""
        async with asyncio.timeout(timeout):
            await self._finished.wait()
