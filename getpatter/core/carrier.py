"""The carrier contract: what a carrier (ours under getpatter/carriers/, or a third party's)
provides, and the narrow call table it works against.

A carrier is a plugin like any provider: a module in the entry-point group
``getpatter.plugins`` registers a ``ProviderSpec("carrier", name, "module:Class")``, and the
server builds ``Class(calls, config)`` with a `CallTable` (below) and the `LocalConfig` (the
carrier reads its own fields of it). Core never names a carrier module.

A carrier does five things, and only the carrier knows its wire formats:

- **webhooks** — `routes()`: HTTP routes that check the carrier's signature, open calls in
  the table (`open_call`) and answer with the carrier's instructions to stream;
- **media** — `parse()` one media-socket message into a `core.media` event, and `encoder()`
  to write the agent's audio, marks and clears in the carrier's words. Before a stream is
  authenticated the server reads its messages with `parse_opening()` if the carrier has one
  (it must change no state: these messages come from anyone), and `parse()` from the `start`
  that authenticated it on;
- **call control** — the `CallControl` a call uses: hang up, transfer, record, last words;
- **placing a call** — `dial()` a session the table made for it (`Patter.call()`);
- **pointing a number at us** — `point_at(host)`, used by the tunnel, returning how to undo it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from getpatter.core.media import MediaEvent
from getpatter.core.playout import MediaEncoder
from getpatter.core.session import CallControl, CallInfo, CallSession

if TYPE_CHECKING:
    from aiohttp import web

#: Undoes a `point_at`: puts back the webhook the number had before.
Restore = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class DialRequest:
    """An outbound call as the carrier is asked to place it."""

    to: str
    from_: str
    machine_detection: bool  # also on when a voicemail message is to be left
    ring_timeout: int | None  # seconds; None: the carrier's own default


@dataclass(frozen=True, slots=True)
class Dialed:
    """The carrier took the call: its own id for it, and its first status if it gave one."""

    call_id: str
    status: str = ""


class CallTable(Protocol):
    """The server's calls, as a carrier adapter sees them (and all of the server it sees)."""

    def public_url(self, path: str) -> str:
        """`https://<public host><path>`: where the carrier reaches this node."""

    def public_ws_url(self, path: str) -> str:
        """`wss://<public host><path>`."""

    def stream_url(self, key: str) -> str:
        """The media socket of the call `key` (the generic route, `/ws/stream/<key>`)."""

    async def open_call(
        self, info: CallInfo, *, key: str | None = None
    ) -> tuple[CallSession, str] | None:
        """A call the carrier is about to stream, at its first webhook: its session and its
        single-use media token (to hand the carrier, which must bring it back in the stream's
        `start`); its record exists in history from now on. None when this call id was seen
        before (a replayed or duplicated webhook): no session, and the carrier should be told
        to drop the call rather than stream it."""

    def find_call(self, carrier_id: str) -> CallSession | None:
        """The live call the carrier knows by `carrier_id`."""

    def call_by_key(self, key: str) -> CallSession | None:
        """The live call by our own key (what we asked the carrier to echo back)."""

    def bind_carrier_id(self, carrier_id: str, key: str) -> None:
        """From now on `find_call(carrier_id)` finds the call `key`."""

    async def media_socket(self, request: web.Request) -> web.StreamResponse:
        """The media WebSocket handler, for carriers that want it at a path of their own;
        the path must carry the call key as `{call_id}`."""


class Carrier(CallControl, Protocol):
    """What the server needs from a carrier; `CallControl` (core/session.py) is the part a
    call uses directly: `hangup`, `transfer`, `start_recording`, `say_and_hangup`."""

    name: str

    def routes(self) -> list[web.RouteDef]: ...

    def parse(self, text: str) -> MediaEvent:
        """One message of an authenticated stream (its `start` included) → one event; raises
        `MalformedMessage`. May keep per-stream state (ordering, DTMF de-duplication)."""

    def encoder(self, stream_id: str) -> MediaEncoder: ...

    async def dial(self, call: CallSession, token: str, request: DialRequest) -> Dialed:
        """Place `call`, a session the server made for it, streaming to it with `token`.
        Raises `CallError` (refused) or `PatterConnectionError` (unreachable)."""

    async def point_at(self, host: str) -> Restore:
        """Point our number's webhooks at `https://<host>`; the result puts them back."""

    async def aclose(self) -> None: ...
