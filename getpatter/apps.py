"""Loading an app named on the command line: `file.py:attr` or `module:attr`.

`attr` gives `(phone, agent)`, `(phone, agent, serve_kwargs)`, an object with `phone`, `agent`
(and optionally `serve_kwargs`) attributes, or a function returning one of those. A mistake in
the name (no `:attr`, a missing file, a misspelt attribute) is an `AppError` whose message
says what to type instead; a bug inside the app's own code is left to raise as it is.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from getpatter.errors import PatterConfigError

__all__ = ["App", "AppError", "load_app"]


class AppError(PatterConfigError):
    """The APP argument does not name a loadable app."""


@dataclass
class App:
    phone: Any
    agent: Any
    serve_kwargs: dict[str, Any] = field(default_factory=dict)


def _suggest(wanted: str, names: list[str]) -> str:
    close = difflib.get_close_matches(wanted, names, n=1)
    return f": did you mean {close[0]!r}?" if close else ""


def _top_level_names(path: Path) -> list[str]:
    """Functions and assignments at the top of a file, read without running it."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return []
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return [n for n in names if not n.startswith("_")]


def _likely(names: list[str]) -> str | None:
    for preferred in ("app", "make_app", "create_app", "main"):
        if preferred in names:
            return preferred
    return None


def load_app(spec: str) -> App:
    """Import the app `spec` names and unpack it."""
    target, colon, attr = spec.partition(":")
    if not target:
        raise AppError(f"APP {spec!r} names no file or module: use file.py:attr or module:attr")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise AppError(f"no such file: {target}")
        if not colon or not attr:
            guess = _likely(_top_level_names(path))
            example = f"{target}:{guess}" if guess else f"{target}:app"
            raise AppError(
                f"APP must say which object in {target} is the app, e.g. {example} "
                "(it gives (phone, agent) or (phone, agent, serve_kwargs))"
            )
        module = _import_file(path.resolve())
    else:
        if not colon or not attr:
            raise AppError(f"APP must be module:attr or file.py:attr, e.g. {target}:app")
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            if exc.name and target.startswith(exc.name):
                is_file = Path(f"{target}.py").is_file()
                hint = f" (a file? write {target}.py:{attr})" if is_file else ""
                raise AppError(f"no module named {target!r}{hint}") from None
            raise
    if not hasattr(module, attr):
        public = [n for n in dir(module) if not n.startswith("_")]
        raise AppError(f"{target} has no {attr!r}{_suggest(attr, public)}")
    return unpack(getattr(module, attr), spec)


def _import_file(path: Path) -> Any:
    name = path.stem
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise AppError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    if str(path.parent) not in sys.path:  # the app's own sibling modules import
        sys.path.insert(0, str(path.parent))
    module_spec.loader.exec_module(module)
    return module


def unpack(app: Any, spec: str = "APP") -> App:
    """(phone, agent[, serve_kwargs]), an object with those attributes, or a factory of one."""
    if callable(app) and not hasattr(app, "serve") and not hasattr(app, "phone"):
        app = app()
    if isinstance(app, tuple) and len(app) in (2, 3):
        phone, agent, *rest = app
        kwargs = rest[0] if rest else {}
    elif hasattr(app, "phone") and hasattr(app, "agent"):
        phone, agent = app.phone, app.agent
        kwargs = getattr(app, "serve_kwargs", None) or {}
    else:
        raise AppError(
            f"{spec} gave a {type(app).__name__}; it must give (phone, agent) or "
            "(phone, agent, serve_kwargs), or be a function returning one"
        )
    if not hasattr(phone, "serve") or not hasattr(phone, "config"):
        raise AppError(f"{spec}: the first item must be a Patter(...), not {type(phone).__name__}")
    if not isinstance(kwargs, dict):
        raise AppError(f"{spec}: serve_kwargs must be a dict of serve() arguments")
    return App(phone, agent, dict(kwargs))
