"""Log set-up: a default handler for apps that configured none, and the CLI's text/JSON output.

`serve()` logs its start-up banner and every call problem through `logging`. An app that
configured logging keeps full control; one that did not (the usual `asyncio.run(phone.serve())`
script) would otherwise see nothing below WARNING, so `install_default_handler()` gives the
`getpatter` logger one stderr handler at INFO — only then, and only once.

Every handler made here carries `CallContextFilter`: the record gets `call_id` (the call the
code runs for) and, when an OpenTelemetry span is current, `trace_id` / `span_id`. Filters that
must see every line (e.g. secret redaction) attach to the same handlers via `handlers()`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from types import TracebackType
from typing import Any, Final, TextIO

from getpatter.core.context import CALL_ID

__all__ = [
    "CallContextFilter",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "install_default_handler",
    "install_error_hook",
]

LOGGER: Final = "getpatter"
FORMATS: Final = ("text", "json")
_MARK: Final = "_getpatter_handler"
# LogRecord's own attributes: everything else on a record came from `extra=`
_STANDARD: Final = frozenset(
    set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
)


class CallContextFilter(logging.Filter):
    """Adds `call_id`, `trace_id` and `span_id` (each "" when there is none) to a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "call_id", ""):
            record.call_id = CALL_ID.get()
        record.trace_id, record.span_id = _trace_ids()
        return True


def _trace_ids() -> tuple[str, str]:
    otel = sys.modules.get("opentelemetry.trace")  # only if the app uses OpenTelemetry
    if otel is None:
        return "", ""
    ctx = otel.get_current_span().get_span_context()
    if not ctx.is_valid:
        return "", ""
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


class TextFormatter(logging.Formatter):
    """`12:00:01 INFO  getpatter.core.server: message [trace=… span=…]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        trace = getattr(record, "trace_id", "")
        if trace:
            text += f" [trace={trace} span={getattr(record, 'span_id', '')}]"
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, call/trace ids, `extra=` fields
    and the traceback (`exc_info`) as text."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("call_id", "trace_id", "span_id"):
            if value := getattr(record, key, ""):
                out[key] = value
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, default=str, ensure_ascii=False)


def make_handler(fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """A stderr handler in `fmt` ("text" or "json") with the call-context filter."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(CallContextFilter())
    setattr(handler, _MARK, True)
    return handler


def handlers() -> list[logging.Handler]:
    """The handlers getpatter installed (on the root or the `getpatter` logger)."""
    return [
        h
        for logger in (logging.getLogger(), logging.getLogger(LOGGER))
        for h in logger.handlers
        if getattr(h, _MARK, False)
    ]


def install_default_handler() -> logging.Handler | None:
    """Give the `getpatter` logger an INFO handler on stderr if nothing would print its lines
    (no handler on it or the root logger); returns it, or None when the app has its own."""
    logger = logging.getLogger(LOGGER)
    if logger.handlers or logging.getLogger().handlers:
        return None
    handler = make_handler("text")
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return handler


def configure_logging(level: str | int = "info", fmt: str = "text") -> logging.Handler:
    """The CLI's logging: one handler on the root logger (so the app's own loggers print too),
    replacing any handler this module installed before."""
    if isinstance(level, str):
        resolved = logging.getLevelName(level.upper())
        if not isinstance(resolved, int):
            raise ValueError(f"unknown log level {level!r}: use debug, info, warning or error")
        level = resolved
    root = logging.getLogger()
    for old in handlers():
        for logger in (root, logging.getLogger(LOGGER)):
            if old in logger.handlers:
                logger.removeHandler(old)
    handler = make_handler(fmt)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger(LOGGER).setLevel(logging.NOTSET)  # the root's level decides
    return handler


# --- config mistakes in scripts ----------------------------------------------------------------


def install_error_hook() -> None:
    """Print an uncaught `PatterConfigError` as one line (what to fix, and where in the app),
    not a traceback through asyncio. Only if the process still has Python's own excepthook;
    `GETPATTER_TRACEBACK=1` shows the full traceback again."""
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _config_error_hook


def _config_error_hook(
    kind: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    from getpatter.errors import PatterConfigError

    if not isinstance(exc, PatterConfigError) or os.environ.get("GETPATTER_TRACEBACK"):
        sys.__excepthook__(kind, exc, tb)
        return
    where = _app_frame(tb)
    at = f" (at {where})" if where else ""
    print(f"getpatter: error{at}: {exc}", file=sys.stderr)


def _app_frame(tb: TracebackType | None) -> str:
    """`file:line` of the innermost frame that is neither getpatter's nor the stdlib's."""
    import sysconfig

    own = os.path.dirname(os.path.abspath(__file__))
    stdlib = os.path.abspath(sysconfig.get_paths()["stdlib"])
    found = ""
    for frame, line in traceback.walk_tb(tb):
        path = os.path.abspath(frame.f_code.co_filename)
        if path.startswith(own + os.sep) or path.startswith(stdlib + os.sep):
            continue
        rel = os.path.relpath(path)
        found = f"{path if rel.startswith('..') else rel}:{line}"
    return found
