"""Plivo on the wire: V3 webhook signatures, Plivo XML, and audio-stream messages ↔ media events.

This module knows Plivo's encodings and nothing else; what a call does with the events lives
in the session and engines. REST calls are in `rest.py`, the HTTP routes in `adapter.py`.

The V3 signature (`X-Plivo-Signature-V3`, with `X-Plivo-Signature-V3-Nonce`) is an HMAC-SHA256,
keyed with the auth token, over a string built from the URL Plivo called and the form it sent:
`scheme://host/path`, then `?` and the query's name=value pairs sorted and joined with `&`;
for a POST with a form, a `.` after a non-empty query and then every form name+value, sorted,
concatenated; finally `.` and the nonce. The header may carry several signatures separated
by commas (one per active auth token); any of them may match.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

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

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Plivo-Signature-V3"
NONCE_HEADER = "X-Plivo-Signature-V3-Nonce"
CONTENT_TYPE = "audio/x-mulaw;rate=8000"
VOICEMAIL_WAIT = 30  # seconds a voicemail drop waits for the machine's beep at most


# --- signatures ----------------------------------------------------------------------------


def _grouped(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in pairs:
        out.setdefault(name, []).append(value)
    return out


def signed_string(method: str, url: str, params: Iterable[tuple[str, str]] = ()) -> str:
    """What Plivo signs for a request to `url` with form `params` (before the nonce)."""
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    query = _grouped(parse_qsl(parts.query, keep_blank_values=True))
    form = _grouped(params)
    if method.upper() == "GET":
        query.update(form)  # a GET's parameters are its query
        form = {}
    sorted_query = "&".join(f"{k}={v}" for k in sorted(query) for v in sorted(query[k]))
    if not form:
        return f"{base}?{sorted_query}" if sorted_query else base
    dot = "." if sorted_query else ""
    return f"{base}?{sorted_query}{dot}" + "".join(
        k + v for k in sorted(form) for v in sorted(form[k])
    )


def compute_signature(
    auth_token: str, method: str, url: str, params: Iterable[tuple[str, str]], nonce: str
) -> str:
    """base64(HMAC-SHA256(auth token, signed string + "." + nonce))."""
    data = f"{signed_string(method, url, params)}.{nonce}".encode()
    return base64.b64encode(hmac.new(auth_token.encode(), data, hashlib.sha256).digest()).decode()


def verify_signature(
    auth_token: str,
    method: str,
    url: str,
    params: Iterable[tuple[str, str]],
    signature: str,
    nonce: str,
) -> bool:
    if not auth_token or not signature or not nonce:
        return False
    expected = compute_signature(auth_token, method, url, params, nonce)
    offered = [s.strip() for s in signature.split(",")]
    return any(hmac.compare_digest(expected.encode(), s.encode()) for s in offered if s)


# --- Plivo XML -----------------------------------------------------------------------------

_XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>'


def stream_xml(stream_url: str, token: str) -> str:
    """A bidirectional μ-law stream that holds the call until the socket closes; the per-call
    token rides in `extraHeaders` (which allows letters and digits only)."""
    if not token.isalnum():
        raise ValueError("the stream token must be letters and digits")
    return (
        f'{_XML_HEAD}<Response><Stream bidirectional="true" keepCallAlive="true" '
        f'audioTrack="inbound" contentType="{CONTENT_TYPE}" extraHeaders="token={token}">'
        f"{escape(stream_url)}</Stream></Response>"
    )


def speak_hangup_xml(text: str) -> str:
    return f"{_XML_HEAD}<Response><Speak>{escape(text)}</Speak><Hangup/></Response>"


def voicemail_xml(text: str) -> str:
    """Wait for the machine's beep (at most `VOICEMAIL_WAIT` s), leave `text`, hang up."""
    return (
        f'{_XML_HEAD}<Response><Wait length="{VOICEMAIL_WAIT}" beep="true"/>'
        f"<Speak>{escape(text)}</Speak><Hangup/></Response>"
    )


