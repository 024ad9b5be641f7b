"""Credentials: the `Secret` wrapper, how a key is read (argument, then environment), URL
checks, and masking — shared by the facade (`config.py`), every plugin and the store.

Plugins import from here, never from `config.py`: dependencies point down into core.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
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


# --- secrets in objects ------------------------------------------------------------------------

#: attribute names under which a provider that does not use `Secret` may keep a credential
_SECRET_NAMES: Final = ("api_key", "apikey", "token", "secret", "password")


def secrets_in(*objects: object, depth: int = 3) -> list[str]:
    """Every credential held by these objects (an Agent, its engine and providers): each
    `Secret`, and str attributes named like a key (`api_key`, `*token*`, ...), searched
    `depth` levels deep through attributes, lists and dicts.

    SDK clients inside providers are not entered (their keys are the provider's own, which
    is found one level up), so this stays cheap."""
    found: dict[str, None] = {}
    seen: set[int] = set()

    def visit(obj: object, level: int, name: str = "") -> None:
        if isinstance(obj, Secret):
            if obj.reveal():
                found[obj.reveal()] = None
            return
        if isinstance(obj, str):
            lowered = name.lower()
            if obj and any(n in lowered for n in _SECRET_NAMES):
                found[obj] = None
            return
        if level > depth or id(obj) in seen or obj is None or isinstance(obj, (int, float, bytes)):
            return
        seen.add(id(obj))
        if isinstance(obj, dict):
            for key, value in list(obj.items()):
                visit(value, level + 1, str(key))
            return
        if isinstance(obj, (list, tuple, set, frozenset)):
            for value in list(obj):
                visit(value, level + 1, name)
            return
        module = type(obj).__module__ or ""
        if level > 0 and not module.startswith("getpatter"):
            return  # a third-party object (an SDK client, a session): not ours to walk
        attrs: dict[str, object] = {}
        for cls in type(obj).__mro__:
            for slot in getattr(cls, "__slots__", ()):
                if isinstance(slot, str) and hasattr(obj, slot):
                    attrs[slot] = getattr(obj, slot)
        attrs.update(getattr(obj, "__dict__", {}))
        for key, value in attrs.items():
            if not callable(value) or isinstance(value, Secret):
                visit(value, level + 1, key)

    for obj in objects:
        visit(obj, 0)
    return list(found)


# --- secrets out of logs -----------------------------------------------------------------------

MIN_SECRET_LENGTH: Final = 6  # shorter values would redact ordinary words


class SecretRedactor(logging.Filter):
    """Replaces every registered secret in a log record by `***`: the message with its
    arguments, the exception text and the stack.

    It runs as the process's log record factory while a server runs (`redact_logs`), so it
    sees every record of every logger — third-party ones included (`websockets.client` logs
    `Authorization: Bearer ...` at DEBUG) — whatever handlers exist now or are added later.
    As a `logging.Filter` it can also be attached to a handler of your own."""

    def __init__(self) -> None:
        super().__init__()
        self._counts: dict[str, int] = {}
        self._forms: list[str] = []

    def add(self, values: Iterable[str]) -> None:
        for value in values:
            if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH:
                self._counts[value] = self._counts.get(value, 0) + 1
        self._rebuild()

    def discard(self, values: Iterable[str]) -> None:
        for value in values:
            count = self._counts.get(value, 0)
            if count > 1:
                self._counts[value] = count - 1
            else:
                self._counts.pop(value, None)
        self._rebuild()

    def _rebuild(self) -> None:
        # the raw value, and how it looks inside a JSON string or a repr
        forms = {f for s in self._counts for f in (s, json.dumps(s)[1:-1], repr(s)[1:-1])}
        self._forms = sorted(forms, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._forms)

    def redact(self, text: str) -> str:
        for secret in self._forms:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def _leaks(self, text: str) -> bool:
        return any(secret in text for secret in self._forms)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._forms:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format: redact its parts, logging reports the error
            record.msg = self.redact(str(record.msg))
            if isinstance(record.args, tuple):
                record.args = tuple(self.redact(str(a)) for a in record.args)
            elif record.args:
                record.args = (self.redact(str(record.args)),)
        else:
            if self._leaks(message):  # else the record keeps its template (log aggregators)
                record.msg, record.args = self.redact(message), ()
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            if self._leaks(text):
                # the text stands in for the exception, whose args would carry the secret
                record.exc_text, record.exc_info = self.redact(text), None
        elif record.exc_text and self._leaks(record.exc_text):
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info and self._leaks(record.stack_info):
            record.stack_info = self.redact(record.stack_info)
        return True


_REDACTOR = SecretRedactor()
_factory_lock = threading.Lock()
_previous_factory: Callable[..., logging.LogRecord] | None = None


def _redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    assert _previous_factory is not None
    record = _previous_factory(*args, **kwargs)
    _REDACTOR.filter(record)
    return record


def redact_logs(values: Iterable[str]) -> Callable[[], None]:
    """Keep these secrets out of every log record of the process until the returned function
    is called (servers register theirs at start and release them at stop)."""
    global _previous_factory
    kept = [v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_LENGTH]
    with _factory_lock:
        _REDACTOR.add(kept)
        if logging.getLogRecordFactory() is not _redacting_factory:
            _previous_factory = logging.getLogRecordFactory()
            logging.setLogRecordFactory(_redacting_factory)
    released = False

    def release() -> None:
        global _previous_factory
        nonlocal released
        if released:
            return
        released = True
        with _factory_lock:
            _REDACTOR.discard(kept)
            if not _REDACTOR and logging.getLogRecordFactory() is _redacting_factory:
                assert _previous_factory is not None
                logging.setLogRecordFactory(_previous_factory)
                _previous_factory = None

    return release


def log_redactor() -> SecretRedactor:
    """The process's redactor, to attach to a handler that formats records made elsewhere."""
    return _REDACTOR
