"""Telnyx on the wire: Ed25519 webhook signatures, and media-streaming messages ↔ media events.

This module knows Telnyx's JSON, base64 and signature formats and nothing else; what a call
does with the events lives in the session and engines. REST commands are in `rest.py`,
the HTTP routes and call control in `adapter.py`.

PyNaCl (the `telnyx` extra) is imported by `WebhookVerifier` only, so parsing media needs
nothing beyond the standard library.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from getpatter.core.media import (
    DtmfReceived,
    Ignored,
    InboundAudio,
    MalformedMessage,
    MarkPlayed,
    MediaEvent,
    StreamStarted,
    StreamStopped,
    audio_payload,
    field,
    json_message,
    str_field,
)
from getpatter.errors import SignatureError

log = logging.getLogger(__name__)

SIGNATURE_TOLERANCE = 300  # seconds, as Telnyx's own SDK checks `telnyx-timestamp`
SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"


# --- webhook signatures --------------------------------------------------------------------


class ReplayCache:
    """(timestamp, signature) pairs already accepted, kept as long as they could be replayed.

    An entry older than the tolerance window is useless (the timestamp check refuses it), so
    entries expire with the window; `max_entries` bounds memory under a flood. Evicting a live
    entry when full re-opens that one pair to replay — the bound is sized so that takes more
    than ~60 genuine webhooks a second for five minutes.
    """

    def __init__(self, window: int = SIGNATURE_TOLERANCE, max_entries: int = 20_000) -> None:
        self.window = window
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[int, str], None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_add(self, timestamp: int, signature: str, now: float) -> bool:
        """True the first time a pair is seen; False for a replay."""
        self._expire(now)
        key = (timestamp, signature)
        if key in self._seen:
            return False
        self._seen[key] = None
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        return True

    def discard(self, timestamp: int, signature: str) -> None:
        """Forget a pair: its request was not taken, and may be delivered again."""
        self._seen.pop((timestamp, signature), None)

    def _expire(self, now: float) -> None:
        # Insertion order is roughly timestamp order; a stray old entry behind a newer one
        # just lives until it reaches the front (it is still bounded by max_entries).
        while self._seen:
            (ts, _sig) = next(iter(self._seen))
            if ts >= now - self.window:
                break
            self._seen.popitem(last=False)


def decode_public_key(public_key: str) -> bytes:
    try:
        raw = base64.b64decode(public_key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise SignatureError("the Telnyx public key is not a base64 32-byte Ed25519 key")
    return raw


class WebhookVerifier:
    """Checks `telnyx-signature-ed25519` over `f"{telnyx-timestamp}|{raw body}"`.

    Refuses bad signatures, timestamps more than `tolerance` seconds from now (either way),
    and a second delivery of a (timestamp, signature) pair within the window.
    """

    def __init__(self, public_key: str, *, tolerance: int = SIGNATURE_TOLERANCE) -> None:
        from nacl.signing import VerifyKey  # the `telnyx` extra; only Telnyx needs it

        self._key = VerifyKey(decode_public_key(public_key))
        self.tolerance = tolerance
        self.replays = ReplayCache(tolerance)

    def __repr__(self) -> str:
        return f"WebhookVerifier(tolerance={self.tolerance})"

    def verify(
        self, body: bytes, signature: str, timestamp: str, *, now: float | None = None
    ) -> None:
        """Raise SignatureError unless this is a fresh, genuinely signed Telnyx request."""
        from nacl.exceptions import BadSignatureError

        if not signature or not timestamp:
            raise SignatureError("missing telnyx-signature-ed25519 or telnyx-timestamp header")
        stamp = timestamp.strip()
        if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
            raise SignatureError("telnyx-timestamp is not a Unix time")
        ts = int(stamp)  # at most 12 digits: no float overflow below
        now = time.time() if now is None else now
        if abs(now - ts) > self.tolerance:
            raise SignatureError("telnyx-timestamp is outside the tolerance window (stale)")
        try:
            sig = base64.b64decode(signature.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("telnyx-signature-ed25519 is not base64") from None
        if len(sig) != 64:
            raise SignatureError("telnyx-signature-ed25519 is not a 64-byte signature")
        try:
            self._key.verify(timestamp.encode() + b"|" + body, sig)
        except BadSignatureError:
            raise SignatureError("bad webhook signature") from None
        if not self.replays.check_and_add(ts, signature.strip(), now):
            raise SignatureError("webhook replayed (timestamp and signature already seen)")

    def forget(self, signature: str, timestamp: str) -> None:
        """Un-see a verified request that was refused (503: this node is full): the balancer
        passes that very request on, and its last try (every node full) comes back to a node
        that refused it — which must not take it for a replay. Nothing new is let through: a
        node that never saw a request accepts it anyway, and a call already opened elsewhere
        is known to the shared call store."""
        stamp = timestamp.strip()
        if stamp.isascii() and stamp.isdigit() and len(stamp) <= 12:
            self.replays.discard(int(stamp), signature.strip())


# --- client_state --------------------------------------------------------------------------


def encode_client_state(text: str) -> str:
    """Telnyx echoes `client_state` (base64) in later webhooks; we carry the session key."""
    return base64.b64encode(text.encode()).decode()


def decode_client_state(value: object) -> str:
    if not isinstance(value, str) or not value:
        return ""
    try:
        return base64.b64decode(value, validate=True).decode()
    except (binascii.Error, ValueError):
        return ""


# --- media streaming -----------------------------------------------------------------------


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _custom_parameters(start: Mapping[str, object]) -> dict[str, str]:
    """`custom_parameters` as a dict; the docs show an object, the command takes a list of
    `{"name","value"}` pairs, so accept both shapes."""
    raw = start.get("custom_parameters") or {}
    if isinstance(raw, Mapping):
        return {str(k): str(v) for k, v in raw.items()}
    if isinstance(raw, list):
        out: dict[str, str] = {}
        for item in raw:
            if isinstance(item, Mapping) and "name" in item:
                out[str(item["name"])] = str(item.get("value", ""))
        return out
    raise MalformedMessage("start.custom_parameters is neither an object nor a list")


@dataclass(slots=True, frozen=True)
class ParsedMessage:
    """A media event plus what the adapter needs to order and attribute it."""

    event: MediaEvent
    stream_id: str = ""
    sequence: int | None = None


def parse_media_message(text: str | bytes, *, quiet: bool = False) -> ParsedMessage:
    """One Telnyx media-streaming message → one media event. Raises MalformedMessage.

    The per-call token for the generic server travels in `start.custom_parameters["token"]`
    (we pass it there in the answer/dial command, besides `stream_auth_token`). `quiet`: log
    nothing (a stream not yet authenticated may be anyone's).
    """
    msg = json_message(text)
    event = msg.get("event")
    stream_id = msg.get("stream_id")
    stream_id = str(stream_id) if isinstance(stream_id, str | int) else ""
    seq = _int_or_none(msg.get("sequence_number"))
    if event == "media":
        str_field(msg, "media", "payload")  # `media` is an object with a payload
        track = msg["media"].get("track", "inbound")
        if track not in ("inbound", "inbound_track"):
            return ParsedMessage(Ignored(f"media:{track}"), stream_id, None)
        audio = audio_payload(msg, "media", "payload")
        try:
            ts = float(str_field(msg, "media", "timestamp")) / 1000.0
        except (MalformedMessage, ValueError):
            ts = 0.0
        return ParsedMessage(InboundAudio(audio, ts), stream_id, seq)
    if event == "mark":
        return ParsedMessage(MarkPlayed(str_field(msg, "mark", "name")), stream_id, seq)
    if event == "dtmf":
        return ParsedMessage(DtmfReceived(str_field(msg, "dtmf", "digit")), stream_id, seq)
    if event == "start":
        start = field(msg, "start")
        if not isinstance(start, Mapping):
            raise MalformedMessage("start is not an object")
        if not stream_id:
            raise MalformedMessage("start has no stream_id")
        media_format = start.get("media_format")
        encoding = media_format.get("encoding") if isinstance(media_format, Mapping) else None
        if encoding not in (None, "PCMU", "audio/x-mulaw") and not quiet:
            log.warning("Telnyx stream %s carries %s, not the PCMU asked for", stream_id, encoding)
        return ParsedMessage(
            StreamStarted(
                stream_id=stream_id,
                call_id=str_field(msg, "start", "call_control_id"),
                parameters=_custom_parameters(start),
            ),
            stream_id,
            seq,
        )
    if event == "stop":
        return ParsedMessage(StreamStopped("stop"), stream_id, seq)
    if event == "error":
        if not quiet:
            detail = msg.get("payload")
            log.warning("Telnyx media stream %s reported an error: %s", stream_id or "?", detail)
        return ParsedMessage(Ignored("error"), stream_id, seq)
    if isinstance(event, str):
        return ParsedMessage(Ignored(event), stream_id, seq)
    raise MalformedMessage("message has no event")


MIN_RTP_PAYLOAD = 160  # Telnyx takes 20 ms to 30 s of audio per rtp-mode message
ULAW_SILENCE = b"\xff"


class TelnyxMediaEncoder:
    """App → Telnyx messages. `stream_id` is not needed on them (pipecat omits it too)."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id

    def media(self, payload: bytes) -> str:
        """One rtp-mode media message; a short tail (< 20 ms) is padded with μ-law silence,
        because Telnyx refuses messages under 20 ms."""
        if len(payload) < MIN_RTP_PAYLOAD:
            payload = payload + ULAW_SILENCE * (MIN_RTP_PAYLOAD - len(payload))
        b64 = base64.b64encode(payload).decode()
        return f'{{"event":"media","media":{{"payload":"{b64}"}}}}'

    def mark(self, name: str) -> str:
        return json.dumps({"event": "mark", "mark": {"name": name}})

    def clear(self) -> str:
        return '{"event":"clear"}'
