"""Building blocks of the fake Twilio: ids, webhook signatures, error bodies, TwiML, AMD.

Written from the wire protocol only (see FakeTwilio), never from getpatter's client code, so a
misunderstanding in the client cannot be mirrored here. Audio and who answers come from the
shared `testing/phone/` package.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import secrets
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..phone.audio import Callee

API_VERSION = "2010-04-01"

# Twilio error codes used by the fake. The stream ones come from the protocol notes; the
# webhook/TwiML ones are Twilio's documented debugger codes as best known (approximate).
ERR_HTTP_RETRIEVAL = 11200  # webhook unreachable / non-2xx
ERR_CONTENT_TYPE = 12300  # response is not text/xml or application/xml
ERR_TWIML_PARSE = 12100  # document parse failure / unknown verb
ERR_TWIML_SCHEMA = 12200  # a verb attribute has a bad value
ERR_STREAM_URL = 31941  # <Stream> url not wss:// (approximate)
ERR_STREAM_HANDSHAKE = 31920  # WebSocket handshake failed
ERR_STREAM_BINARY = 31950  # app sent a binary frame
ERR_STREAM_MESSAGE = 31951  # bad JSON, bad field or wrong streamSid


def new_sid(prefix: str) -> str:
    """Twilio-shaped id: two-letter prefix + 32 lowercase hex digits."""
    return prefix + secrets.token_hex(16)


def rfc2822(ts: float | None = None) -> str:
    """Date format Twilio uses in JSON and in the `Timestamp` callback field."""
    dt = datetime.now(UTC) if ts is None else datetime.fromtimestamp(ts, UTC)
    return email.utils.format_datetime(dt)


# --- X-Twilio-Signature --------------------------------------------------------------------


def compute_signature(auth_token: str, url: str, params: list[tuple[str, str]]) -> str:
    """base64(HMAC-SHA1(token, url + name+value for names sorted, repeated values sorted))."""
    grouped: dict[str, list[str]] = {}
    for name, value in params:
        grouped.setdefault(name, []).append(value)
    s = url
    for name in sorted(grouped):
        for value in sorted(grouped[name]):
            s += name + value
    digest = hmac.new(auth_token.encode(), s.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def strip_query(url: str) -> str:
    """Twilio drops `?query` (and fragments) from <Stream> urls."""
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, p.path, "", ""))


# --- REST error bodies -----------------------------------------------------------------------


def error_body(code: int, message: str, status: int) -> dict[str, Any]:
    """Twilio's REST error JSON shape."""
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


@dataclass
class Outbound:
    """A validated `POST Calls.json`: what the outbound call should do."""

    url: str = ""
    method: str = "POST"
    twiml: str = ""
    timeout: float = 60.0
    status_callback: str = ""
    status_callback_method: str = "POST"
    events: frozenset[str] = frozenset({"completed"})
    machine_detection: str = ""
    async_amd: bool = False
    amd_callback: str = ""
    amd_method: str = "POST"
    record: bool = False
    recording: dict[str, str] = field(default_factory=dict)  # Recording* fields as sent


class TwimlError(Exception):
    """A TwiML document could not be fetched or used; carries the Twilio error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


KNOWN_VERBS = {
    "Say",
    "Play",
    "Pause",
    "Hangup",
    "Reject",
    "Redirect",
    "Dial",
    "Connect",
    "Start",
    "Stop",
    "Gather",
    "Record",
    "Enqueue",
    "Leave",
    "Sms",
    "Pay",
    "Refer",
    "Prompt",
    "Echo",
    "Queue",
}


def parse_twiml(text: str) -> list[ET.Element]:
    """Parse a TwiML document and return the verbs of its <Response>, checking verb names."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise TwimlError(ERR_TWIML_PARSE, f"TwiML parse error: {exc}") from None
    if root.tag != "Response":
        raise TwimlError(ERR_TWIML_PARSE, f"TwiML root must be <Response>, got <{root.tag}>")
    verbs = list(root)
    for verb in verbs:
        if verb.tag not in KNOWN_VERBS:
            raise TwimlError(ERR_TWIML_PARSE, f"unknown TwiML verb <{verb.tag}>")
    return verbs


def attr_seconds(el: ET.Element, name: str, default: float) -> float:
    """A numeric TwiML attribute (length, timeout, timeLimit); 12200 if it is not a number."""
    raw = el.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise TwimlError(ERR_TWIML_SCHEMA, f"<{el.tag} {name}={raw!r}> is not a number") from None
    if value < 0:
        raise TwimlError(ERR_TWIML_SCHEMA, f"<{el.tag} {name}={raw!r}> is negative")
    return value


def dial_targets(dial: ET.Element) -> list[str]:
    """Numbers/SIP URIs/clients a <Dial> rings: its text, or its noun children."""
    text = (dial.text or "").strip()
    if text:
        return [text]
    out = []
    for noun in dial:
        value = (noun.text or "").strip() or noun.get("name", "")
        if noun.tag == "Client" and not value.startswith("client:"):
            value = "client:" + value
        out.append(value)
    return out


@dataclass
class Webhook:
    """One request the fake made to the app, and what came back."""

    kind: str  # voice | status | amd | redirect | action | recording
    call_sid: str
    method: str
    url: str  # the public URL that was signed
    params: dict[str, str]
    signature: str
    time: float
    status: int | None = None  # None: no HTTP response at all
    content_type: str = ""
    body: str = ""
    error: str | None = None


def amd_result(callee: Callee, mode: str) -> tuple[str, float]:
    """AnsweredBy and how long detection takes: humans at once; machines at the beep."""
    if callee.answer != "machine":
        return "human", 0.0
    if mode == "DetectMessageEnd":
        return "machine_end_beep", callee.machine_greeting_s
    return "machine_start", 0.0


# --- REST resources ---------------------------------------------------------------------------


@dataclass
class RestRequest:
    """One REST request the fake received (for assertions)."""

    method: str
    path: str
    form: dict[str, str]  # last value of each key
    form_multi: dict[str, list[str]]  # every value, for repeated keys (StatusCallbackEvent)
    query: dict[str, str]
    time: float
    status: int = 0


@dataclass
class PhoneNumber:
    """An IncomingPhoneNumber resource."""

    sid: str
    phone_number: str
    voice_url: str = ""
    voice_method: str = "POST"
    status_callback: str = ""
    status_callback_method: str = "POST"
    friendly_name: str = ""
    date_created: float = field(default_factory=time.time)
    date_updated: float = field(default_factory=time.time)


@dataclass
class FakeRecording:
    """A call recording's metadata (the fake keeps no media)."""

    sid: str
    call_sid: str
    source: str
    started_wall: float
    started: float  # loop time
    channels: int = 1
    track: str = "both"
    status_callback: str = ""
    status_callback_method: str = "POST"
    events: frozenset[str] = frozenset({"completed"})
    status: str = "in-progress"
    duration: int | None = None
