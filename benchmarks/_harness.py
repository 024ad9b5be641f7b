"""The multi-process harness shared by load.py and turn_latency.py.

Both benchmarks measure a server process while fake processes drive it, and drive every child
the same way: a command loop on the child's own event loop, fed (name, kwargs) over a
multiprocessing pipe by a synchronous orchestrator. What a child does is the script's (its
"sides"); how it is started, logged and talked to is here, so both scripts measure with one
set of plumbing.

Imported as `_harness` with `benchmarks/` on sys.path (each script puts it there): the
children are started with the "spawn" context and unpickle `worker` by that module name.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import gc
import io
import logging
import os
import platform
import pstats
import resource
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

Handler = Callable[..., Awaitable[Any]]
NUMBER = "+15550001234"  # the agent's number at the fake Twilio
CALLER = "+15557654321"
HOST = "agent.bench.test"  # public host of the app, routed by the fake to 127.0.0.1:<port>


# --- in the child processes --------------------------------------------------------------------


class LogCounter(logging.Handler):
    """Counts a child's warnings for the report, per `kind` of process.

    A script subclasses it with its own `emit` (how a record is keyed, which errors are printed
    as they come): the reports want different keys, the collection is the same."""

    def __init__(self, kind: str) -> None:
        super().__init__(logging.WARNING)
        self.kind = kind
        self.counts: Counter[str] = Counter()

    async def take(self) -> dict[str, int]:
        """The counts since the last take (the "logs" command), so each phase gets its own."""
        counts, self.counts = dict(self.counts), Counter()
        return counts


@dataclass(frozen=True)
class Child:
    """How a script's children are built. Sent to every child by pickle: module-level
    functions and classes only (the script's are found in its `__main__` again by spawn).

    handlers     (kind, args) -> the child's commands, by name; called once in the child.
    log_counter  the script's LogCounter subclass.
    cpus         kind -> the CPUs to pin the child to (None: no pinning); None: never pin.
    """

    handlers: Callable[[str, dict[str, Any]], dict[str, Handler]]
    log_counter: type[LogCounter]
    cpus: Callable[[str], set[int] | None] | None = None


def raise_nofile_limit(target: int = 65536) -> None:
    """Lift the soft limit on open files towards `target`: a few hundred calls hold a few
    hundred sockets on each side, more than the usual soft limit of 1024 allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, target)), hard))


def worker(kind: str, conn: Connection, child: Child, args: dict[str, Any]) -> None:
    """Entry point of a child: pin it, count its warnings, then run its command loop on a
    fresh event loop. Every child but the server has its cyclic GC off: the fakes keep every
    message, and collections of that heap would stall their loops and the stamps they take."""
    cpus = child.cpus(kind) if child.cpus is not None else None
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    counter = child.log_counter(kind)
    logging.basicConfig(level=logging.WARNING, handlers=[counter])
    raise_nofile_limit()
    handlers = child.handlers(kind, args)
    if kind != "server":
        gc.disable()
    asyncio.run(command_loop(conn, {**handlers, "logs": counter.take}))


async def command_loop(conn: Connection, handlers: dict[str, Handler]) -> None:
    """Commands are (name, kwargs); every one gets ("ok", result) or ("error", traceback).
    A closed pipe is taken as "exit", so a child never outlives its orchestrator's pipe."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            name, kwargs = await loop.run_in_executor(None, conn.recv)
        except (EOFError, OSError):
            name, kwargs = "exit", {}
        try:
            result = await handlers[name](**kwargs)
        except Exception:
            conn.send(("error", traceback.format_exc()))
            continue
        with contextlib.suppress(OSError):
            conn.send(("ok", result))
        if name == "exit":
            return


class Profiling:
    """The server's "profile" command: start profiling (no path), or stop, save to `path` and
    return the hottest frames. pyinstrument (a sampler: little overhead) if installed, else
    cProfile. `lines` and `span` only shape the text returned."""

    def __init__(self, lines: int, span: str) -> None:
        self.lines = lines
        self.span = span
        self.profiler: Any = None

    async def command(self, path: str = "") -> str:
        if not path:
            try:
                from pyinstrument import Profiler
            except ImportError:
                self.profiler = cProfile.Profile()
                self.profiler.enable()
            else:
                self.profiler = Profiler(interval=0.0005, async_mode="disabled")
                self.profiler.start()
            return ""
        prof, self.profiler = self.profiler, None
        if isinstance(prof, cProfile.Profile):
            prof.disable()
            prof.dump_stats(path)
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(30)
            return "cProfile, wall clock (epoll.poll is the idle time):\n" + out.getvalue()
        prof.stop()
        prof.last_session.save(path)
        text = prof.output_text(flat=True, time="percent_of_total", short_mode=True)
        head = "\n".join(text.splitlines()[: self.lines])
        return f"pyinstrument, self time, % of {self.span} (select/poll is the idle time):\n" + head


class ServerSide:
    """Base of a script's server side: its Patter on the fake Twilio, served on 127.0.0.1 at a
    free port, and the "exit" command that stops it. The agent and its hooks are the script's."""

    def __init__(self) -> None:
        self.phone: Any = None
        self.task: asyncio.Task[None] | None = None

    def patter(self, account_sid: str, auth_token: str, base_url: str) -> Any:
        """The Patter answering NUMBER through the fake Twilio at `base_url`: build the agent
        on it, then `serve` it."""
        from getpatter import Patter, Twilio

        self.phone = Patter(
            carrier=Twilio(account_sid, auth_token, base_url=base_url),
            phone_number=NUMBER,
            webhook_url=HOST,
            persist=False,
        )
        return self.phone

    async def serve(self, agent: Any, **hooks: Any) -> dict[str, Any]:
        """Serve `agent` in the background; once up, what the orchestrator needs to route the
        fake to it (port, public host) and to read /proc of this process (pid)."""
        coro = self.phone.serve(agent, port=0, host="127.0.0.1", **hooks)
        self.task = asyncio.create_task(coro)
        host = await asyncio.wait_for(self.phone.ready, 10)
        return {"port": self.phone.port, "public_host": host, "pid": os.getpid()}

    async def exit(self) -> None:
        if self.phone is not None:
            await self.phone.disconnect()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self.task, 10)


