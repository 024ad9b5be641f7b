"""Agent, Tool and Guardrail: the plain, immutable config objects a call is run with.

Each is validated when built, so a mistake fails at `phone.agent(...)` with a message that
says what to fix, not mid-call. They are frozen afterwards (a later edit would skip the
checks); derive a changed agent with `Agent.replace(...)`.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Final, NoReturn
from urllib.parse import urlsplit

from getpatter.errors import PatterConfigError

_TOOL_NAME: Final = re.compile(r"[a-zA-Z0-9_-]{1,64}")
# `{name}` or mustache-style `{{ name }}`; nothing else, so JSON braces in prompts stay as-is.
_PLACEHOLDER: Final = re.compile(r"\{\{\s*([^\W\d]\w*)\s*\}\}|\{([^\W\d]\w*)\}")
_LANGUAGE: Final = re.compile(r"[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8})*")

ToolHandler = Callable[[dict[str, Any], dict[str, Any]], Any]


def _fail(message: str) -> NoReturn:
    raise PatterConfigError(message)


def _require_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        _fail(f"{what} must be a str, got {type(value).__name__}")
    return value


def _type_name(value: object) -> str:
    """How an opaque object (an engine, a provider) shows in a repr: never its fields."""
    return repr(value) if isinstance(value, str) else f"<{type(value).__name__}>"


def render_template(template: str, values: Mapping[str, str]) -> str:
    """Fill `{name}` / `{{ name }}` from values in one pass; unknown names stay as written.

    One pass means a value that itself contains `{x}` (e.g. a caller's name) is not expanded.
    """

    def substitute(match: re.Match[str]) -> str:
        key = match[1] or match[2]
        return values[key] if key in values else match[0]

    return _PLACEHOLDER.sub(substitute, template)


class _Frozen:
    """Blocks attribute assignment after __init__, which sets fields via `_set`."""

    __slots__ = ()

    def _set(self, **values: object) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object = None) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; build a new one instead")

    __delattr__ = __setattr__

    def __copy__(self) -> _Frozen:  # immutable: a copy may be the object itself
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _Frozen:
        return self


def _json_schema(name: str, parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """A JSON-schema object, deep-copied through JSON so later edits to the caller's dict
    cannot change a validated tool and everything in it can be sent to an LLM."""
    if parameters is None:
        return {"type": "object", "properties": {}}
    where = f"Tool {name!r}: parameters"
    if not isinstance(parameters, Mapping) or parameters.get("type") != "object":
        _fail(
            f"{where} must be a JSON-schema object, e.g. "
            "{'type': 'object', 'properties': {'date': {'type': 'string'}}}"
        )
    try:
        schema: dict[str, Any] = json.loads(json.dumps(parameters, allow_nan=False))
    except (TypeError, ValueError) as exc:
        _fail(f"{where} must be JSON-serializable ({exc})")
    properties = schema.setdefault("properties", {})
    if not isinstance(properties, dict):
        _fail(f"{where}['properties'] must be a dict of property name → schema")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        _fail(f"{where}['required'] must be a list of property names")
    if missing := [r for r in required if r not in properties]:
        _fail(f"{where}['required'] names {missing} which are not in 'properties'")
    return schema


class Tool(_Frozen):
    """A function the agent may call: run locally by `handler(args, ctx)` or POSTed to
    `webhook_url` — exactly one of the two."""

    __slots__ = ("description", "handler", "name", "parameters", "timeout", "webhook_url")
    name: str
    description: str
    parameters: dict[str, Any]
    handler: ToolHandler | None
    webhook_url: str
    timeout: float

    def __init__(
        self,
        name: str,
        description: str = "",
        parameters: Mapping[str, Any] | None = None,
        handler: ToolHandler | None = None,
        webhook_url: str = "",
        timeout: float = 10.0,
    ) -> None:
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            _fail(
                f"Tool name {name!r} is invalid: use 1-64 letters, digits, '_' or '-' "
                "(the function-name rule LLM providers enforce), e.g. 'schedule_appointment'"
            )
        _require_str(description, f"Tool {name!r}: description")
        _require_str(webhook_url, f"Tool {name!r}: webhook_url")
        if (handler is None) == (not webhook_url):
            _fail(
                f"Tool {name!r} needs exactly one of handler= (a function called as "
                "handler(args, ctx)) or webhook_url= (an http(s) URL we POST the args to)"
            )
        if handler is not None:
            self._check_handler(name, handler)
        if webhook_url:
            parts = urlsplit(webhook_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                _fail(f"Tool {name!r}: webhook_url must be an http(s) URL, got {webhook_url!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            _fail(f"Tool {name!r}: timeout must be a number of seconds")
        if not (math.isfinite(timeout) and timeout > 0):
            _fail(f"Tool {name!r}: timeout must be a positive number of seconds, got {timeout}")
        self._set(
            name=name,
            description=description,
            parameters=_json_schema(name, parameters),
            handler=handler,
            webhook_url=webhook_url,
            timeout=float(timeout),
        )

    @staticmethod
    def _check_handler(name: str, handler: object) -> None:
        """Catch a handler that can't take (args, ctx) now, not on the first call that uses it."""
        if not callable(handler):
            _fail(f"Tool {name!r}: handler must be callable, got {type(handler).__name__}")
        try:
            signature = inspect.signature(handler)
        except (TypeError, ValueError):  # some builtins have no signature: trust them
            return
        try:
            signature.bind(object(), object())
        except TypeError:
            label = f"{getattr(handler, '__name__', 'handler')}({', '.join(signature.parameters)})"
            _fail(
                f"Tool {name!r}: handler {label} must accept two arguments "
                "(args: dict, ctx: dict); add the missing parameter"
            )

    def schema(self) -> dict[str, Any]:
        """The function definition sent to the LLM (a fresh copy each time)."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": json.loads(json.dumps(self.parameters)),
        }

    def __repr__(self) -> str:
        target = f"handler={getattr(self.handler, '__qualname__', _type_name(self.handler))}"
        if self.webhook_url:  # host only: a query string may carry an API key
            target = f"webhook_url={urlsplit(self.webhook_url).netloc!r}"
        return f"Tool(name={self.name!r}, {target}, timeout={self.timeout:g})"


class Guardrail(_Frozen):
    """Stops the agent from saying something: blocked terms (whole words or phrases, any
    case) and/or a `check(text) -> bool` predicate; the reply is swapped for `replacement`."""

    __slots__ = ("_pattern", "blocked_terms", "check", "name", "replacement")
    name: str
    blocked_terms: tuple[str, ...]
    check: Callable[[str], bool] | None
    replacement: str
    _pattern: re.Pattern[str] | None

    def __init__(
        self,
        name: str,
        blocked_terms: Sequence[str] | None = None,
        check: Callable[[str], bool] | None = None,
        replacement: str = "I'm sorry, I can't help with that.",
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            _fail("Guardrail name must be a non-empty str, e.g. 'No legal advice'")
        where = f"Guardrail {name!r}"
        if isinstance(blocked_terms, str):
            _fail(f"{where}: blocked_terms must be a list of terms, e.g. [{blocked_terms!r}]")
        terms = tuple(blocked_terms or ())
        if not all(isinstance(t, str) and t.strip() for t in terms):
            _fail(f"{where}: every blocked term must be a non-empty str")
        if check is not None:
            if not callable(check):
                _fail(f"{where}: check must be a function text -> bool")
            if inspect.iscoroutinefunction(check):
                _fail(f"{where}: check must be a plain (not async) function text -> bool")
        if not terms and check is None:
            _fail(f"{where} blocks nothing: pass blocked_terms=[...], check=..., or both")
        _require_str(replacement, f"{where}: replacement")
        self._set(
            name=name,
            blocked_terms=terms,
            check=check,
            replacement=replacement,
            _pattern=self._compile(terms) if terms else None,
        )

    @staticmethod
    def _compile(terms: tuple[str, ...]) -> re.Pattern[str]:
        """Whole words only ('sue' must not fire on 'issue'); any whitespace inside a phrase.

        Lookarounds instead of \\b so terms that start or end with punctuation still match.
        """
        alternatives = sorted(
            (r"\s+".join(map(re.escape, term.split())) for term in terms), key=len, reverse=True
        )
        return re.compile(rf"(?<!\w)(?:{'|'.join(alternatives)})(?!\w)", re.IGNORECASE)

    def violates(self, text: str) -> bool:
        """True if the text must not be spoken. Exceptions from `check` propagate."""
        if self._pattern is not None and self._pattern.search(text):
            return True
        return self.check is not None and bool(self.check(text))

    def __repr__(self) -> str:
        check = "" if self.check is None else f", check={getattr(self.check, '__qualname__', '?')}"
        return f"Guardrail(name={self.name!r}, blocked_terms={list(self.blocked_terms)!r}{check})"


def _sequence_of(value: object, kind: type, field: str) -> tuple[Any, ...]:
    if value is None:
        return ()
    if isinstance(value, kind):
        _fail(f"{field}= takes a list: {field}=[{kind.__name__}(...)]")
    if not isinstance(value, Sequence) or isinstance(value, str):
        _fail(f"{field}= must be a list of {kind.__name__}, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, kind):
            _fail(f"{field}[{i}] is a {type(item).__name__}; wrap it in {kind.__name__}(...)")
    return tuple(value)


def _variables(value: Mapping[str, object] | None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        _fail(f"variables= must be a dict of name → value, got {type(value).__name__}")
    result: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key.isidentifier():
            _fail(f"variables key {key!r} must be an identifier (letters, digits, '_')")
        if item is None or isinstance(item, bytes | bytearray):
            _fail(f"variables[{key!r}] must be text (or a number), got {type(item).__name__}")
        result[key] = str(item)
    return result


def _vad_choice(vad: object) -> object:
    """`vad=`: None (webrtcvad), a registered VAD name, or a provider with `create()`.

    A name is looked up now, so a typo or a missing extra fails at `phone.agent(...)`."""
    if vad is None:
        return None
    if isinstance(vad, str):
        name = vad.strip()
        if not name:
            _fail("vad must be a VAD name such as 'silero' or 'webrtc', or None for the default")
        from getpatter.core.registry import default_registry

        spec = default_registry().get("vad", name)  # PluginNotFoundError lists the names
        if not spec.installed:
            _fail(f"vad={name!r} is not installed: {spec.install_hint}")
        return name
    if not callable(getattr(vad, "create", None)):
        _fail(
            f"vad={type(vad).__name__}(...) is not a VAD provider (it needs a "
            "create(sample_rate) method): pass e.g. 'silero' or SileroVAD(...)"
        )
    return vad


class Agent(_Frozen):
    """What the agent is (prompt, voice, tools, guardrails) and how it talks: a realtime
    `engine` (speech to speech) or the pipeline (`stt` → `llm`/on_message → `tts`).

    `vad` decides when the caller is speaking — the pipeline's turns and every barge-in:
    None (webrtcvad), a registered name such as "silero", or a provider like `SileroVAD()`."""

    _FIELDS: ClassVar = (
        "name system_prompt first_message engine stt tts llm tools guardrails "
        "voice language variables vad"
    ).split()
    __slots__ = tuple(_FIELDS)
    name: str
    system_prompt: str
    first_message: str
    engine: object | None
    stt: object | str | None
    tts: object | str | None
    llm: object | str | None
    tools: tuple[Tool, ...]
    guardrails: tuple[Guardrail, ...]
    voice: str
    language: str
    variables: dict[str, str]
    vad: object | str | None

    def __init__(
        self,
        *,
        system_prompt: str = "",
        first_message: str = "",
        engine: object | None = None,
        stt: object | str | None = None,
        tts: object | str | None = None,
        llm: object | str | None = None,
        tools: Sequence[Tool] | None = None,
        guardrails: Sequence[Guardrail] | None = None,
        voice: str = "",
        language: str = "en",
        variables: Mapping[str, object] | None = None,
        name: str = "agent",
        vad: object | str | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            _fail("Agent name must be a non-empty str")
        _require_str(system_prompt, "system_prompt")
        _require_str(first_message, "first_message")
        _require_str(voice, "voice")
        if not isinstance(language, str) or not _LANGUAGE.fullmatch(language):
            _fail(f"language must be a language code like 'en' or 'en-US', got {language!r}")
        providers = {"stt": stt, "tts": tts, "llm": llm}
        for what, value in providers.items():
            if isinstance(value, str):
                providers[what] = value.strip() or None
        if engine is not None and (used := [k for k, v in providers.items() if v is not None]):
            _fail(
                f"pass either engine= (a realtime speech-to-speech engine) or {'/'.join(used)}= "
                f"(the STT → LLM → TTS pipeline), not both: drop engine= or {used[0]}="
            )
        vad = _vad_choice(vad)
        checked_tools: tuple[Tool, ...] = _sequence_of(tools, Tool, "tools")
        names = [tool.name for tool in checked_tools]
        if duplicates := sorted({n for n in names if names.count(n) > 1}):
            _fail(f"tool names must be unique; {duplicates} appear more than once")
        self._set(
            name=name,
            system_prompt=system_prompt,
            first_message=first_message,
            engine=engine,
            tools=checked_tools,
            guardrails=_sequence_of(guardrails, Guardrail, "guardrails"),
            voice=voice,
            language=language,
            variables=_variables(variables),
            vad=vad,
            **providers,
        )

    @property
    def mode(self) -> str:
        """'realtime' when an engine runs the whole conversation, else 'pipeline'."""
        return "realtime" if self.engine is not None else "pipeline"

    def render(self, template: str, extra: Mapping[str, object] | None = None) -> str:
        """`template` with `{name}` filled from variables, then `extra` (per-call, which wins)."""
        values = {**self.variables, **{k: str(v) for k, v in (extra or {}).items()}}
        return render_template(template, values)

    def render_prompt(self, extra: Mapping[str, object] | None = None) -> str:
        """The system prompt as this call should see it."""
        return self.render(self.system_prompt, extra)

    def render_first_message(self, extra: Mapping[str, object] | None = None) -> str:
        """The greeting as this call should see it."""
        return self.render(self.first_message, extra)

    def get_tool(self, name: str) -> Tool | None:
        """The tool an LLM asked for by name, or None if the agent has no such tool."""
        return next((tool for tool in self.tools if tool.name == name), None)

    def replace(self, **changes: Any) -> Agent:
        """A new, re-validated Agent with some fields changed (e.g. a per-call first_message)."""
        if unknown := sorted(set(changes) - set(self._FIELDS)):
            _fail(f"Agent has no field(s) {unknown}; fields: {', '.join(self._FIELDS)}")
        current = {field: getattr(self, field) for field in self._FIELDS}
        return Agent(**{**current, **changes})

    def __repr__(self) -> str:
        parts = [f"name={self.name!r}", f"mode={self.mode!r}"]
        for what in ("engine", "stt", "llm", "tts", "vad"):
            if (value := getattr(self, what)) is not None:
                parts.append(f"{what}={_type_name(value)}")
        prompt = self.system_prompt
        parts += [
            f"system_prompt={(prompt[:40] + '…') if len(prompt) > 40 else prompt!r}",
            f"tools={[t.name for t in self.tools]}",
            f"guardrails={[g.name for g in self.guardrails]}",
            f"language={self.language!r}",
            f"variables={sorted(self.variables)}",  # names only: values may be caller data
        ]
        if self.voice:
            parts.append(f"voice={self.voice!r}")
        return f"Agent({', '.join(parts)})"
