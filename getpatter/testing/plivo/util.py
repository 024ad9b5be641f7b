"""Building blocks of the fake Plivo: ids, V3 webhook signatures, error bodies, records.

Written from Plivo's documentation (and, for the signature, the algorithm its server SDKs
publish), never from getpatter's client code, so a misunderstanding in the client cannot be
mirrored here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

SIGNATURE_HEADER = "X-Plivo-Signature-V3"
MA_SIGNATURE_HEADER = "X-Plivo-Signature-Ma-V3"
NONCE_HEADER = "X-Plivo-Signature-V3-Nonce"


def new_auth_id() -> str:
    """Main-account auth IDs: `MA` + 18 upper-case letters and digits."""
    alphabet = string.ascii_uppercase + string.digits
    return "MA" + "".join(secrets.choice(alphabet) for _ in range(18))


def new_auth_token() -> str:
    return secrets.token_urlsafe(30)[:40]


def new_uuid() -> str:
    return str(uuid.uuid4())


def digits(number: str) -> str:
    """Plivo writes phone numbers as digits with the country code, no `+`."""
    return number[1:] if number.startswith("+") else number


# --- X-Plivo-Signature-V3 --------------------------------------------------------------------


def _pairs_sorted(params: dict[str, list[str]], sep: str, joiner: str) -> str:
    return joiner.join(f"{k}{sep}{v}" for k in sorted(params) for v in sorted(params[k]))


def v3_base(method: str, url: str, form: dict[str, str]) -> str:
    """The string Plivo's V3 signature covers: the URL without query, its query parameters
    sorted (`?a=1&b=2`), and for a POST with a body, `.` (only after a non-empty query) and
    every form name and value concatenated in name order."""
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    query = parse_qs(parts.query, keep_blank_values=True)
    if method == "GET":
        query.update({k: [v] for k, v in form.items()})
        qs = _pairs_sorted(query, "=", "&")
        return f"{base}?{qs}" if qs else base
    qs = _pairs_sorted(query, "=", "&")
    if not form:
        return f"{base}?{qs}" if qs else base
    body = _pairs_sorted({k: [v] for k, v in form.items()}, "", "")
    return f"{base}?{qs}{'.' if qs else ''}{body}"


def v3_signature(auth_token: str, method: str, url: str, form: dict[str, str], nonce: str) -> str:
    """base64(HMAC-SHA256(auth_token, base + "." + nonce))."""
    message = f"{v3_base(method, url, form)}.{nonce}".encode()
    digest = hmac.new(auth_token.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def sign(auth_token: str, method: str, url: str, form: dict[str, str]) -> dict[str, str]:
    """The signature headers of one request (a fresh nonce each time)."""
    nonce = str(secrets.randbelow(10**20)).zfill(20)
    signature = v3_signature(auth_token, method, url, form, nonce)
    return {SIGNATURE_HEADER: signature, MA_SIGNATURE_HEADER: signature, NONCE_HEADER: nonce}


# --- REST errors -----------------------------------------------------------------------------


def error_body(message: str) -> dict[str, Any]:
    """Plivo's error JSON: the request's `api_id` and an `error` text."""
    return {"api_id": new_uuid(), "error": message}


class ApiError(Exception):
    """Becomes Plivo's error JSON with this HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# --- records ---------------------------------------------------------------------------------


@dataclass
class Webhook:
    """One request the fake made to the app, and what came back."""

    kind: str  # answer | hangup | machine_detection | recording | transfer | redirect | stream
    call_uuid: str
    method: str
    url: str  # the public URL that was signed
    params: dict[str, str]
    headers: dict[str, str]
    time: float
    status: int | None = None  # None: no HTTP response at all
    content_type: str = ""
    body: str = ""
    error: str | None = None


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
class Application:
    """An application: the answer and hang-up URLs the numbers linked to it use."""

    app_id: str
    answer_url: str = ""
    answer_method: str = "POST"
    hangup_url: str = ""
    hangup_method: str = "POST"
    app_name: str = "getpatter"


@dataclass
class PhoneNumber:
    number: str  # digits, no `+`
    app_id: str


@dataclass
class Outbound:
    """A validated `POST Call/`."""

    answer_url: str
    answer_method: str = "POST"
    hangup_url: str = ""
    hangup_method: str = "POST"
    ring_timeout: float = 60.0
    machine_detection: str = ""  # "", "true" or "hangup"
    machine_detection_url: str = ""
    machine_detection_method: str = "POST"
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recording:
    recording_id: str
    call_uuid: str
    url: str
    started: float  # wall time
    time_limit: float
    callback_url: str = ""
    callback_method: str = "POST"
    api_id: str = ""
    ended: float | None = None
