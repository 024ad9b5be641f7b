"""The plugin registry: every provider, carrier and VAD is found here by kind and name.

A plugin is any module that implements the `getpatter_providers` hook and is declared in the
entry-point group ``getpatter.plugins``. getpatter's own providers are declared in its
pyproject.toml exactly as a third-party package declares its own, so there is one mechanism.

Specs name their class as a ``"module:attr"`` string, so listing the registry (``getpatter
plugins``) never imports a provider SDK; the class is imported only when it is asked for.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

import pluggy

from getpatter.errors import PatterConfigError, PluginNotFoundError

PROJECT = "getpatter"
ENTRY_POINT_GROUP = "getpatter.plugins"
Kind = Literal["stt", "tts", "llm", "engine", "carrier", "vad"]
KINDS: tuple[Kind, ...] = ("stt", "tts", "llm", "engine", "carrier", "vad")

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One registered provider: what it is, where its class lives, what it needs installed."""

    kind: Kind
    name: str
    target: str | type
    extra: str = ""
    requires: tuple[str, ...] = ()
    description: str = ""
    #: The environment variables the provider reads its credentials from (shown by
    #: `getpatter plugins`), e.g. ``("DEEPGRAM_API_KEY",)``.
    env: tuple[str, ...] = ()
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PatterConfigError(
                f"plugin provider {self.name!r} has unknown kind {self.kind!r}; "
                f"use one of {', '.join(KINDS)}"
            )
        if isinstance(self.target, str) and ":" not in self.target:
            raise PatterConfigError(
                f"plugin provider {self.name!r}: target must be 'module:attr', got {self.target!r}"
            )

    @property
    def installed(self) -> bool:
        """True when every module the provider needs can be imported (nothing is imported)."""
        for module in self.requires:
            try:
                if importlib.util.find_spec(module) is None:
                    return False
            except (ImportError, ValueError):
                return False
        return True

    @property
    def install_hint(self) -> str:
        if self.extra:
            return f"pip install 'getpatter[{self.extra}]'"
        return "pip install " + " ".join(self.requires)

    def load(self) -> type:
        """Import and return the provider class."""
        if not isinstance(self.target, str):
            return self.target
        if not self.installed:
            raise PatterConfigError(
                f"{self.kind} provider {self.name!r} is not installed: {self.install_hint}"
            )
        module_name, _, attr = self.target.partition(":")
        module = importlib.import_module(module_name)
        return cast(type, getattr(module, attr))


class _HookSpecs:
    @hookspec
    def getpatter_providers(self) -> Iterable[ProviderSpec]:  # type: ignore[empty-body]
        """Return the providers this plugin offers."""


class Registry:
    """Providers by (kind, name), from entry points and from plugins registered by hand."""

    def __init__(self, *, discover: bool = True) -> None:
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(_HookSpecs)
        if discover:
            self._pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        self._specs: dict[tuple[str, str], ProviderSpec] | None = None

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object or module by hand (tests, apps with inline providers)."""
        self._pm.register(plugin, name=name)
        self._specs = None

    def _collect(self) -> dict[tuple[str, str], ProviderSpec]:
        if self._specs is not None:
            return self._specs
        dists = {id(plugin): dist for plugin, dist in self._pm.list_plugin_distinfo()}
        specs: dict[tuple[str, str], ProviderSpec] = {}
        # pluggy calls later-registered plugins first, so a third-party plugin can override a
        # built-in name; the first spec seen for a key wins.
        for impl in self._pm.hook.getpatter_providers.get_hookimpls()[::-1]:
            dist = dists.get(id(impl.plugin))
            source = dist.project_name if dist is not None else (impl.plugin_name or "")
            offered = cast(Iterable[ProviderSpec] | None, impl.function())
            for spec in offered or ():
                key = (spec.kind, spec.name)
                if key not in specs:
                    specs[key] = replace(spec, source=source)
        self._specs = specs
        return specs

    def specs(self, kind: str | None = None) -> list[ProviderSpec]:
        return sorted(
            (s for s in self._collect().values() if kind is None or s.kind == kind),
            key=lambda s: (KINDS.index(s.kind), s.name),
        )

    def get(self, kind: str, name: str) -> ProviderSpec:
        if kind not in KINDS:
            raise PatterConfigError(
                f"unknown provider kind {kind!r}; use one of {', '.join(KINDS)}"
            )
        spec = self._collect().get((kind, name))
        if spec is None:
            specs = self.specs(kind)
            close = difflib.get_close_matches(name.lower(), [s.name for s in specs], n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            available = ", ".join(
                f"{s.name}" + ("" if s.installed else f" (needs {s.install_hint})") for s in specs
            )
            raise PluginNotFoundError(
                f"no {kind} provider named {name!r}: {hint}Available: {available or 'none'}. "
                "A third-party provider is found once its package is installed."
            )
        return spec

    def load(self, kind: str, name: str) -> type:
        return self.get(kind, name).load()

    def create(self, kind: str, name: str, **kwargs: Any) -> Any:
        """Build the provider `name` of `kind` with its production defaults."""
        return self.load(kind, name)(**kwargs)


_default: Registry | None = None


def default_registry() -> Registry:
    """The registry of installed entry points; discovery is read-only, so one per process."""
    global _default
    if _default is None:
        _default = Registry()
    return _default


def resolve(kind: str, value: object, registry: Registry | None = None, **kwargs: Any) -> Any:
    """A provider given by instance is used as is; one given by name is built from the registry."""
    if isinstance(value, str):
        return (registry or default_registry()).create(kind, value, **kwargs)
    return value
