"""One call's OpenAI Realtime session: audio both ways, barge-in, tools, guardrails, faults.

Data flow: `push_audio` queues the carrier's μ-law (untouched) on the `RealtimeLink`; server
events come back here and become calls on the `CallSession`: each assistant audio item is one
utterance (`begin_utterance(item_id)` … `play(delta)` … `end_utterance(item_id)`), its audio
`audio/pcmu` as the model sent it.

Transcripts record what the caller heard: an assistant entry is added once its audio has
played in full, or, if the caller barged in, cut to the part that played (`interrupted=True`).

Faults: an `error` event is logged and recorded and the call goes on. A socket that drops
mid-call is reopened once, as a new session whose instructions carry the conversation so far;
if that fails too (or the first connection fails, e.g. a bad key) the carrier speaks the
engine's `failure_message` in its own voice and hangs up (reason `engine_failed`): the model
that would have apologised is the thing that is gone, and an open line with nobody on it is
worse than a clear goodbye.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from getpatter.core.media import InboundAudio
from getpatter.core.tools import ToolOutcome, run_tool, tool_schemas
from getpatter.errors import PatterConnectionError, ProviderError
from getpatter.plugins.openai.realtime_link import RealtimeLink

if TYPE_CHECKING:
    import aiohttp

    from getpatter.agent import Guardrail
    from getpatter.core.session import CallSession
    from getpatter.plugins.openai.realtime import OpenAIRealtime

log = logging.getLogger(__name__)

SCRIPTED_KEY: Final = "getpatter"  # response metadata marking responses whose text we chose
BYTES_PER_MS: Final = 8  # audio/pcmu: 8 kHz, one byte per sample


def say_exactly(text: str) -> str:
    """Response instructions that make the model speak `text` verbatim."""
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


@dataclass
class _Utterance:
    """One assistant audio item, from its first delta until the caller heard it (or not)."""

    item_id: str
    response_id: str
    link: int
    scripted: bool
    text: str = ""  # transcript so far
    final_text: str | None = None
    audio_bytes: int = 0
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
    tools: list[tuple[str, asyncio.Task[ToolOutcome]]] = field(default_factory=list)


class RealtimeCall:
    """The per-call half of `OpenAIRealtime` (an `EngineCall`)."""

    def __init__(self, engine: OpenAIRealtime, call: CallSession) -> None:
        self.engine = engine
        self.call = call
        self.agent = call.agent
        self.usage: list[dict[str, Any]] = []
        self.reconnects = 0
        self._link = RealtimeLink(engine, call, self._handle)
        self._closing = False
        self._active_response: str | None = None
        self._responses: dict[str, _Response] = {}
        self._utterances: dict[str, _Utterance] = {}
        self._dropped_items: set[str] = set()
        self._dropped_responses: set[str] = set()
        self._http: aiohttp.ClientSession | None = None

    # --- EngineCall ----------------------------------------------------------------------

    async def start(self) -> None:
        self.call.spawn(self._run(), "openai-realtime")

    def push_audio(self, audio: InboundAudio) -> None:
        if self._closing:
            return
        self._link.send_audio(audio.payload)

    def on_caller_speech(self, kind: str, at: float) -> None:
        """The session's VAD heard the caller start or stop talking (after `push_audio`).

        With the model's turn detection on, this is the other half of "whichever is first":
        our VAD usually hears an interruption before the model's `speech_started` arrives, so
        the agent stops sooner. It only cuts speech that is playing; a response still being
        thought about is the model's own VAD's business. With turn detection off, our VAD is
        the only one: it ends the caller's turns and cancels whatever the model is doing."""
        if self._closing:
            return
        own_turns = self.engine.turn_detection is None
        if kind == "speech_started":
            if self.engine.barge_in and (own_turns or self._speaking()):
                self.call.spawn(self._barge_in(), "barge-in")
        elif own_turns:
            self._send({"type": "input_audio_buffer.commit"})
            self._send({"type": "response.create"})

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
        self._send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": text}],
                },
            }
        )
        self._send({"type": "response.create"})

    async def aclose(self) -> None:
        self._closing = True
        for utt in list(self._utterances.values()):  # speech still playing at hang-up
            if not utt.begun or utt.recorded or utt.interrupted or utt.blocked:
                continue
            if utt.done is not None and utt.done.done() and utt.done.result():
                utt.played = True  # heard in full; only the bookkeeping was cut short
                await self._maybe_record(utt)
            else:
                await self._record_heard(utt)
        await self._link.close()
        if self._http is not None:
            await self._http.close()

    # --- connection life -----------------------------------------------------------------

    async def _run(self) -> None:
        if not await self._open():
            return
        if self.call.first_message:
            self._say(self.call.first_message, "first_message")
        while True:
            await self._link.receive()
            if self._closing:
                return
            if self.reconnects >= 1:
                self._fail(PatterConnectionError("the OpenAI Realtime connection dropped again"))
                return
            self.reconnects += 1
            log.warning(
                "call %s: the OpenAI Realtime connection dropped; reconnecting", self.call.call_id
            )
            self.call.event("engine_reconnect", engine="openai_realtime")
            if not await self._open():
                return
            last = self.call.transcript[-1]["role"] if self.call.transcript else ""
            if last == "user":  # the caller is waiting for an answer
                self._send({"type": "response.create"})

    async def _open(self) -> bool:
        """A new session (the first, or after a drop); False if the call cannot go on."""
        self._active_response = None
        self._responses.clear()
        try:
            await self._link.open(self._session_config(resumed=self._link.number > 0))
        except (PatterConnectionError, ProviderError) as exc:
            self._fail(exc)
            return False
        return True

    def _fail(self, exc: Exception) -> None:
        log.error(
            "call %s: OpenAI Realtime failed (%s: %s); hanging up",
            self.call.call_id,
            type(exc).__name__,
            exc,
        )
        self.call.event("error", where="openai_realtime", error=f"{type(exc).__name__}: {exc}")
        if not self._closing and self.call.state != "ended":
            goodbye = self.engine.failure_message
            self.call.spawn(self.call.hangup("engine_failed", goodbye=goodbye), "hangup")

    def _session_config(self, *, resumed: bool) -> dict[str, Any]:
        engine = self.engine
        instructions = self.call.system_prompt or "You are a helpful voice assistant on a call."
        if resumed:
            instructions += self._history_note()
        audio_in: dict[str, Any] = {
            "format": {"type": "audio/pcmu"},
            "turn_detection": engine.turn_detection,
        }
        if engine.input_transcription:
            transcription: dict[str, str] = {"model": engine.input_transcription}
            language = self.agent.language.replace("_", "-").split("-")[0].lower()
            if len(language) == 2:
                transcription["language"] = language
            audio_in["transcription"] = transcription
        voice: str | dict[str, str] = engine.voice
        if engine.voice.startswith("voice_"):
            voice = {"id": engine.voice}
        return {
            "type": "realtime",
            "instructions": instructions,
            "output_modalities": ["audio"],
            "audio": {
                "input": audio_in,
                "output": {"format": {"type": "audio/pcmu"}, "voice": voice},
            },
            "tools": [{"type": "function", **schema} for schema in tool_schemas(self.agent)],
            "tool_choice": "auto",
        }

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

    # --- sending -------------------------------------------------------------------------

    def _send(self, event: dict[str, Any]) -> None:
        self._link.send(event)

    def _say(self, text: str, why: str) -> None:
        """Have the model speak `text` verbatim (the first message, a guardrail replacement)."""
        self._send(
            {
                "type": "response.create",
                "response": {"instructions": say_exactly(text), "metadata": {SCRIPTED_KEY: why}},
            }
        )

    # --- receiving -----------------------------------------------------------------------

    async def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "response.output_audio.delta":
            self._on_audio(event)
        elif kind == "response.output_audio_transcript.delta":
            await self._on_transcript_delta(event)
        elif kind == "response.output_audio.done":
            self._on_audio_done(event)
        elif kind == "response.output_audio_transcript.done":
            utt = self._utterance(event)
            if utt is not None:
                utt.final_text = str(event.get("transcript") or utt.text)
                await self._maybe_record(utt)
        elif kind == "input_audio_buffer.speech_started":
            if self.engine.barge_in:
                await self._barge_in()
        elif kind == "conversation.item.input_audio_transcription.completed":
            text = str(event.get("transcript") or "").strip()
            if text:
                await self.call.add_transcript("user", text)
        elif kind == "response.created":
            self._on_response_created(event)
        elif kind == "response.function_call_arguments.done":
            self._on_function_call(event)
        elif kind == "response.done":
            self._on_response_done(event)
        elif kind == "error":
            self._on_error(event)

    def _utterance(self, event: dict[str, Any]) -> _Utterance | None:
        """The utterance an output event belongs to; None if it must not be heard."""
        item_id = str(event.get("item_id") or "")
        response_id = str(event.get("response_id") or "")
        if item_id in self._dropped_items or response_id in self._dropped_responses:
            return None
        utt = self._utterances.get(item_id)
        if utt is None:
            response = self._responses.get(response_id)
            scripted = response is not None and response.scripted
            utt = _Utterance(item_id, response_id, self._link.number, scripted)
            self._utterances[item_id] = utt
        return utt

    def _on_audio(self, event: dict[str, Any]) -> None:
        utt = self._utterance(event)
        if utt is None or utt.settled:
            return
        try:
            audio = base64.b64decode(event.get("delta") or "")
        except ValueError:
            log.warning("call %s: bad base64 in a Realtime audio delta", self.call.call_id)
            return
        if not utt.begun:
            utt.begun = True
            self.call.begin_utterance(utt.item_id)
        utt.audio_bytes += len(audio)
        self.call.play(audio)

    def _on_audio_done(self, event: dict[str, Any]) -> None:
        utt = self._utterance(event)
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
            self._utterances.pop(utt.item_id, None)  # no event can follow its transcript.done
            if utt.final_text:
                await self.call.add_transcript("assistant", utt.final_text)

    async def _record_heard(self, utt: _Utterance, **extra: Any) -> None:
        """Record the part of `utt` the caller heard (it was cut short)."""
        utt.recorded = True
        self._utterances.pop(utt.item_id, None)  # its later events are dropped by id
        heard_ms = self.call.heard_seconds(utt.item_id) * 1000
        total_ms = utt.audio_bytes / BYTES_PER_MS
        text = cut_to_heard(utt.best_text, heard_ms / total_ms if total_ms else 0.0)
        if text:
            await self.call.add_transcript("assistant", text, interrupted=True, **extra)

    async def _on_transcript_delta(self, event: dict[str, Any]) -> None:
        utt = self._utterance(event)
        if utt is None or utt.settled:
            return
        utt.text += str(event.get("delta") or "")
        if utt.scripted:
            return  # our own words (first message, a replacement) are not checked
        for guardrail in self.agent.guardrails:
            try:
                hit = guardrail.violates(utt.text)
            except Exception:
                log.exception("call %s: guardrail %r raised", self.call.call_id, guardrail.name)
                continue
            if hit:
                await self._block(utt, guardrail)
                return

    def _on_response_created(self, event: dict[str, Any]) -> None:
        response = event.get("response") or {}
        rid = str(response.get("id") or "")
        metadata = response.get("metadata") or {}
        scripted = isinstance(metadata, dict) and SCRIPTED_KEY in metadata
        self._active_response = rid
        self._responses[rid] = _Response(rid, scripted)

    def _on_function_call(self, event: dict[str, Any]) -> None:
        rid = str(event.get("response_id") or "")
        if rid in self._dropped_responses:
            return  # the caller interrupted: that turn's tool calls are dropped too
        response = self._responses.setdefault(rid, _Response(rid, scripted=False))
        name = str(event.get("name") or "")
        call_id = str(event.get("call_id") or "")
        arguments = str(event.get("arguments") or "")
        task = self.call.spawn(self._run_tool(name, arguments), f"tool:{name}")
        response.tools.append((call_id, task))

    async def _run_tool(self, name: str, arguments: str) -> ToolOutcome:
        tool = self.agent.get_tool(name)
        if tool is not None and tool.webhook_url and self._http is None:
            import aiohttp

            self._http = aiohttp.ClientSession()
        return await run_tool(self.call, self.agent, name, arguments, http=self._http)

    def _on_response_done(self, event: dict[str, Any]) -> None:
        response = event.get("response") or {}
        rid = str(response.get("id") or "")
        status = str(response.get("status") or "")
        if self._active_response == rid:
            self._active_response = None
        if status == "failed":
            log.warning(
                "call %s: Realtime response failed: %s",
                self.call.call_id,
                response.get("status_details"),
            )
        self._record_usage(rid, status, response.get("usage") or {})
        state = self._responses.pop(rid, None)
        if state is not None and state.tools:
            cancelled = status == "cancelled" or rid in self._dropped_responses
            self.call.spawn(self._finish_tools(state.tools, cancelled, self._link.number), "tools")

    def _record_usage(self, rid: str, status: str, usage: dict[str, Any]) -> None:
        inp = usage.get("input_token_details") or {}
        out = usage.get("output_token_details") or {}
        turn = {
            "response_id": rid,
            "status": status,
            "model": self.engine.model,
            "input_tokens": int(usage.get("input_tokens") or 0),
            "output_tokens": int(usage.get("output_tokens") or 0),
            "input_audio_tokens": int(inp.get("audio_tokens") or 0),
            "input_text_tokens": int(inp.get("text_tokens") or 0),
            "cached_tokens": int(inp.get("cached_tokens") or 0),
            "output_audio_tokens": int(out.get("audio_tokens") or 0),
            "output_text_tokens": int(out.get("text_tokens") or 0),
        }
        self.usage.append(turn)
        self.call.event("usage", **turn)

    def _on_error(self, event: dict[str, Any]) -> None:
        error = event.get("error") or {}
        code, message = error.get("code"), error.get("message")
        if code == "response_cancel_not_active":  # the server's VAD got there first
            log.debug("call %s: nothing to cancel", self.call.call_id)
            return
        log.warning("call %s: OpenAI Realtime error %s: %s", self.call.call_id, code, message)
        self.call.event("engine_error", engine="openai_realtime", code=code, message=message)

    # --- tools ---------------------------------------------------------------------------

    async def _finish_tools(
        self, tools: Sequence[tuple[str, asyncio.Task[ToolOutcome]]], cancelled: bool, link: int
    ) -> None:
        """Send every output of a response's tool calls, then act or let the model go on.

        Runs after `response.done`: a `response.create` while a response is active is refused.
        Outputs for a session that has since been replaced (a reconnect) are not sent: their
        calls don't exist in the new one.
        """
        outcomes = []
        for call_id, task in tools:
            outcome = await task
            outcomes.append(outcome)
            cancelled = cancelled or link != self._link.number
            if link != self._link.number:
                continue
            self._send(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "function_call_output",
                        "call_id": call_id,
                        "output": outcome.output,
                    },
                }
            )
        action = next((o for o in outcomes if o.action is not None), None)
        if action is None:
            if not cancelled:
                self._send({"type": "response.create"})
            return
        await self._speech_played()
        if action.action == "end_call":
            await self.call.hangup("agent_hangup")
            return
        try:
            await self.call.transfer(action.target)
        except Exception as exc:
            log.warning("call %s: transfer to %s failed: %s", self.call.call_id, action.target, exc)
            self._say("Sorry, I couldn't transfer your call. How else can I help?", "transfer")

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

        Synchronous, so no audio delta can slip in between this and the clear.
        """
        playing = [u for u in self._utterances.values() if u.begun and not u.settled]
        for utt in playing:
            self._dropped_items.add(utt.item_id)
        if response_id is not None and response_id not in self._dropped_responses:
            self._dropped_responses.add(response_id)
            self._send({"type": "response.cancel", "response_id": response_id})
        return playing

    def _truncate(self, utt: _Utterance) -> int:
        """Tell the model how much of `utt` was heard, so its memory matches the caller's."""
        heard_ms = int(self.call.heard_seconds(utt.item_id) * 1000)
        heard_ms = max(0, min(heard_ms, utt.audio_bytes // BYTES_PER_MS))
        if utt.link == self._link.number:  # items of an earlier session don't exist any more
            self._send(
                {
                    "type": "conversation.item.truncate",
                    "item_id": utt.item_id,
                    "content_index": 0,
                    "audio_end_ms": heard_ms,
                }
            )
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
        self._say(guardrail.replacement, "guardrail")
