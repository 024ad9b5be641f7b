"""`Message`: what a pipeline agent's `on_message(msg)` receives for each caller turn.

It is a dict (so `msg["text"]`, `msg.get("dtmf")`, `json.dumps(msg)` and every key older code
used keep working) with typed, documented attributes on top (`msg.text`, `msg.history`), the
way users coming from Patter and from other voice frameworks write it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Message"]

ToolRunner = Callable[[str, dict[str, Any]], Awaitable[Any]]


class Message(dict[str, Any]):
    """One caller turn, for `on_message`.

    - `text`: what the caller said (a key press: "The caller pressed 2 on the keypad.")
    - `call_id`: the carrier's id of this call
    - `caller`, `callee`: phone numbers (E.164) of who called and who was called
    - `history`: the conversation so far, this turn last, as `[{"role": "user"|"assistant",
      "content": str}, ...]` — ready to hand to any chat-completions API after a system
      message
    - `dtmf`: the key the caller pressed when the turn is a key press, else ""

    The same values are the dict's keys (`dtmf` only when a key was pressed, as before).
    `await msg.call_tool(name, **args)` runs one of the agent's tools the way an LLM's tool
    call would (timed, logged, in the call's events) and returns its result; the built-ins
    work too: `call_tool("end_call")` hangs up and `call_tool("transfer_call", number=...)`
    transfers, once the reply being spoken has been heard.
    """

    __slots__ = ("_run_tool",)

    def __init__(
        self,
        *,
        text: str,
        call_id: str = "",
        caller: str = "",
        callee: str = "",
        history: list[dict[str, Any]] | None = None,
        dtmf: str = "",
        run_tool: ToolRunner | None = None,
    ) -> None:
        super().__init__(
            text=text,
            call_id=call_id,
            caller=caller,
            callee=callee,
            history=list(history or []),
        )
        if dtmf:
            self["dtmf"] = dtmf
        self._run_tool = run_tool

    @property
    def text(self) -> str:
        return str(self.get("text", ""))

    @property
    def call_id(self) -> str:
        return str(self.get("call_id", ""))

    @property
    def caller(self) -> str:
        return str(self.get("caller", ""))

    @property
    def callee(self) -> str:
        return str(self.get("callee", ""))

    @property
    def history(self) -> list[dict[str, Any]]:
        value = self.get("history")
        return value if isinstance(value, list) else []

    @property
    def dtmf(self) -> str:
        return str(self.get("dtmf", ""))

    async def call_tool(self, name: str, **arguments: Any) -> Any:
        """Run the agent's tool `name` with these arguments; returns what its handler
        returned (through JSON), or `{"error": "..."}` if it failed."""
        if self._run_tool is None:
            raise RuntimeError("this Message is not attached to a call: no tools to run")
        return await self._run_tool(name, arguments)

    def __repr__(self) -> str:
        return f"Message({dict.__repr__(self)})"


def tool_result(output: str) -> Any:
    """A tool's JSON output as Python values (plain text if it is not JSON)."""
    try:
        return json.loads(output)
    except ValueError:
        return output
