"""The fake's `multi-stream-input` rules, as ElevenLabs' multi-context guide and AsyncAPI
reference state them (docs checked: the "Multi-Context Websocket" guide and the
`/v1/text-to-speech/{voice_id}/multi-stream-input` channel of the AsyncAPI spec):

- a context is created by the first message that names its `context_id` (no id: the
  "default" context); "each connection is limited to 5 concurrent contexts": opening a sixth
  fails the socket with `max_active_conversations` (1008). A context counts until its final
  message has gone out, closing or not;
- `flush: true` generates the context's buffered text now (no final message follows a flush);
- `close_context: true`: "no further audio will be generated" for text not yet flushed, but
  "if it has already been set to flush it will continue flushing": flushed text is still
  spoken, then `{"isFinal": true, "contextId"}`. The id may be used again afterwards, for a new
  context "not linked to the previous" one;
- contexts "timeout after 20 seconds [the `inactivity_timeout`, up to 180] and are closed
  automatically"; "an empty text message on a context" resets its clock. A context that times
  out is closed as by `close_context` (the final message it then gets is unverified);
- `voice_settings` (and `generation_config`) "can only be provided in the first message for a
  given context_id"; changing them later on that context fails the socket (1008, as
  stream-input does; unverified for multi-context);
- `close_socket: true` "flushes all contexts and closes the entire WebSocket connection";
- every server message of a context carries `contextId` (audio and final).

The close race (`FakeElevenLabs.close_race`) is the behaviour other frameworks report in
production (pipecat issue 4681, PR 5282), not a documented rule: a context closed before any of
its audio went out loses its flushed text. With "silent" nothing at all comes for it (no audio,
no error, no final: the report); with "empty_final" its final comes with no audio (the PR).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from getpatter.testing.elevenlabs.generation import FakeElevenLabsSession, Generation

if TYPE_CHECKING:
    from getpatter.testing.elevenlabs.server import FakeElevenLabs

MAX_CONTEXTS = 5
TOO_MANY = (
    f"Maximum simultaneous contexts per WebSocket connection exceeded ({MAX_CONTEXTS}). "
    "Please close an existing context before opening a new one."
)
SETTINGS_CHANGED = (
    "voice_settings field must be provided in the first message for a context and then "
    "either be not provided or not change."
)


class MultiContexts:
    """The contexts of one `multi-stream-input` socket."""

    def __init__(
        self, fake: FakeElevenLabs, session: FakeElevenLabsSession, inactivity: float
    ) -> None:
        self.fake, self.session, self.inactivity = fake, session, inactivity
        self.open: dict[str, Generation] = {}  # by id: contexts still taking input
        self.closing: set[Generation] = set()  # closed, still speaking flushed text

    @property
    def live(self) -> int:
        return len(self.open) + len(self.closing)

    def all(self) -> list[Generation]:
        return [*self.open.values(), *self.closing]

    async def handle(self, data: dict[str, Any]) -> tuple[str, str] | None:
        """Apply one client message; an error `(message, code)` fails the socket."""
        if data.get("close_socket"):
            for each in self.all():
                each.close(generate_buffer=True)
            await asyncio.gather(*(c.worker for c in self.all()), return_exceptions=True)
            return None
        name = str(data.get("context_id") or data.get("contextId") or "default")
        context: Generation | None = self.open.get(name)
        if data.get("close_context"):
            if context is not None:
                self._close(context)
            return None
        if context is None:
            if self.live >= MAX_CONTEXTS:
                return TOO_MANY, "max_active_conversations"
            context = self.open[name] = Generation(self.fake, self.session, name)
            self.session.context_settings[name] = data.get("voice_settings")
        elif "voice_settings" in data and data["voice_settings"] != (
            self.session.context_settings.get(name)
        ):
            return SETTINGS_CHANGED, "invalid_message"
        self._touch(context)
        text = data.get("text")
        if isinstance(text, str) and text.strip():
            context.add(text, bool(data.get("flush")))
        elif data.get("flush"):
            context.flush()
        return None  # an empty text is a keep-alive: the clock was reset above

    def stop(self) -> None:
        for context in self.all():
            context.stop()

    def _close(self, context: Generation) -> None:
        """close_context: flushed text is still spoken, the rest is dropped; or, in the close
        race, the flushed text is lost when none of its audio has gone out yet."""
        self.open.pop(context.name, None)
        if context.timer is not None:
            context.timer.cancel()
        race = self.fake.close_race
        if race and context.pending and not context.sent_audio:
            context.stop()
            self.session.lost.append(context.name)
            if race == "empty_final":
                final = {"isFinal": True, "contextId": context.name}
                asyncio.get_running_loop().create_task(self._send_final(final, context.name))
            return
        self.closing.add(context)
        context.close(generate_buffer=False)
        context.worker.add_done_callback(lambda _: self.closing.discard(context))

    async def _send_final(self, final: dict[str, Any], name: str) -> None:
        try:
            await self.session.ws.send_json(final)
            self.session.finals.append(name)
        except (ConnectionError, RuntimeError):
            pass

    def _touch(self, context: Generation) -> None:
        if context.timer is not None:
            context.timer.cancel()
        loop = asyncio.get_running_loop()
        context.timer = loop.call_later(self.inactivity, self._expire, context)

    def _expire(self, context: Generation) -> None:
        if self.open.get(context.name) is not context:
            return
        if context.pending:  # still speaking: not idle
            self._touch(context)
            return
        self.session.timed_out.append(context.name)
        self._close(context)