def dial_xml(number: str) -> str:
    return f"{_XML_HEAD}<Response><Dial><Number>{escape(number)}</Number></Dial></Response>"


def hangup_xml() -> str:
    return f"{_XML_HEAD}<Response><Hangup/></Response>"


# --- audio streams -------------------------------------------------------------------------


def _extra_headers(value: object) -> dict[str, str]:
    """`extra_headers` ("a=1;b=2", or "a=1,b=2" as the XML attribute is written) as a dict."""
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    if not isinstance(value, str):
        return {}
    out: dict[str, str] = {}
    for item in re.split(r"[;,]", value):
        name, sep, val = item.partition("=")
        if sep and name.strip():
            out[name.strip()] = val.strip()
    return out


@dataclass(slots=True, frozen=True)
class ParsedMessage:
    """A media event, its stream, and the sender's timestamp of audio (ms since the epoch)."""

    event: MediaEvent
    stream_id: str = ""
    timestamp_ms: float | None = None


def parse_media_message(text: str | bytes, *, quiet: bool = False) -> ParsedMessage:
    """One audio-stream message → one media event. Raises MalformedMessage on bad input.
    `quiet`: log nothing (a stream not yet authenticated may be anyone's)."""
    msg = json_message(text)
    event = msg.get("event")
    stream_id = msg.get("streamId")
    stream_id = str(stream_id) if isinstance(stream_id, str | int) else ""
    if event == "media":
        track = field(msg, "media")
        if isinstance(track, Mapping) and track.get("track", "inbound") != "inbound":
            return ParsedMessage(Ignored(f"media:{track.get('track')}"), stream_id)
        audio = audio_payload(msg, "media", "payload")
        try:
            ts: float | None = float(str_field(msg, "media", "timestamp"))
        except (MalformedMessage, ValueError):
            ts = None
        return ParsedMessage(InboundAudio(audio, 0.0), stream_id, ts)
    if event == "playedStream":
        return ParsedMessage(MarkPlayed(str_field(msg, "name")), stream_id)
    if event == "dtmf":
        return ParsedMessage(DtmfReceived(str_field(msg, "dtmf", "digit")), stream_id)
    if event == "start":
        start = field(msg, "start")
        if not isinstance(start, Mapping):
            raise MalformedMessage("start is not an object")
        stream_id = str_field(msg, "start", "streamId")
        media_format = start.get("mediaFormat")
        encoding = media_format.get("encoding") if isinstance(media_format, Mapping) else None
        if encoding not in (None, "audio/x-mulaw") and not quiet:
            log.warning("Plivo stream %s carries %s, not the μ-law asked for", stream_id, encoding)
        headers = msg.get("extra_headers", start.get("extra_headers"))
        return ParsedMessage(
            StreamStarted(
                stream_id=stream_id,
                call_id=str_field(msg, "start", "callId"),
                parameters=_extra_headers(headers),
            ),
            stream_id,
        )
    if event == "stop":  # not in Plivo's protocol reference (the socket closing is): accepted
        return ParsedMessage(StreamStopped("stop"), stream_id)
    if isinstance(event, str):
        return ParsedMessage(Ignored(event), stream_id)  # clearedAudio and the like
    raise MalformedMessage("message has no event")


class PlivoMediaEncoder:
    """App → Plivo messages: `playAudio`, `checkpoint` (echoed as `playedStream` once what
    came before it has played), `clearAudio`."""

    __slots__ = ("_clear", "stream_id")

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        self._clear = json.dumps({"event": "clearAudio", "streamId": stream_id})

    def media(self, payload: bytes) -> str:
        b64 = base64.b64encode(payload).decode()
        return (
            '{"event":"playAudio","media":{"contentType":"audio/x-mulaw",'
            f'"sampleRate":8000,"payload":"{b64}"}}}}'
        )

    def mark(self, name: str) -> str:
        return json.dumps({"event": "checkpoint", "streamId": self.stream_id, "name": name})

    def clear(self) -> str:
        return self._clear
