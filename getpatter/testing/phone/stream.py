"""The network's side of a media WebSocket, as every carrier's fake runs it.

The fake is the WebSocket *client* (as a carrier is): it dials the app's stream url, sends its
opening messages, then a 20 ms frame of the far end's audio at real time for as long as the
stream is up, and plays the app's audio back at real time (`Playback`), echoing a mark only
once the audio queued before it has played. The carrier's subclass supplies its words: the
opening messages, how a numbered message is framed, what it does with each app message.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from .audio import FRAME_BYTES, FRAME_S
from .call import PhoneCall

SOCKET_GONE = (aiohttp.ClientError, ConnectionError, RuntimeError)


class Playback:
    """App audio the far end hears, at 8000 bytes/s; marks echoed once what came before them
    has played. A gap in the app's audio restarts the clock (nothing plays ahead)."""

    def __init__(self, call: PhoneCall, echo: Callable[[str], Awaitable[None]]) -> None:
        self.call = call
        self._echo = echo
        self._buf = bytearray()
        self._queued_total = 0
        self._played_total = 0
        self._marks: collections.deque[tuple[int, str]] = collections.deque()
        self._wake = asyncio.Event()
        self._generation = 0

    def queue(self, audio: bytes) -> None:
        self._buf.extend(audio)
        self._queued_total += len(audio)
        self._wake.set()

    async def mark(self, name: str) -> None:
        """Echo `name` once everything queued so far has played (at once if it has)."""
        if self._played_total >= self._queued_total:
            await self.echo(name)
        else:
            self._marks.append((self._queued_total, name))

    def clear(self) -> list[str]:
        """Drop the audio not played yet; returns the marks that were waiting on it, in order
        (the carrier decides whether they are echoed)."""
        self.call.clears += 1
        self._generation += 1
        self._buf.clear()
        self._queued_total = self._played_total
        pending = [name for _, name in self._marks]
        self._marks.clear()
        return pending

    async def echo(self, name: str) -> None:
        await self._echo(name)
        self.call.marks_echoed.append(name)
        self.call._notify()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                t0, done, generation = loop.time(), 0, self._generation
                while self._buf:
                    take = min(FRAME_BYTES, len(self._buf))
                    done += take
                    delay = t0 + done / 8000 - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if generation != self._generation or not self._buf:
                        break  # cleared while this frame was "playing"
                    take = min(take, len(self._buf))
                    self.call.played.extend(self._buf[:take])
                    del self._buf[:take]
                    self._played_total += take
                    while self._marks and self._marks[0][0] <= self._played_total:
                        await self.echo(self._marks.popleft()[1])
                    self.call._notify()
        except SOCKET_GONE:
            return


class MediaSocket:
    """One media WebSocket session, from the carrier's side; subclassed per carrier."""

    def __init__(self, call: PhoneCall, stream_id: str) -> None:
        self.call = call
        self.stream_id = stream_id
        self.open = False
        self.close_code: int | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._seq = 0
        self._send_lock = asyncio.Lock()
        self._stopped = False
        self.playback = Playback(call, self._echo_mark)

    # --- what a carrier says ---------------------------------------------------------------

    def _numbered(self, event: str, seq: int) -> dict[str, Any]:
        """The head of a numbered message (event, sequence number, stream id)."""
        raise NotImplementedError

    async def _begin(self) -> bool:
        """Send the opening messages and mark the stream open on the call; False: give up."""
        raise NotImplementedError

    async def _frame(self, chunk: int) -> None:
        """Send what the far end says in the `chunk`-th 20 ms."""
        raise NotImplementedError

    async def _on_text(self, text: str) -> None:
        raise NotImplementedError

    async def _on_binary(self, data: bytes) -> None:
        raise NotImplementedError

    def _stop_body(self) -> dict[str, Any]:
        """The `stop` message's body (after the numbered head)."""
        raise NotImplementedError

    async def _echo_mark(self, name: str) -> None:
        raise NotImplementedError

    # --- life --------------------------------------------------------------------------------

    async def connect(
        self, session: aiohttp.ClientSession, url: str, headers: dict[str, str]
    ) -> None:
        """WebSocket handshake; raises aiohttp errors on failure (the carrier reports them)."""
        self._ws = await session.ws_connect(url, headers=headers, autoping=True, max_msg_size=0)

    async def run(self) -> None:
        """Open the stream, then stream until either side closes the socket."""
        ws = self._ws
        assert ws is not None
        if not await self._begin():
            return
        tasks = [asyncio.create_task(self._pump_media()), asyncio.create_task(self.playback.run())]
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await self._on_text(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await self._on_binary(msg.data)
                else:
                    break
        except SOCKET_GONE:
            pass  # socket torn down while we were answering a message
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.open = False
            self.close_code = ws.close_code
            self.call._notify()

    async def stop(self) -> None:
        """The call (or the stream) ends: send `stop` then close the socket with 1000."""
        ws = self._ws
        if ws is None or self._stopped:
            return
        self._stopped = True
        if not ws.closed:
            try:
                await self._send_event("stop", self._stop_body())
                await ws.close(code=1000)
            except SOCKET_GONE:
                pass
        self.open = False
        self.close_code = ws.close_code
        self.call._notify()

    # --- sending ---------------------------------------------------------------------------

    def _record(self, event: str, msg: dict[str, Any]) -> None:
        """A message from the app, kept on the call."""
        self.call.received.append((asyncio.get_running_loop().time(), event, msg))
        self.call._notify()

    async def _send_json(self, msg: dict[str, Any]) -> None:
        assert self._ws is not None
        async with self._send_lock:
            await self._ws.send_str(json.dumps(msg))
            self.call.sent.append((asyncio.get_running_loop().time(), msg["event"], msg))

    async def _send_event(self, event: str, body: dict[str, Any]) -> None:
        """A numbered message: the sequence number is assigned under the send lock, so the
        messages go out in its order."""
        assert self._ws is not None
        async with self._send_lock:
            self._seq += 1
            msg = self._numbered(event, self._seq)
            msg.update(body)
            await self._ws.send_str(json.dumps(msg))
            self.call.sent.append((asyncio.get_running_loop().time(), event, msg))

    async def _pump_media(self) -> None:
        """One `_frame` per 20 ms, paced against the stream's start (no drift)."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        chunk = 0
        try:
            while True:
                chunk += 1
                delay = t0 + chunk * FRAME_S - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._frame(chunk)
        except SOCKET_GONE:
            return  # socket went away under us; the reader notices the close

    def _take_inbound(self) -> bytes:
        """The far end's next 20 ms (silence when it has nothing more to say)."""
        inbound = self.call._inbound
        frame = bytes(inbound[:FRAME_BYTES])
        del inbound[:FRAME_BYTES]
        return frame + b"\xff" * (FRAME_BYTES - len(frame))
