"""Importing provider SDKs off the event loop, one at a time.

An SDK import takes about a second (openai, google-genai, anthropic): done on the loop it would
stall every call. Done in a background thread it must not overlap another SDK's import in
another thread: they share dependencies (httpx, pydantic), and two threads importing the same
package with internal import cycles can see it partially initialised (`AttributeError:
partially initialized module 'httpx'`). So every plugin imports, and builds its client, through
the one thread here; and, while there, touches what its SDK would otherwise import lazily on
first use (resource classes, the transport's backend, the WebSocket client), so that does not
land on the loop either (tests/test_sdk_import.py records who imports what).
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import ModuleType
from typing import TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_imports: dict[str, Future[ModuleType]] = {}


def _thread() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(1, thread_name_prefix="getpatter-sdk-import")
        return _executor


def preload(module: str) -> Future[ModuleType]:
    """Start importing `module` in the SDK thread (once); its future."""
    with _lock:
        future = _imports.get(module)
    if future is None:
        future = _thread().submit(importlib.import_module, module)
        with _lock:
            future = _imports.setdefault(module, future)
    return future


async def in_sdk_thread(fn: Callable[[], T]) -> T:
    """Run `fn` (which may import SDK modules, e.g. build a client) in the SDK thread."""
    return await asyncio.wrap_future(_thread().submit(fn))
