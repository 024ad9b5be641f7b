"""Twilio on the wire: webhook signatures, TwiML, and Media Streams messages ↔ media events.

This module knows Twilio's JSON, base64 and form encodings and nothing else; what a call does
with the events lives in the session and engines. REST calls are in `twilio_rest.py`, the
HTTP routes in `twilio_adapter.py`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit
from xml.sax.saxutils import escape, quoteattr

from getpatter.core.engine import (
    DtmfReceived,
    Ignored,
    InboundAudio,
    MalformedMessage,
    MarkPlayed,
    MediaEvent,
    StreamStarted,
    StreamStopped,
)

MAX_MEDIA_MESSAGE = 64 * 1024  # a 20 ms frame is ~300 bytes of JSON; this is generous


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
    return any(
        hmac.compare_digest(compute_signature(auth_token, candidate, items), signature)
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


def _field(msg: Mapping[str, object], *path: str) -> object:
    cur: object = msg
    for key in path:
        if not isinstance(cur, Mapping) or key not in cur:
            raise MalformedMessage(f"missing field {'.'.join(path)}")
        cur = cur[key]
    return cur


def _str_field(msg: Mapping[str, object], *path: str) -> str:
    value = _field(msg, *path)
    if not isinstance(value, str | int):
        raise MalformedMessage(f"field {'.'.join(path)} is not a string")
    return str(value)


def parse_media_message(text: str | bytes) -> MediaEvent:
    """One Media Streams message → one media event. Raises MalformedMessage on bad input."""
    if len(text) > MAX_MEDIA_MESSAGE:
        raise MalformedMessage("message too large")
    try:
        msg = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedMessage(f"bad JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise MalformedMessage("message is not a JSON object")
    event = msg.get("event")
    if event == "media":
        payload = _str_field(msg, "media", "payload")
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedMessage("media payload is not valid base64") from None
        try:
            ts = float(_str_field(msg, "media", "timestamp")) / 1000.0
        except (MalformedMessage, ValueError):
            ts = 0.0
        return InboundAudio(audio, ts)
    if event == "mark":
        return MarkPlayed(_str_field(msg, "mark", "name"))
    if event == "dtmf":
        return DtmfReceived(_str_field(msg, "dtmf", "digit"))
    if event == "start":
        params = _field(msg, "start", "customParameters") if "start" in msg else {}
        if not isinstance(params, dict):
            raise MalformedMessage("start.customParameters is not an object")
        return StreamStarted(
            stream_id=_str_field(msg, "start", "streamSid"),
            call_id=_str_field(msg, "start", "callSid"),
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
