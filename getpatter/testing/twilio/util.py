"""Building blocks of the fake Twilio: ids, G.711 μ-law, webhook signatures, audio inputs, TwiML.

Written from the wire protocol only (see FakeTwilio), never from getpatter's client code, so a
misunderstanding in the client cannot be mirrored here.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import os
import secrets
import wave
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import numpy.typing as npt

AnswerMode: TypeAlias = Literal["human", "machine", "busy", "no-answer", "failed"]
Int16Array: TypeAlias = npt.NDArray[np.int16]
#: What tests may pass as audio: int16 samples at 8 kHz, raw μ-law bytes, or a WAV file path.
AudioInput: TypeAlias = "npt.NDArray[Any] | bytes | bytearray | str | os.PathLike[str]"

API_VERSION = "2010-04-01"
FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law
FRAME_S = 0.020
ULAW_SILENCE = 0xFF

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


# --- G.711 μ-law (ITU-T G.711 on the 14-bit magnitude, bias 33, clip 8159) -----------------


def _build_decode_table() -> Int16Array:
    u = (~np.arange(256, dtype=np.int32)) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


_DECODE = _build_decode_table()
_SEGMENT_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)


def ulaw_decode(data: bytes | bytearray) -> Int16Array:
    """μ-law bytes to int16 samples."""
    return _DECODE[np.frombuffer(bytes(data), dtype=np.uint8)]


def ulaw_encode(samples: npt.NDArray[Any]) -> bytes:
    """int16 samples to μ-law bytes (bit-exact with the classic 14-bit G.711 encoder)."""
    x = np.asarray(samples).astype(np.int32) >> 2
    negative = x < 0
    mag = np.minimum(np.where(negative, -x, x), 8159) + 33
    seg = np.searchsorted(_SEGMENT_END, mag, side="left")
    code = np.where(
        seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((mag >> (np.minimum(seg, 7) + 1)) & 0x0F)
    )
    return (code ^ np.where(negative, 0x7F, 0xFF)).astype(np.uint8).tobytes()


def load_audio(audio: AudioInput | None) -> bytes:
    """Normalise any accepted audio input to raw 8 kHz μ-law bytes."""
    if audio is None:
        return b""
    if isinstance(audio, bytes | bytearray):
        return bytes(audio)
    if isinstance(audio, np.ndarray):
        arr = audio
        if arr.dtype.kind == "f":
            arr = np.clip(arr, -1.0, 1.0) * 32767.0
        return ulaw_encode(arr.reshape(-1))
    return _load_wav(os.fspath(audio))


def _load_wav(path: str) -> bytes:
    """PCM16 WAV (any rate, mono or multi-channel) to 8 kHz mono μ-law; linear resampling."""
    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1)
    if rate != 8000 and len(pcm):
        n_out = round(len(pcm) * 8000 / rate)
        pcm = np.interp(np.arange(n_out) * rate / 8000, np.arange(len(pcm)), pcm)
    return ulaw_encode(np.round(pcm).astype(np.int16))


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
class CallError:
    """One error Twilio would show in its debugger for this call."""

    code: int
    message: str
    time: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


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


# --- who answers -----------------------------------------------------------------------------


@dataclass
class Callee:
    """How the far end of an outbound call (or a <Dial>) behaves."""

    answer: AnswerMode = "human"
    answer_delay: float = 0.0
    audio: AudioInput | None = None
    machine_greeting_s: float = 2.0


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


def callee_audio(callee: Callee) -> bytes:
    """What the answering party says; a silent greeting ending in a beep for machines."""
    if callee.audio is not None or callee.answer != "machine":
        return load_audio(callee.audio)
    t = np.arange(int(0.25 * 8000)) / 8000
    beep = (8000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    silence = np.zeros(max(0, int((callee.machine_greeting_s - 0.25) * 8000)), np.int16)
    return ulaw_encode(np.concatenate([silence, beep]))


def amd_result(callee: Callee, mode: str) -> tuple[str, float]:
    """AnsweredBy and how long detection takes: humans at once; machines at the beep."""
    if callee.answer != "machine":
        return "human", 0.0
    if mode == "DetectMessageEnd":
        return "machine_end_beep", callee.machine_greeting_s
    return "machine_start", 0.0
