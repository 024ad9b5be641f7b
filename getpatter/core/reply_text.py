"""Where a pipeline reply's text comes from: a fixed text, the user's `on_message`, or the LLM
with its tool rounds.

Each is an async iterator of text pieces that `core/reply.py` turns into sentences. The
conversation history is the pipeline's own list, shared: the user's turn is appended before a
source runs, tool rounds append their calls and results as they go. A tool that ends or
transfers the call is handed back through `on_action`, to be carried out once the reply has
been heard.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from getpatter.core.providers import LLM, TextDelta, ToolCallRequest, Usage
from getpatter.core.reply import call_user, text_pieces

if TYPE_CHECKING:
    from getpatter.core.session import CallSession
    from getpatter.core.tools import ToolOutcome

log = logging.getLogger("getpatter.core.pipeline")


async def static_text(text: str) -> AsyncIterator[str]:
    """A reply known in advance (the first message, a goodbye)."""
    yield text


class ReplyText:
    """One call's sources of reply text, over its shared `history`."""

    def __init__(
        self,
        call: CallSession,
        history: list[dict[str, Any]],
        llm: LLM | None,
        max_tool_rounds: int,
        on_action: Callable[[ToolOutcome], None],
    ) -> None:
        self.call = call
        self.history = history
        self.llm = llm
        self.max_tool_rounds = max_tool_rounds
        self.on_action = on_action

    async def on_message(self, text: str, dtmf: str) -> AsyncIterator[str]:
        """The user's `on_message` with a `Message` of this turn; its bug is logged with its
        traceback, then the caller hears an apology."""
        from getpatter.core.message import Message

        call = self.call
        msg = Message(
            text=text,
            call_id=call.call_id,
            caller=call.caller,
            callee=call.callee,
            history=[
                {"role": m["role"], "content": m["content"]}
                for m in self.history
                if m["role"] in ("user", "assistant") and m.get("content")
            ],
            dtmf=dtmf,
            run_tool=self._tool_for_on_message,
        )
        on_message = call.callbacks.on_message
        assert on_message is not None
        try:
            async for piece in text_pieces(await call_user(on_message, msg)):
                yield piece
        except Exception:
            log.exception("call %s: on_message raised", call.call_id)
            raise

    async def _tool_for_on_message(self, name: str, arguments: dict[str, Any]) -> Any:
        from getpatter.core.message import tool_result
        from getpatter.core.tools import run_tool

        outcome = await run_tool(self.call, self.call.agent, name, arguments)
        if outcome.action is not None:  # end_call / transfer_call: once this reply is heard
            self.on_action(outcome)
        return tool_result(outcome.output)

    async def llm_reply(self) -> AsyncIterator[str]:
        """The LLM's reply, through up to `max_tool_rounds` rounds of tool calls."""
        from getpatter.core.tools import run_tool, tool_schemas

        llm = self.llm
        assert llm is not None
        call, agent = self.call, self.call.agent
        tools = tool_schemas(agent)
        messages: list[dict[str, Any]] = [{"role": "system", "content": call.system_prompt}]
        said = ""  # what this reply has said so far, across tool rounds
        for _ in range(self.max_tool_rounds):
            requests: list[ToolCallRequest] = []
            round_start = True
            async for event in llm.chat([*messages, *self.history], tools):
                if isinstance(event, TextDelta):
                    text = event.text
                    if round_start and said and not said[-1].isspace() and text[:1].isalnum():
                        text = " " + text  # rounds are separate messages: keep the words apart
                    round_start = round_start and not text
                    said += text
                    yield text
                elif isinstance(event, ToolCallRequest):
                    requests.append(event)
                elif isinstance(event, Usage):
                    call.event(
                        "llm_usage",
                        input=event.input_tokens,
                        output=event.output_tokens,
                        cached=int(event.details.get("cached_tokens") or 0),
                    )
            if not requests:
                return
            self.history.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": r.id,
                            "type": "function",
                            "function": {"name": r.name, "arguments": r.arguments},
                        }
                        for r in requests
                    ],
                }
            )
            for request in requests:
                outcome = await run_tool(call, agent, request.name, request.arguments)
                self.history.append(
                    {"role": "tool", "tool_call_id": request.id, "content": outcome.output}
                )
                if outcome.action is not None:
                    self.on_action(outcome)
        log.warning("call %s: tool loop stopped after %d rounds", call.call_id, _ + 1)
