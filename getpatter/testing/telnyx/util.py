"""Building blocks of the fake Telnyx: ids, Ed25519 webhook signatures, error bodies, records.

Written from the wire protocol only (see FakeTelnyx), never from getpatter's client code, so a
misunderstanding in the client cannot be mirrored here. Audio and who answers come from the
shared `testing/phone/` package.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nacl.signing import SigningKey

__all__ = [
    "AMD_MODES",
    "ApiError",
    "PhoneNumber",
    "RestRequest",
    "StreamParams",
    "Webhook",
    "error_body",
    "iso_now",
    "new_api_key",
    "new_call_control_id",
    "new_connection_id",
    "sign",
    "valid_base64",
]

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
STREAM_TOKEN_HEADER = "x-telnyx-streaming-auth-token"

AMD_MODES = frozenset(
    {"detect", "detect_beep", "detect_words", "greeting_end", "premium", "disabled"}
)
STREAM_TRACKS = frozenset({"inbound_track", "outbound_track", "both_tracks"})
STREAM_CODECS = frozenset({"PCMU", "PCMA", "G722", "OPUS", "AMR-WB", "L16", "default"})
BIDI_MODES = frozenset({"rtp", "mp3"})

# REST error codes (Telnyx's documented general API codes, and 90018 for ended calls).
ERR_MISSING_PARAM = "10004"
ERR_NOT_FOUND = "10005"
ERR_AUTH = "10009"
ERR_BAD_REQUEST = "10015"
ERR_E164 = "10016"
ERR_ASSOCIATED = "10017"
ERR_INVALID_URL = "10003"
ERR_CALL_ENDED = "90018"

# Media-socket error frames (`{"event":"error",...}`): codes as best known (unverified).
ERR_MEDIA_MALFORMED = 100003  # bad JSON, binary frame, unknown event
ERR_MEDIA_INVALID = 100004  # bad base64 / payload size / not MP3 in mp3 mode

_TITLES = {
    ERR_MISSING_PARAM: "Missing required parameter",
    ERR_NOT_FOUND: "Resource not found",
    ERR_AUTH: "Authentication failed",
    ERR_BAD_REQUEST: "Bad Request",
    ERR_E164: "Phone number must be in +E.164 format",
    ERR_ASSOCIATED: "Associated resource does not exist",
    ERR_INVALID_URL: "Invalid URL",
    ERR_CALL_ENDED: "Call has already ended",
}


def new_call_control_id() -> str:
    """`v3:` + an opaque url-safe token, the shape Telnyx uses today."""
    return "v3:" + secrets.token_urlsafe(39)


def new_connection_id() -> str:
    """Call Control App ids are long decimal strings."""
    return str(secrets.randbelow(9 * 10**18) + 10**18)


def new_api_key() -> str:
    """Telnyx v2 API keys look like `KEY0123…_secret`."""
    return "KEY" + secrets.token_hex(16).upper() + "_" + secrets.token_urlsafe(16)


def new_uuid() -> str:
    return str(uuid.uuid4())


def iso_now(ts: float | None = None) -> str:
    """ISO-8601 with microseconds and `Z`, as in `occurred_at`."""
    dt = datetime.now(UTC) if ts is None else datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sign(key: SigningKey, body: bytes, timestamp: int) -> dict[str, str]:
    """The two signature headers: Ed25519 over `f"{timestamp}|"` + the exact body bytes."""
    signature = key.sign(f"{timestamp}|".encode() + body).signature
    return {
        SIGNATURE_HEADER: base64.b64encode(signature).decode("ascii"),
        TIMESTAMP_HEADER: str(timestamp),
    }


def valid_base64(value: str) -> bool:
    """`client_state` must be valid base64 (Telnyx refuses it otherwise)."""
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def error_body(code: str, detail: str, pointer: str | None = None) -> dict[str, Any]:
    """Telnyx's REST error JSON: `{"errors":[{code,title,detail,meta,source?}]}`."""
    err: dict[str, Any] = {
        "code": code,
        "title": _TITLES.get(code, "Error"),
        "detail": detail,
        "meta": {"url": f"https://developers.telnyx.com/docs/overview/errors/{code}"},
    }
    if pointer:
        err["source"] = {"pointer": pointer}
    return {"errors": [err]}


class ApiError(Exception):
    """Becomes Telnyx's error JSON with this HTTP status."""

    def __init__(self, status: int, code: str, detail: str, pointer: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.pointer = status, code, detail, pointer


@dataclass
class Webhook:
    """One delivery attempt of a webhook to the app, and what came back."""

    event_type: str
    call_control_id: str
    url: str  # the public URL (`meta.delivered_to`)
    body: bytes  # the exact bytes that were signed and sent
    data: dict[str, Any]  # the parsed envelope
    headers: dict[str, str]
    attempt: int
    time: float  # loop time
    status: int | None = None  # None: no HTTP response at all
    response_body: str = ""
    error: str | None = None

    @property
    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = self.data["data"]["payload"]
        return payload

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class RestRequest:
    """One REST request the fake received (for assertions)."""

    method: str
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    time: float
    status: int = 0


@dataclass
class StreamParams:
    """Validated streaming fields of dial / answer / streaming_start."""

    url: str
    track: str = "inbound_track"
    codec: str = "PCMU"
    bidirectional_mode: str = ""  # "" (not set), "rtp" or "mp3"
    bidirectional_codec: str = "PCMU"
    auth_token: str = ""
    custom_parameters: dict[str, str] = field(default_factory=dict)


@dataclass
class PhoneNumber:
    """A number on the account, pointing at a Call Control app webhook."""

    phone_number: str
    webhook_url: str = ""
