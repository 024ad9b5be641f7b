"""Which call the running code belongs to, as a context variable.

A call's tasks run in a context where `CALL_ID` is set (see `CallSession.spawn`), so a log
line written anywhere below them — a provider, a tool, the user's `on_message` — can say which
call it is about (the JSON log format does), and an OpenTelemetry span set current in the same
context puts its trace id on those lines too.
"""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["CALL_ID"]

CALL_ID: ContextVar[str] = ContextVar("getpatter_call_id", default="")
