"""Building the providers to bench from what the user typed: a registered name or module:attr.

A provider is built as an app would build it: keys from the environment, production
defaults. The bench adds only what it must, and only where the constructor takes it:
`base_url` (or `ws_url` for a ws:// URL) from `--base-url`, the carrier's format (8 kHz
μ-law) for a TTS whose constructor takes `sample_rate` and `encoding`, and the corpus's
sentences as `phrases=` for an STT that takes phrase hints (LocalSTT; see `ProviderChoice`).
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from getpatter.bench.results import Skipped
from getpatter.errors import PatterConfigError, PluginNotFoundError

__all__ = ["Built", "ProviderChoice", "build", "key_variable", "parse_base_urls", "versions"]

_ENV_SET = re.compile(r"\bset ([A-Z][A-Z0-9_]*[A-Z0-9])\b")
_ENV_NAME = re.compile(r"\b([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*_(?:API_KEY|KEY|TOKEN|SECRET))\b")


@dataclass(frozen=True)
class ProviderChoice:
    """What to build. `spec`: a registered name (`deepgram`) or `module:attr`, where attr is a
    provider instance, a class, or a factory. `hints`: phrases to pass as `phrases=` to an
    STT that takes them."""

    kind: str
    spec: str
    base_url: str | None = None
    carrier_format: bool = True
    hints: Sequence[str] = ()
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Built:
    provider: Any
    label: str
    notes: list[str] = field(default_factory=list)
    modules: tuple[str, ...] = ()  # top-level modules it comes from, for the version list


def key_variable(message: str) -> str | None:
    """The environment variable a PatterConfigError asks for, if it names one."""
    match = _ENV_SET.search(message) or _ENV_NAME.search(message)
    return match.group(1) if match else None


def parse_base_urls(items: Sequence[str]) -> dict[str, str]:
    """`NAME=URL` (every kind of provider NAME) or `KIND.NAME=URL` (just that one)."""
    urls: dict[str, str] = {}
    for item in items:
        name, sep, url = item.partition("=")
        name, url = name.strip(), url.strip()
        parts = urlsplit(url)
        if not sep or not name or parts.scheme not in ("http", "https", "ws", "wss"):
            raise PatterConfigError(
                f"--base-url {item!r}: want NAME=URL or KIND.NAME=URL, e.g. "
                "openai=http://127.0.0.1:8080/v1 or stt.speechmatics=ws://127.0.0.1:9000/v2"
            )
        urls[name] = url
    return urls


def base_url_for(kind: str, spec: str, urls: Mapping[str, str]) -> str | None:
    return urls.get(f"{kind}.{spec}") or urls.get(spec)


def check_spec(kind: str, spec: str) -> None:
    """Fail now (before anything runs) on a name no plugin registers or a bad module:attr."""
    if ":" in spec:
        module, _, attr = spec.partition(":")
        if not module or not attr:
            raise PatterConfigError(f"--{kind} {spec!r}: want a registered name or module:attr")
        return
    from getpatter.core.registry import default_registry

    default_registry().get(kind, spec)  # raises PluginNotFoundError, listing what there is


def build(choice: ProviderChoice) -> Built | Skipped:
    """The provider, or why it was skipped: not installed, or a key (named) is missing."""
    kind, spec = choice.kind, choice.spec
    modules: tuple[str, ...]
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            target: Any = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            return Skipped(kind, spec, f"cannot load {spec}: {exc}")
        modules = (module_name.split(".")[0],)
    else:
        from getpatter.core.registry import default_registry

        try:
            registered = default_registry().get(kind, spec)
        except PluginNotFoundError as exc:
            return Skipped(kind, spec, str(exc))
        if not registered.installed:
            return Skipped(kind, spec, f"not installed: {registered.install_hint}")
        target = registered.load()
        modules = registered.requires
    label = spec
    notes: list[str] = []
    if inspect.isclass(target) or (callable(target) and not _is_provider(kind, target)):
        params = _parameters(target)
        kwargs: dict[str, Any] = dict(choice.options)
        if choice.base_url:
            ws = urlsplit(choice.base_url).scheme in ("ws", "wss")
            name = (
                "ws_url"
                if "ws_url" in params and (ws or "base_url" not in params)
                else "base_url"
                if "base_url" in params
                else None
            )
            if name is None:
                return Skipped(kind, spec, "--base-url given, but it takes no base_url/ws_url")
            kwargs[name] = choice.base_url
            notes.append(f"{name}={choice.base_url}")
        if kind == "tts" and choice.carrier_format and {"sample_rate", "encoding"} <= params:
            kwargs.setdefault("sample_rate", 8000)
            kwargs.setdefault("encoding", "mulaw")
        if kind == "stt" and choice.hints and "phrases" in params:
            kwargs.setdefault("phrases", list(choice.hints))
            label = f"{spec} (phrases)"
            notes.append(
                "built with phrases= the corpus's own sentences, the mode it is meant to be "
                "used in (--no-hints for its general model)"
            )
        try:
            provider = target(**kwargs)
        except PatterConfigError as exc:
            env = key_variable(str(exc))
            reason = f"set {env} to bench it ({exc})" if env else str(exc)
            return Skipped(kind, spec, reason, env)
    else:
        provider = target
        if choice.base_url:
            notes.append(f"--base-url ignored: {spec} is an instance, built by its module")
    problem = _protocol_problem(kind, provider)
    if problem:
        return Skipped(kind, spec, problem)
    return Built(provider, label, notes, modules)


def _parameters(target: Callable[..., Any]) -> set[str]:
    try:
        return set(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return set()


def _is_provider(kind: str, obj: object) -> bool:
    return not _protocol_problem(kind, obj)


def _protocol_problem(kind: str, obj: object) -> str:
    from getpatter.core.providers import LLM, STT, TTS

    proto: Any = {"stt": STT, "tts": TTS, "llm": LLM}[kind]
    if isinstance(obj, type) or not isinstance(obj, proto):
        return f"{type(obj).__name__} does not implement the {kind.upper()} protocol"
    return ""


def versions(modules: Sequence[str]) -> dict[str, str]:
    """Installed distribution versions of the given top-level modules (where known)."""
    from importlib import metadata

    try:
        owners = metadata.packages_distributions()
    except Exception:
        owners = {}
    found: dict[str, str] = {}
    for module in modules:
        for dist in owners.get(module.split(".")[0], [module]):
            try:
                found[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
    return found
