"""SIGTERM (and an unclaimed SIGINT) as a polite stop of every server on the loop.

Process managers (systemd, `docker stop`, Kubernetes) stop a service with SIGTERM, whose
default action kills the process at once: no call is hung up and none is recorded. While a
server runs, these signals instead hang up every live call, write its record and make
`serve()` return. A second signal gets the previous (default) action, so an operator can
still kill a stuck process.

The handlers are installed only when nobody else claimed the signal: the main thread, a loop
that supports signal handlers, SIGTERM still at its default and SIGINT still Python's default
(`asyncio.run` already turns SIGINT into a cancellation that stops the server politely).
An application with its own handlers should call `phone.disconnect()` from them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import weakref
from collections.abc import Callable

log = logging.getLogger(__name__)

Stopper = Callable[[str], None]


def _unclaimed(sig: signal.Signals) -> bool:
    current = signal.getsignal(sig)
    if sig == signal.SIGINT:
        return current is signal.default_int_handler
    return current in (signal.SIG_DFL, None)


class _LoopSignals:
    """The handlers of one loop, shared by every server running on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.stoppers: list[Stopper] = []
        self.installed: list[signal.Signals] = []

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            if not _unclaimed(sig):
                continue
            try:
                self.loop.add_signal_handler(sig, self._received, sig)
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # e.g. Windows' proactor loop, or not the main thread after all
            self.installed.append(sig)

    def uninstall(self) -> None:
        for sig in self.installed:
            try:
                self.loop.remove_signal_handler(sig)  # back to SIG_DFL / default_int_handler
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        self.installed.clear()

    def _received(self, sig: signal.Signals) -> None:
        stoppers = list(self.stoppers)
        # one polite stop; a second signal gets the default action (kill, KeyboardInterrupt)
        self.uninstall()
        log.warning(
            "%s received: hanging up live calls, writing their records and stopping "
            "(send it again to exit at once)",
            sig.name,
        )
        for stop in stoppers:
            stop(sig.name)


_LOOPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopSignals] = (
    weakref.WeakKeyDictionary()
)


def stop_on_signals(stop: Stopper) -> Callable[[], None]:
    """Call `stop(signal_name)` on SIGTERM (and an unclaimed SIGINT) while the returned
    function has not been called; a no-op where the process's signals are not ours to take."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    state = _LOOPS.get(loop)
    if state is None:
        state = _LOOPS[loop] = _LoopSignals(loop)
        state.install()
    state.stoppers.append(stop)

    def release() -> None:
        if stop in state.stoppers:
            state.stoppers.remove(stop)
        if not state.stoppers:
            state.uninstall()
            if _LOOPS.get(loop) is state:
                del _LOOPS[loop]

    return release
