"""Twilio on the wire: webhook signatures, TwiML, and Media Streams messages ↔ media events.

This module knows Twilio's JSON, base64 and form encodings and nothing else; what a call does
with the events lives in the session and engines. REST calls are in `rest.py`, the
HTTP routes in `adapter.py`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit
from xml.sax.saxutils import escape, quoteattr

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

# --- signatures ----------------------------------------------------------------------------


def compute_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]] = ()) -> str:
    """Twilio's X-Twilio-Signature: base64 HMAC-SHA1 over the URL + sorted name/value pairs."""
    pairs = sorted(params)  # by name, then repeated names by value
    data = url + "".join(name + value for name, value in pairs)
    digest = hmac.new(auth_token.encode(), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _port_variants(url: str) -> list[str]:
    """Twilio may sign with or without an explicit default port; accept both forms."""
    parts = urlsplit(url)
    default = {"https": 443, "http": 80, "wss": 443, "ws": 80}.get(parts.scheme)
    host = parts.hostname or ""
    if parts.port is None and default is not None:
        with_port = parts._replace(netloc=f"{host}:{default}")
        return [url, urlunsplit(with_port)]
    if parts.port == default:
        return [url, urlunsplit(parts._replace(netloc=host))]
    return [url]


def verify_signature(
    auth_token: str, url: str, params: Iterable[tuple[str, str]], signature: str
) -> bool:
    if not signature or not auth_token:
        return False
    items = list(params)
    offered = signature.encode("utf-8", "replace")  # bytes: a non-ASCII header is just wrong
    return any(
        hmac.compare_digest(compute_signature(auth_token, candidate, items).encode(), offered)
        for candidate in _port_variants(url)
    )


# --- TwiML ---------------------------------------------------------------------------------


def twiml_stream(stream_url: str, parameters: Mapping[str, str]) -> str:
    """`<Connect><Stream>`: a bidirectional stream; per-call data travels as <Parameter>s
    because Twilio drops query strings from the stream URL."""
    params = "".join(
        f"<Parameter name={quoteattr(k)} value={quoteattr(v)}/>" for k, v in parameters.items()
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
        f"<Stream url={quoteattr(stream_url)}>{params}</Stream>"
        "</Connect></Response>"
    )


def twiml_hangup() -> str:
    return '<?xml version="1.0" encoding="UTF-8"?><Response><Hangup/></Response>'


def twiml_say_hangup(text: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><Response>'
        f"<Say>{escape(text)}</Say><Hangup/></Response>"
    )


def twiml_dial(number: str) -> str:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Response><Dial>{escape(number)}</Dial></Response>'
    )


# --- Media Streams -------------------------------------------------------------------------


def parse_media_message(text: str | bytes) -> MediaEvent:
    """One Media Streams message → one media event. Raises MalformedMessage on bad input."""
    msg = json_message(text)
    event = msg.get("event")
    if event == "media":
        audio = audio_payload(msg, "media", "payload")
        try:
            ts = float(str_field(msg, "media", "timestamp")) / 1000.0
        except (MalformedMessage, ValueError):
            ts = 0.0
        return InboundAudio(audio, ts)
    if event == "mark":
        return MarkPlayed(str_field(msg, "mark", "name"))
    if event == "dtmf":
        return DtmfReceived(str_field(msg, "dtmf", "digit"))
    if event == "start":
        params = field(msg, "start", "customParameters") if "start" in msg else {}
        if not isinstance(params, dict):
            raise MalformedMessage("start.customParameters is not an object")
        return StreamStarted(
            stream_id=str_field(msg, "start", "streamSid"),
            call_id=str_field(msg, "start", "callSid"),
            parameters={str(k): str(v) for k, v in params.items()},
        )
    if event == "stop":
        return StreamStopped("stop")
    if isinstance(event, str):
        return Ignored(event)
    raise MalformedMessage("message has no event")


@dataclass(slots=True)
class TwilioMediaEncoder:
    """App → Twilio messages for one stream (the `streamSid` must be on every one)."""

    stream_sid: str

    def __post_init__(self) -> None:
        if not self.stream_sid.isalnum():  # it is spliced into JSON text below
            raise MalformedMessage("streamSid must be alphanumeric")

    def media(self, payload: bytes) -> str:
        b64 = base64.b64encode(payload).decode()
        return f'{{"event":"media","streamSid":"{self.stream_sid}","media":{{"payload":"{b64}"}}}}'

    def mark(self, name: str) -> str:
        # playout names its marks "g<generation>-<n>": plain ASCII, safe to splice
        if not name.replace("-", "").isalnum():
            return json.dumps(
                {"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}}
            )
        return f'{{"event":"mark","streamSid":"{self.stream_sid}","mark":{{"name":"{name}"}}}}'

    def clear(self) -> str:
        return f'{{"event":"clear","streamSid":"{self.stream_sid}"}}'
