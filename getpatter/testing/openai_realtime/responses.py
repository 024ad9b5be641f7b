"""The fake model's responses: speaking a scripted text or calling a function, cancelling.

See `getpatter.testing.openai_realtime` for the behaviour; this is the response lifecycle:
response.created → output items → deltas → .done events → response.done (with usage).
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
from typing import TYPE_CHECKING, Any

from getpatter.testing.model_script import FunctionCall, Reply, spoken_text, tone

from .wire import Item, Rejected, Response, new_id

if TYPE_CHECKING:
    from .session import FakeRealtimeSession


class Responder:
    """One session's responses: at most one in flight (`active`)."""

    def __init__(self, session: FakeRealtimeSession) -> None:
        self.session = session
        self.active: Response | None = None

    def _next_reply(self) -> Reply:
        return self.session.fake.next_reply()

    async def create(self, event: dict[str, Any]) -> None:
        params = event.get("response") or {}
        if not isinstance(params, dict):
            raise Rejected("invalid_type", "response must be an object", "response")
        if self.active is not None:
            raise Rejected(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: "
                f"{self.active.id}. Wait until the response is finished before creating "
                "a new one.",
            )
        instructions = params.get("instructions")
        metadata = params.get("metadata") if isinstance(params.get("metadata"), dict) else None
        reply: Reply
        if isinstance(instructions, str) and instructions.strip():
            reply = spoken_text(instructions)
        else:
            reply = self._next_reply()
        self.start(reply, metadata)

    async def cancel_event(self, event: dict[str, Any]) -> None:
        wanted = event.get("response_id")
        if self.active is None or (wanted and wanted != self.active.id):
            raise Rejected(
                "response_cancel_not_active",
                "Cancellation failed: no active response found",
            )
        await self.cancel("client_cancelled")

    def start(self, reply: Reply, metadata: dict[str, Any] | None = None) -> None:
        response = Response(new_id("resp"), metadata)
        self.active = response
        response.task = asyncio.get_running_loop().create_task(self._run_response(response, reply))

    async def cancel(self, reason: str) -> None:
        """Stop the response in flight; it ends with `response.done` status cancelled."""
        response = self.active
        if response is None:
            return
        self.active = None
        task = response.task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if (current := asyncio.current_task()) is not None and current.cancelling():
                    raise
        if response.done:
            return
        response.done = True
        for item in response.items:
            if item.status == "in_progress":
                item.status = "incomplete"
                await self.session.send(
                    "response.output_item.done",
                    response_id=response.id,
                    output_index=response.items.index(item),
                    item=item.as_json(),
                )
        await self._done(response, "cancelled", {"type": "cancelled", "reason": reason})

    def _json(self, response: Response, status: str) -> dict[str, Any]:
        return {
            "object": "realtime.response",
            "id": response.id,
            "status": status,
            "status_details": None,
            "output": [i.as_json() for i in response.items],
            "conversation_id": "conv_" + self.session.id[5:],
            "output_modalities": ["audio"],
            "max_output_tokens": "inf",
            "audio": {
                "output": {
                    "format": self.session.config["audio"]["output"]["format"],
                    "voice": self.session.voice,
                }
            },
            "usage": None,
            "metadata": response.metadata,
        }

    async def _done(
        self, response: Response, status: str, details: dict[str, Any] | None = None
    ) -> None:
        body = self._json(response, status)
        body["status_details"] = details
        text_in = len(self.session.instructions) // 4 + 10 * len(self.session.tool_names)
        audio_in = int(self.session.input_audio_ms_total / 100)
        audio_out = int(response.audio_ms / 50)
        text_out = response.output_tokens_text
        body["usage"] = {
            "total_tokens": text_in + audio_in + audio_out + text_out,
            "input_tokens": text_in + audio_in,
            "output_tokens": audio_out + text_out,
            "input_token_details": {
                "text_tokens": text_in,
                "audio_tokens": audio_in,
                "image_tokens": 0,
                "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }
        await self.session.send("response.done", response=body)

    async def _run_response(self, response: Response, reply: Reply) -> None:
        await self.session.send("response.created", response=self._json(response, "in_progress"))
        if self.session.fake.first_audio_delay:
            await asyncio.sleep(self.session.fake.first_audio_delay)
        if isinstance(reply, FunctionCall):
            await self._speak_function_call(response, reply)
        else:
            await self._speak_text(response, reply)
        response.done = True
        if self.active is response:
            self.active = None
        await self._done(response, "completed")

    async def _add_output_item(self, response: Response, item: Item) -> int:
        previous = self.session.last_item
        self.session.items[item.id] = item
        self.session.last_item = item.id
        response.items.append(item)
        index = len(response.items) - 1
        await self.session.send(
            "response.output_item.added",
            response_id=response.id,
            output_index=index,
            item=item.as_json(),
        )
        await self.session.send(
            "conversation.item.added", previous_item_id=previous, item=item.as_json()
        )
        return index

    async def _speak_function_call(self, response: Response, call: FunctionCall) -> None:
        item = Item(
            new_id("item"),
            "function_call",
            status="in_progress",
            call_id=new_id("call"),
            name=call.name,
        )
        index = await self._add_output_item(response, item)
        arguments = call.arguments_json
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            item.arguments += piece
            await self.session.send(
                "response.function_call_arguments.delta",
                response_id=response.id,
                item_id=item.id,
                output_index=index,
                call_id=item.call_id,
                delta=piece,
            )
        await self.session.send(
            "response.function_call_arguments.done",
            response_id=response.id,
            item_id=item.id,
            output_index=index,
            call_id=item.call_id,
            name=item.name,
            arguments=arguments,
        )
        response.output_tokens_text += max(1, len(arguments) // 4)
        item.status = "completed"
        await self.session.send(
            "response.output_item.done",
            response_id=response.id,
            output_index=index,
            item=item.as_json(),
        )
        await self.session.send("conversation.item.done", item=item.as_json())

    async def _speak_text(self, response: Response, text: str) -> None:
        item = Item(new_id("item"), "message", role="assistant", status="in_progress")
        index = await self._add_output_item(response, item)
        ids = {"response_id": response.id, "item_id": item.id, "output_index": index}
        await self.session.send(
            "response.content_part.added",
            **ids,
            content_index=0,
            part={"type": "audio", "transcript": ""},
        )
        fake = self.session.fake
        audio, bytes_per_ms = tone(
            text, self.session.output_format, fake.seconds_per_char, fake.tone_hz
        )
        chunk = max(1, self.session.fake.chunk_ms * bytes_per_ms)
        pieces = [audio[i : i + chunk] for i in range(0, len(audio), chunk)]
        words = re.findall(r"\S+\s*", text)
        said = 0
        for n, piece in enumerate(pieces, 1):
            # the transcript runs slightly ahead of the audio, as the real service's does
            target = min(len(words), math.ceil(len(words) * min(1.0, (n + 1) / len(pieces))))
            if target > said:
                delta = "".join(words[said:target])
                said = target
                item.transcript += delta
                await self.session.send(
                    "response.output_audio_transcript.delta", **ids, content_index=0, delta=delta
                )
            ms = len(piece) / bytes_per_ms
            item.audio_ms += ms
            response.audio_ms += ms
            await self.session.send(
                "response.output_audio.delta",
                **ids,
                content_index=0,
                delta=base64.b64encode(piece).decode("ascii"),
            )
            if self.session.fake.audio_speed > 0:
                await asyncio.sleep(ms / 1000 / self.session.fake.audio_speed)
        response.output_tokens_text += max(1, len(text) // 4)
        await self.session.send("response.output_audio.done", **ids, content_index=0)
        await self.session.send(
            "response.output_audio_transcript.done", **ids, content_index=0, transcript=text
        )
        item.transcript = text
        await self.session.send(
            "response.content_part.done",
            **ids,
            content_index=0,
            part={"type": "audio", "transcript": text},
        )
        item.status = "completed"
        await self.session.send(
            "response.output_item.done",
            response_id=response.id,
            output_index=index,
            item=item.as_json(),
        )
        await self.session.send("conversation.item.done", item=item.as_json())
