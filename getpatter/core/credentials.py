"""Credentials: the `Secret` wrapper, how a key is read (argument, then environment), URL
checks, and masking — shared by the facade (`config.py`), every plugin and the store.

Plugins import from here, never from `config.py`: dependencies point down into core.
"""

from __future__ import annotations

import os
from typing import Any, Final
from urllib.parse import urlsplit

from getpatter.errors import PatterConfigError

#: LocalConfig field → the environment variable it is backfilled from, e.g. OPENAI_API_KEY.
PROVIDER_KEY_ENV: Final[dict[str, str]] = {
    f"{name}_key": f"{name.upper()}_API_KEY"
    for name in "openai elevenlabs deepgram cartesia rime lmnt soniox speechmatics assemblyai "
    "anthropic".split()
}


class Secret:
    """A credential that prints as `***` in reprs, f-strings and logs.

    Code that must send the value (signing a request, an auth header) calls `reveal()`,
    so every place a secret leaves the process is greppable.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise PatterConfigError(f"a secret must be a str, got {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """The raw value, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    def __str__(self) -> str:
        return "***" if self._value else ""

    def __format__(self, format_spec: str) -> str:
        return format(str(self), format_spec)

    def __bool__(self) -> bool:
        return bool(self._value)


def mask(value: str | Secret) -> str:
    """How a secret appears in a repr: `<set>` or `<unset>`, never the value."""
    return "<set>" if value else "<unset>"


def preview(value: str, keep: int = 4) -> str:
    """An identifier shortened enough to recognise but not to copy (e.g. 'AC12…')."""
    return repr(value if len(value) <= keep else value[:keep] + "…")


def credential(arg: str | None, env: str, what: str, how: str) -> str:
    """The argument if given, else the env var; stripped because .env files carry stray spaces."""
    if arg is not None and not isinstance(arg, str):
        raise PatterConfigError(f"{what} must be a str, got {type(arg).__name__}")
    value = (os.environ.get(env, "") if arg is None else arg).strip()
    if not value:
        fix = f"set {env} in the environment" if arg is None else f"leave it out to read {env}"
        raise PatterConfigError(
            f"{what} is {'missing' if arg is None else 'empty'}: pass {how} or {fix}"
        )
    return value


def validate_http_url(value: object, field_name: str) -> str:
    """An http(s) URL with a host, without trailing slash (so paths can be appended)."""
    if not isinstance(value, str):
        raise PatterConfigError(f"{field_name} must be a str URL, got {type(value).__name__}")
    url = value.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or " " in url:
        raise PatterConfigError(
            f"{field_name} must be an http:// or https:// URL with a host, got {value!r}"
        )
    return url.rstrip("/")


#: Every LocalConfig field that holds a secret.
SECRET_FIELDS: Final = frozenset(
    {"twilio_token", "telnyx_key", "plivo_auth_token", *PROVIDER_KEY_ENV}
)


def secret_values(config: Any) -> list[str]:
    """Every credential in a LocalConfig, to be kept out of stored records, logs and the
    dashboard."""
    return [
        v
        for v in (getattr(config, n, "") for n in sorted(SECRET_FIELDS))
        if isinstance(v, str) and v
    ]
