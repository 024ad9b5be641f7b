"""Carrier credentials, `LocalConfig`, and the checks that turn config mistakes into errors.

Every credential is read at construction (argument first, then the environment), so a
missing key fails when `Patter(...)` is built, not minutes later on the first call. Secrets
never reach a repr: `Secret` hides a single value, `LocalConfig.__repr__` masks its key fields.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from getpatter.core.credentials import (
    PROVIDER_KEY_ENV,
    SECRET_FIELDS,
    Secret,
    credential,
    mask,
    preview,
    validate_http_url,
)
from getpatter.errors import PatterConfigError

# Re-exported for the public API and older imports: credentials live in core.
__all__ = [
    "PROVIDER_KEY_ENV",
    "LocalConfig",
    "Plivo",
    "Secret",
    "Telnyx",
    "Twilio",
    "credential",
    "mask",
    "validate_http_url",
]

TWILIO_BASE_URL: Final = "https://api.twilio.com"
TELNYX_BASE_URL: Final = "https://api.telnyx.com/v2"
PLIVO_BASE_URL: Final = "https://api.plivo.com"
DEFAULT_PERSIST_ROOT: Final = "~/.getpatter"
DATABASE_URL_ENV: Final = "GETPATTER_DATABASE_URL"  # shared history of many nodes (PostgreSQL)


class Twilio:
    """Twilio credentials. Arguments left out are read from TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN.

    The account SID is not pattern-checked: API keys (SK…) and test fakes use other shapes.
    """

    name: Final = "twilio"
    __slots__ = ("_auth_token", "account_sid", "base_url")

    def __init__(
        self,
        account_sid: str | None = None,
        auth_token: str | None = None,
        *,
        base_url: str = TWILIO_BASE_URL,
    ) -> None:
        self.account_sid: str = credential(
            account_sid, "TWILIO_ACCOUNT_SID", "Twilio account SID", "Twilio(account_sid=...)"
        )
        self._auth_token = Secret(
            credential(
                auth_token, "TWILIO_AUTH_TOKEN", "Twilio auth token", "Twilio(auth_token=...)"
            )
        )
        self.base_url: str = validate_http_url(base_url, "Twilio(base_url=...)")

    @property
    def auth_token(self) -> Secret:
        """Wrapped: signs webhooks and REST calls via `.reveal()`, prints as ***."""
        return self._auth_token

    def __repr__(self) -> str:
        extra = "" if self.base_url == TWILIO_BASE_URL else f", base_url={self.base_url!r}"
        return (
            f"Twilio(account_sid={preview(self.account_sid)}, "
            f"auth_token={mask(self._auth_token)}{extra})"
        )

    def _configure(self, config: LocalConfig) -> None:
        config.twilio_sid = self.account_sid
        config.twilio_token = self._auth_token.reveal()
        config.twilio_base_url = self.base_url


def _validate_telnyx_public_key(key: object) -> str:
    """Fail now on a key that could never verify a webhook, instead of rejecting every call."""
    if not isinstance(key, str):
        raise PatterConfigError(f"Telnyx public_key must be a str, got {type(key).__name__}")
    if not (key := key.strip()):
        return ""
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise PatterConfigError(
            "Telnyx public_key must be the base64 Ed25519 key (32 bytes) from the Telnyx portal "
            "(Account Settings → Public Key); check TELNYX_PUBLIC_KEY"
        )
    return key


class Telnyx:
    """Telnyx credentials, read from TELNYX_API_KEY / TELNYX_CONNECTION_ID / TELNYX_PUBLIC_KEY.

    public_key is optional: without it webhook signatures cannot be verified.
    """

    name: Final = "telnyx"
    __slots__ = ("_api_key", "base_url", "connection_id", "public_key")

    def __init__(
        self,
        api_key: str | None = None,
        connection_id: str | None = None,
        public_key: str | None = None,
        *,
        base_url: str = TELNYX_BASE_URL,
    ) -> None:
        self._api_key = Secret(
            credential(api_key, "TELNYX_API_KEY", "Telnyx API key", "Telnyx(api_key=...)")
        )
        self.connection_id: str = credential(
            connection_id,
            "TELNYX_CONNECTION_ID",
            "Telnyx connection ID (Call Control Application ID)",
            "Telnyx(connection_id=...)",
        )
        if public_key is None:
            public_key = os.environ.get("TELNYX_PUBLIC_KEY", "")
        self.public_key: str = _validate_telnyx_public_key(public_key)
        self.base_url: str = validate_http_url(base_url, "Telnyx(base_url=...)")

    @property
    def api_key(self) -> Secret:
        """Wrapped: sent as the Bearer token via `.reveal()`, prints as ***."""
        return self._api_key

    def __repr__(self) -> str:
        extra = "" if self.base_url == TELNYX_BASE_URL else f", base_url={self.base_url!r}"
        public = preview(self.public_key, 6) if self.public_key else "<unset>"
        return (
            f"Telnyx(api_key={mask(self._api_key)}, connection_id={self.connection_id!r}, "
            f"public_key={public}{extra})"
        )

    def _configure(self, config: LocalConfig) -> None:
        config.telnyx_key = self._api_key.reveal()
        config.telnyx_connection_id = self.connection_id
        config.telnyx_public_key = self.public_key
        config.telnyx_base_url = self.base_url


class Plivo:
    """Plivo credentials. Arguments left out are read from PLIVO_AUTH_ID / PLIVO_AUTH_TOKEN.

    The auth token signs Plivo's webhooks (V3 signatures) and our REST calls; the auth ID is
    not pattern-checked (main accounts start MA…, subaccounts SA…, test fakes vary).
    """

    name: Final = "plivo"
    __slots__ = ("_auth_token", "auth_id", "base_url")

    def __init__(
        self,
        auth_id: str | None = None,
        auth_token: str | None = None,
        *,
        base_url: str = PLIVO_BASE_URL,
    ) -> None:
        self.auth_id: str = credential(
            auth_id, "PLIVO_AUTH_ID", "Plivo auth ID", "Plivo(auth_id=...)"
        )
        self._auth_token = Secret(
            credential(auth_token, "PLIVO_AUTH_TOKEN", "Plivo auth token", "Plivo(auth_token=...)")
        )
        self.base_url: str = validate_http_url(base_url, "Plivo(base_url=...)")

    @property
    def auth_token(self) -> Secret:
        """Wrapped: checks webhook signatures and signs REST calls via `.reveal()`."""
        return self._auth_token

    def __repr__(self) -> str:
        extra = "" if self.base_url == PLIVO_BASE_URL else f", base_url={self.base_url!r}"
        return f"Plivo(auth_id={preview(self.auth_id)}, auth_token={mask(self._auth_token)}{extra})"

    def _configure(self, config: LocalConfig) -> None:
        config.plivo_auth_id = self.auth_id
        config.plivo_auth_token = self._auth_token.reveal()
        config.plivo_base_url = self.base_url


Carrier = Twilio | Telnyx | Plivo


_E164 = re.compile(r"\+[1-9][0-9]{7,14}")


def validate_e164(number: object, field_name: str) -> str:
    """`+` then 8–15 digits. Formatted numbers are rejected, with the fixed form in the message."""
    if not isinstance(number, str):
        raise PatterConfigError(
            f"{field_name} must be a str in E.164 format like '+15550001234', "
            f"got {type(number).__name__}"
        )
    if _E164.fullmatch(number):
        return number
    digits = re.sub(r"[\s().-]", "", number)
    hint = f"; write it as {digits!r}" if _E164.fullmatch(digits) else ""
    if not hint and not number.startswith("+"):
        hint = "; it must start with '+' and the country code"
    raise PatterConfigError(
        f"{field_name} {number!r} is not an E.164 phone number "
        f"('+', country code, number: 8–15 digits, no spaces){hint}"
    )


def validate_port(port: object, *, allow_ephemeral: bool = False) -> int:
    """A TCP port 1–65535; `allow_ephemeral` also admits 0 (let the OS pick, for tests)."""
    if isinstance(port, bool) or not isinstance(port, int):
        raise PatterConfigError(
            f"port must be an int (1-65535), got {type(port).__name__} {port!r}"
            + ("; convert it with int(...)" if isinstance(port, str) else "")
        )
    low = 0 if allow_ephemeral else 1
    if not low <= port <= 65535:
        raise PatterConfigError(f"port must be between {low} and 65535, got {port}")
    return port


_HOST = re.compile(
    r"(?P<host>(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*)"
    r"(?::(?P<port>[0-9]{1,5}))?"
)


def normalize_webhook_host(value: object) -> str:
    """The public hostname carriers call back (`host` or `host:port`), lower-cased.

    The spec's `webhook_url` is a hostname with no scheme; a scheme or path is a mistake
    we name instead of guessing at, because the carrier would be given a wrong URL.
    """
    if not isinstance(value, str):
        raise PatterConfigError(f"webhook_url must be a str hostname, got {type(value).__name__}")
    text = value.strip().rstrip("/")
    if not text:
        raise PatterConfigError(
            "webhook_url is empty: pass the public hostname, e.g. 'abc.ngrok.io'"
        )
    if "://" in text:
        host = urlsplit(text).netloc or "abc.ngrok.io"
        raise PatterConfigError(
            "webhook_url must be the public hostname without a scheme: "
            f"pass the hostname only, e.g. {host!r}, not {value!r}"
        )
    if re.search(r"[/?#]", text):
        host = re.split(r"[/?#]", text, maxsplit=1)[0]
        raise PatterConfigError(
            f"webhook_url must be a hostname without a path: pass {host!r}, not {value!r} "
            "(Patter adds its own webhook paths)"
        )
    match = _HOST.fullmatch(text)
    if not match:
        raise PatterConfigError(
            f"webhook_url {value!r} is not a hostname (no spaces, credentials or IPv6 "
            "literals); pass e.g. 'abc.ngrok.io' or 'example.com:8443'"
        )
    host, port = match["host"].lower(), match["port"]
    if port is None:
        return host
    if not 1 <= int(port) <= 65535:
        raise PatterConfigError(f"webhook_url {value!r} has a port outside 1-65535")
    return f"{host}:{int(port)}"


def _database_url(url: str, what: str) -> str:
    """A PostgreSQL URL for many nodes' shared history (asyncpg's `postgresql://` form)."""
    from urllib.parse import urlsplit

    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise PatterConfigError(f"{what} is not a valid postgresql:// URL") from None
    if parts.scheme not in ("postgresql", "postgres") or not (parts.netloc or parts.query):
        raise PatterConfigError(
            f"{what} must look like postgresql://user:password@host:5432/dbname"
        )
    return url


def resolve_persist_root(persist: str | os.PathLike[str] | bool | None) -> str | None:
    """Where call history is written: None → $GETPATTER_DATABASE_URL (PostgreSQL, for many
    nodes), else $PATTER_LOG_DIR or ~/.getpatter; a postgresql:// URL → that database;
    False → off.

    Made absolute now so a later chdir cannot move it.
    """
    if persist is False:
        return None
    if persist is None or persist is True:
        database = os.environ.get(DATABASE_URL_ENV, "").strip()
        if database:
            return _database_url(database, DATABASE_URL_ENV)
        path = os.environ.get("PATTER_LOG_DIR", "").strip() or DEFAULT_PERSIST_ROOT
    elif isinstance(persist, str | os.PathLike):
        path = os.fspath(persist)
        if path.startswith(("postgresql:", "postgres:")):
            return _database_url(path, "persist")
        if not path.strip():
            raise PatterConfigError(
                "persist is an empty path: pass a directory, True for the default, "
                "or False to disable call history"
            )
    else:
        raise PatterConfigError(
            f"persist must be a path, True, False or None, got {type(persist).__name__}"
        )
    return str(Path(path).expanduser().absolute())


_CARRIERS: Final = ("twilio", "telnyx", "plivo")


@dataclass(repr=False)
class LocalConfig:
    """Every credential local mode needs, flattened; built by `Patter(...)` via `from_carrier`.

    Fields are plain str (the spec's types); the repr masks every secret one.
    """

    telephony_provider: str = "twilio"
    twilio_sid: str = ""
    twilio_token: str = ""
    telnyx_key: str = ""
    telnyx_connection_id: str = ""
    telnyx_public_key: str = ""
    openai_key: str = ""
    elevenlabs_key: str = ""
    deepgram_key: str = ""
    cartesia_key: str = ""
    rime_key: str = ""
    lmnt_key: str = ""
    soniox_key: str = ""
    speechmatics_key: str = ""
    assemblyai_key: str = ""
    anthropic_key: str = ""
    phone_number: str = ""
    webhook_url: str = ""
    require_signature: bool = True
    persist_root: str | None = None
    twilio_base_url: str = TWILIO_BASE_URL
    telnyx_base_url: str = TELNYX_BASE_URL
    # beyond the spec's fields: the Plivo carrier's credentials
    plivo_auth_id: str = ""
    plivo_auth_token: str = ""
    plivo_base_url: str = PLIVO_BASE_URL

    def __post_init__(self) -> None:
        provider = self.telephony_provider
        if not isinstance(provider, str) or provider.lower() not in _CARRIERS:
            raise PatterConfigError(
                f"telephony_provider must be 'plivo', 'twilio' or 'telnyx', got {provider!r}"
            )
        self.telephony_provider = provider.lower()
        for f in fields(self):  # the type name only: the value may be a secret
            value, kind = getattr(self, f.name), str(f.type)
            expected = bool if kind == "bool" else str
            if not isinstance(value, expected) and not (value is None and "None" in kind):
                raise PatterConfigError(
                    f"LocalConfig.{f.name} must be {kind}, got {type(value).__name__}"
                )

    @classmethod
    def from_carrier(
        cls,
        carrier: Carrier,
        *,
        phone_number: str,
        webhook_url: str,
        persist_root: str | None = None,
        require_signature: bool = True,
    ) -> LocalConfig:
        """Unpack a carrier and backfill every provider key from its env var.

        An empty webhook_url is allowed: a tunnel fills it in later.
        """
        if not isinstance(carrier, Twilio | Telnyx | Plivo):
            raise PatterConfigError(
                "carrier must be Twilio(...) or Telnyx(...) or Plivo(...), "
                f"got {type(carrier).__name__}"
            )
        config = cls(
            telephony_provider=carrier.name,
            phone_number=validate_e164(phone_number, "phone_number"),
            webhook_url=normalize_webhook_host(webhook_url) if webhook_url else "",
            persist_root=persist_root,
            require_signature=require_signature,
        )
        for key, env in PROVIDER_KEY_ENV.items():
            setattr(config, key, os.environ.get(env, "").strip())
        carrier._configure(config)
        return config

    def __repr__(self) -> str:
        def show(name: str, value: object) -> str:
            if name in SECRET_FIELDS:
                return mask(str(value))
            if name == "persist_root" and isinstance(value, str):
                from getpatter.core.pg import redact_url

                return repr(redact_url(value))
            if name in ("twilio_sid", "plivo_auth_id") and value:
                return preview(str(value))
            return repr(value)

        parts = (f"{f.name}={show(f.name, getattr(self, f.name))}" for f in fields(self))
        return f"LocalConfig({', '.join(parts)})"
