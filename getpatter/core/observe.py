"""Call observers: how tracing and metrics exporters follow calls without touching call logic.

A `CallSession` tells each observer when it starts, every event it records (errors, barge-ins,
tools, …), every turn it completes (with the turn's timestamps and its metrics) and its final
record. Observers must be quick and must not raise; a failing observer is logged once and the
call carries on — observability never ends a call.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from getpatter.core.metrics import TurnTimes
    from getpatter.core.session import CallSession

log = logging.getLogger(__name__)

__all__ = ["CallObserver", "notify", "provider_of"]

_ROLES = {"stt": "stt", "tts": "tts", "llm": "llm", "reply": "llm"}


class CallObserver(Protocol):
    def call_started(self, call: CallSession) -> None: ...
    def call_event(self, call: CallSession, kind: str, data: dict[str, Any]) -> None: ...
    def turn_completed(self, call: CallSession, times: TurnTimes, turn: dict[str, Any]) -> None: ...
    def call_ended(self, call: CallSession, record: dict[str, Any]) -> None: ...


_failed: set[tuple[int, str]] = set()


def notify(observers: tuple[CallObserver, ...], method: str, *args: Any) -> None:
    for observer in observers:
        try:
            getattr(observer, method)(*args)
        except Exception:
            key = (id(observer), method)
            if key not in _failed:  # once per observer and hook, not once per frame
                _failed.add(key)
                log.exception("%s.%s failed; the call carries on", type(observer).__name__, method)


def provider_of(call: CallSession, component: str) -> str:
    """The provider behind a failing `component` of `call`, as the price table names it
    (`deepgram`, `openai`); `none` for a part that is not a provider (a task, the playout)."""
    role = _ROLES.get(component)
    if role is None:  # a realtime engine's errors name the engine
        engine = getattr(getattr(call, "engine", None), "engine", None)
        role = "realtime" if getattr(engine, "name", None) == component else ""
    providers = getattr(getattr(call, "metrics", None), "providers", None) or {}
    return str((providers.get(role) or {}).get("provider") or "none")[:40]