class FakeTwilioSide:
    """Base of a script's fake side: a FakeTwilio that can carry any number of concurrent
    streams, NUMBER routed to the app at HOST, and its "start", "route" and "exit" commands.
    Placing and playing the calls is the script's."""

    def __init__(self) -> None:
        self.fake: Any = None

    async def start(
        self, account_sid: str | None = None, auth_token: str | None = None
    ) -> dict[str, Any]:
        """Start the fake (with these credentials: a second fake of the same account); returns
        what the server needs to reach it, and this pid."""
        import aiohttp

        from getpatter.testing.twilio import FakeTwilio

        self.fake = FakeTwilio(account_sid, auth_token)
        await self.fake.start()
        # aiohttp's default connector allows 100 connections and an open WebSocket holds one:
        # the 101st stream would wait for a free slot. Twilio has no such limit.
        await self.fake._session.close()
        self.fake._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.fake.add_number(NUMBER, voice_url=f"https://{HOST}/webhooks/twilio/voice")
        return {
            "account_sid": self.fake.account_sid,
            "auth_token": self.fake.auth_token,
            "base_url": self.fake.base_url,
            "pid": os.getpid(),
        }

    async def route(self, public_host: str, local: str) -> None:
        self.fake.route(public_host, local)

    def forget(self, call_sid: str) -> None:
        """Drop an ended call from the fake, so the next placement starts from a clean slate
        (and the fake does not keep every call's messages for the whole run)."""
        self.fake.calls.pop(call_sid, None)
        self.fake._ctl.pop(call_sid, None)

    async def exit(self) -> None:
        if self.fake is not None:
            await self.fake.stop()


# --- in the orchestrator -----------------------------------------------------------------------


class Worker:
    """A child process and its command pipe, driven synchronously."""

    def __init__(self, ctx: Any, child: Child, kind: str, **args: Any) -> None:
        self.kind = kind
        self.conn, end = ctx.Pipe()
        self.proc = ctx.Process(
            target=worker, args=(kind, end, child, args), name=kind, daemon=True
        )
        self.proc.start()
        end.close()
        self._pending = ""  # the command last sent, for the timeout's message

    def send(self, name: str, **kwargs: Any) -> None:
        self._pending = name
        self.conn.send((name, kwargs))

    def reply(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError(
                f"{self.kind} process gave no answer to {self._pending} in {timeout:.0f} s"
            )
        status, value = self.conn.recv()
        if status == "error":
            raise RuntimeError(f"{self.kind} process failed:\n{value}")
        return value

    def call(self, name: str, timeout: float = 30.0, **kwargs: Any) -> Any:
        self.send(name, **kwargs)
        return self.reply(timeout)

    def close(self, timeout: float = 20.0) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(Exception):
                self.call("exit", timeout=timeout)
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        self.conn.close()


def all_call(workers: list[Worker], name: str, timeout: float = 30.0, **kwargs: Any) -> list[Any]:
    """Send to every worker first, then collect: the processes act at the same moment."""
    for w in workers:
        w.send(name, **kwargs)
    return [w.reply(timeout) for w in workers]


def rss_kib(pid: int) -> int:
    """A process's resident set (VmRSS), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Cores the whole machine kept busy between two machine_busy() readings."""
    return (b[0] - a[0]) / max(1.0, b[1] - a[1]) * (os.cpu_count() or 1)


def quantiles(values: list[float] | np.ndarray) -> dict[str, float]:
    """n, p50, p99 and max; NaN quantiles for no values, so an empty group still prints."""
    v = np.asarray(values, dtype=float)
    if not len(v):
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    p50, p99 = np.percentile(v, [50, 99])
    return {"n": len(v), "p50": float(p50), "p99": float(p99), "max": float(v.max())}


def machine_lines() -> list[str]:
    """The "machine" and "software" lines of a report: what the figures were taken on."""
    import aiohttp

    import getpatter

    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    return [
        f"machine   {os.cpu_count()} cores ({model or platform.processor() or '?'}), "
        f"{platform.system()} {platform.release()}",
        f"software  Python {platform.python_version()} ({platform.python_implementation()}), "
        f"getpatter {getpatter.__version__}, aiohttp {aiohttp.__version__}, "
        f"numpy {np.__version__}",
    ]
