"""How a healthy call sounds while strangers attack the server (issue 15's benchmark).

Four phases of --seconds each: the baseline (no attack), then
  (a) gzip   — 1 MB gzip request bodies (each inflates to ~1 GB) posted back to back, by
               --gzip-streams connections at once, to the voice webhook;
  (b) idle   — --idle TCP connections opened and held (each reopened if closed);
  (c) flood  — a pre-auth media flood: pending calls are opened with signed voice webhooks,
               then --flood-streams sockets on their media paths send media, DTMF, marks and
               `stop` as fast as they can, reconnecting whenever they are closed.
In every phase one healthy call's agent speaks throughout, and the fake caller stamps each
agent media frame as it arrives. Figures: the worst gap between two consecutive frames and its
p99, and the server's own event-loop lag (how late a 10 ms timer fired: what the server
stalled, apart from what the machine's other processes took); and a new call is placed every
--probe-every seconds during the phase: each must be answered (the greeting's first frame
within 5 s). The phases run --repeat rounds, interleaved, each round with its own baseline;
the target: the median over rounds of each phase's worst gap ≤ 100 ms, every call answered.

Three processes, started with the harness of load.py: the server (`Patter.serve`, a
ScriptedEngine whose greeting lasts the whole phase, SQLite history in a temp dir) pinned to the
first CPU; the fake Twilio (the healthy call and the probes) and the attacker (nice 19, its own
RLIMIT_NOFILE raised) on the others.

    .venv/bin/python benchmarks/abuse.py                 # 3 rounds of 8 s phases, ~2.5 min
    .venv/bin/python benchmarks/abuse.py --repeat 1 --seconds 15 --idle 3000
    .venv/bin/python benchmarks/abuse.py --phases flood --profile flood
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import multiprocessing as mp
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout
sys.path.insert(0, str(HERE))  # _harness, here and in the spawned children

import numpy as np  # noqa: E402
from _harness import (  # noqa: E402
    CALLER,
    HOST,
    NUMBER,
    Child,
    FakeTwilioSide,
    Handler,
    LogCounter,
    Profiling,
    ServerSide,
    Worker,
    all_call,
    machine_lines,
    quantiles,
)

TARGET_GAP_MS = 100.0
ANSWER_WITHIN = 5.0  # seconds from placing a probe call to its greeting's first frame
GREETING = "La " * 300  # ~27 s of speech tone: longer than warm-up + a phase


class _LogCounter(LogCounter):
    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage().split(":", 1)[0][:60]
        self.counts[f"{record.levelname} {record.name}: {msg}"] += 1
        if record.name == "asyncio":  # e.g. PYTHONASYNCIODEBUG=1's slow callbacks
            print(f"[{self.kind}] {record.getMessage()[:300]}", flush=True)


def _cpus_for(kind: str) -> set[int] | None:
    if os.environ.get("LOAD_NO_PIN") or not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[0]} if kind == "server" else set(cpus[1:])


def _handlers(kind: str, args: dict[str, Any]) -> dict[str, Handler]:
    if kind == "server":
        return _ServerSide().handlers()
    if kind == "attacker":
        return _Attacker().handlers()
    return _FakeSide().handlers()


CHILD = Child(handlers=_handlers, log_counter=_LogCounter, cpus=_cpus_for)


# --- the server --------------------------------------------------------------------------------


class _ServerSide(ServerSide):
    def __init__(self) -> None:
        super().__init__()
        self.history = tempfile.TemporaryDirectory(prefix="abuse-history-")
        self.profiler = Profiling(lines=45, span="the phase")
        self.watch: asyncio.Task[None] | None = None
        self.worst_lag = 0.0

    def handlers(self) -> dict[str, Handler]:
        return {
            "start": self.start,
            "stats": self.stats,
            "lag": self.lag,
            "profile": self.profiler.command,
            "exit": self.exit,
        }

    async def lag(self) -> None:
        """Start watching the event loop: the longest it was late to wake a 10 ms timer
        until the next "stats" (what the server itself stalled, apart from the machine)."""
        if self.watch is None:
            self.watch = asyncio.create_task(self._watch())
        self.worst_lag = 0.0

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.01)
            self.worst_lag = max(self.worst_lag, loop.time() - t - 0.01)

    async def start(self, account_sid: str, auth_token: str, base_url: str) -> dict[str, Any]:
        from getpatter import Patter, Twilio
        from getpatter.testing.engines import ScriptedEngine

        self.phone = Patter(
            carrier=Twilio(account_sid, auth_token, base_url=base_url),
            phone_number=NUMBER,
            webhook_url=HOST,
            persist=self.history.name,
        )
        agent = self.phone.agent(engine=ScriptedEngine(), first_message=GREETING)
        return await self.serve(agent, dashboard=False)

    async def stats(self) -> dict[str, Any]:
        server = self.phone.server if self.phone is not None else None
        guard = getattr(server, "_guard", None)
        return {
            "calls": len(server.sessions) if server is not None else 0,
            "connections": len(guard) if guard is not None else -1,
            "evicted": getattr(guard, "evicted", 0),
            "timed_out": getattr(guard, "timed_out", 0),
            "refused": getattr(guard, "refused", 0),
            "rss_mib": _rss_mib(),
            "loop_lag_ms": self.worst_lag * 1000,
        }

    async def exit(self) -> None:
        await super().exit()
        self.history.cleanup()


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# --- the fake Twilio: the healthy call and the probes ------------------------------------------


class _FakeSide(FakeTwilioSide):
    def __init__(self) -> None:
        super().__init__()
        self.healthy: Any = None

    def handlers(self) -> dict[str, Handler]:
        return {
            "start": self.start,
            "route": self.route,
            "healthy": self.place_healthy,
            "window": self.window,
            "hangup": self.hangup,
            "exit": self.exit,
        }

    async def place_healthy(self) -> None:
        """A call whose agent is speaking when this returns (its greeting lasts > a phase)."""
        silence = np.zeros(8000 * 60, np.int16)
        self.healthy = await self.fake.place_call(from_=CALLER, to=NUMBER, audio=silence)
        call = self.healthy
        await call.wait_for(lambda: _media_times(call)[-1:] != [], 10)
        await asyncio.sleep(1.0)  # past the playout's first lead

    async def window(self, seconds: float, probe_every: float) -> dict[str, Any]:
        """Measure the healthy call for `seconds` while placing probe calls."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        probes = []
        while loop.time() - t0 < seconds:
            probes.append(asyncio.create_task(self._probe()))
            await asyncio.sleep(probe_every)
        t1 = loop.time()
        answered = await asyncio.gather(*probes)
        times = [t for t in _media_times(self.healthy) if t0 <= t <= t1]
        gaps = np.diff(times) * 1000 if len(times) > 1 else np.array([])
        late = [a for a in answered if a is not None]
        return {
            "frames": len(times),
            "expected": int((t1 - t0) / 0.02),
            "gaps": quantiles(gaps),
            "probes": len(answered),
            "answered": len(late),
            "answer_ms": quantiles([a * 1000 for a in late]),
        }

    async def _probe(self) -> float | None:
        """A new call: seconds to its greeting's first frame, or None if not answered."""
        loop = asyncio.get_running_loop()
        t = loop.time()
        call = None
        try:
            call = await asyncio.wait_for(
                self.fake.place_call(from_=CALLER, to=NUMBER), ANSWER_WITHIN
            )
            await call.wait_for(lambda: bool(_media_times(call)), ANSWER_WITHIN)
            return loop.time() - t
        except (TimeoutError, Exception):
            return None
        finally:
            if call is not None:
                with contextlib.suppress(Exception):
                    await call.hangup()
                self.forget(call.call_sid)

    async def hangup(self) -> None:
        if self.healthy is not None:
            with contextlib.suppress(Exception):
                await self.healthy.hangup()
            self.forget(self.healthy.call_sid)
            self.healthy = None


def _media_times(call: Any) -> list[float]:
    return [t for t, event, _ in call.received if event == "media"]


# --- the attacker ------------------------------------------------------------------------------


def _gzip_bomb(inflated: int = 1 << 30) -> bytes:
    """~1 MB of gzip that inflates to `inflated` bytes of zeros."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\0" * (1 << 20)
    parts = [z.compress(chunk) for _ in range(inflated // len(chunk))]
    parts.append(z.flush())
    return b"".join(parts)


class _Attacker:
    def __init__(self) -> None:
        self.port = 0
        self.auth_token = ""
        self.bomb = b""
        self.counts: dict[str, int] = {}

    def handlers(self) -> dict[str, Handler]:
        return {"setup": self.setup, "attack": self.attack, "exit": self.exit}

    async def setup(self, port: int, auth_token: str) -> dict[str, int]:
        os.nice(19)  # the attacker must not steal the fake's CPU and bend its stamps
        self.port, self.auth_token = port, auth_token
        self.bomb = await asyncio.get_running_loop().run_in_executor(None, _gzip_bomb)
        return {"bomb_bytes": len(self.bomb)}

    async def attack(self, kind: str, seconds: float, **knobs: int) -> dict[str, int]:
        self.counts = {}
        stop = asyncio.get_running_loop().time() + seconds
        runner = {"gzip": self._gzip, "idle": self._idle, "flood": self._flood}[kind]
        await runner(stop, **knobs)
        return dict(self.counts)

    def _count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    async def _gzip(self, stop: float, streams: int = 4) -> None:
        head = (
            f"POST /webhooks/twilio/voice HTTP/1.1\r\nHost: {HOST}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Encoding: gzip\r\n"
            f"Content-Length: {len(self.bomb)}\r\n\r\n"
        )

        async def one() -> None:
            loop = asyncio.get_running_loop()
            while loop.time() < stop:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.write(head.encode() + self.bomb)
                    await writer.drain()
                    status = await asyncio.wait_for(reader.readline(), 10)
                    self._count(status.decode(errors="replace").split(" ")[1:2][0] or "?")
                    writer.close()
                except (OSError, TimeoutError, IndexError):
                    self._count("error")

        await asyncio.gather(*(one() for _ in range(streams)))

    async def _idle(self, stop: float, connections: int = 2000) -> None:
        loop = asyncio.get_running_loop()
        held: list[asyncio.StreamWriter] = []
        readers: list[asyncio.StreamReader] = []
        for _ in range(connections):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                self._count("connect failed")
                continue
            held.append(writer)
            readers.append(reader)
        self._count("opened", len(held))
        while loop.time() < stop:  # reopen what the server closed
            await asyncio.sleep(0.5)
            for i, reader in enumerate(readers):
                if reader.at_eof():
                    self._count("closed by server")
                    with contextlib.suppress(OSError):
                        readers[i], held[i] = await asyncio.open_connection("127.0.0.1", self.port)
        for writer in held:
            writer.close()

    async def _flood(self, stop: float, streams: int = 16, calls: int = 8) -> None:
        import aiohttp
        from twilio.request_validator import RequestValidator

        loop = asyncio.get_running_loop()
        base = f"http://127.0.0.1:{self.port}"
        sids = [f"CA{os.urandom(16).hex()}" for _ in range(calls)]
        payload = base64.b64encode(b"\xff" * 160).decode()
        junk = [
            json.dumps({"event": "media", "streamSid": "MZ1", "media": {"payload": payload}}),
            json.dumps({"event": "dtmf", "streamSid": "MZ1", "dtmf": {"digit": "1"}}),
            json.dumps({"event": "mark", "streamSid": "MZ1", "mark": {"name": "x"}}),
            json.dumps({"event": "stop", "streamSid": "MZ1"}),
        ]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            validator = RequestValidator(self.auth_token)
            for sid in sids:  # pending calls: the attacker knows their ids
                form = {"CallSid": sid, "From": CALLER, "To": NUMBER, "Direction": "inbound"}
                sig = validator.compute_signature(f"https://{HOST}/webhooks/twilio/voice", form)
                async with http.post(
                    f"{base}/webhooks/twilio/voice", data=form, headers={"X-Twilio-Signature": sig}
                ) as response:
                    self._count(f"webhook {response.status}")

            async def one(i: int) -> None:
                url = f"ws://127.0.0.1:{self.port}/ws/stream/{sids[i % len(sids)]}"
                while loop.time() < stop:
                    try:
                        ws = await http.ws_connect(url)
                    except aiohttp.ClientError:
                        self._count("refused")
                        await asyncio.sleep(0.01)
                        continue
                    self._count("sockets")
                    try:
                        while not ws.closed and loop.time() < stop:
                            for message in junk:
                                await ws.send_str(message)
                            self._count("messages", len(junk))
                            await asyncio.sleep(0)
                    except (aiohttp.ClientError, ConnectionError, RuntimeError):
                        pass
                    finally:
                        await ws.close()

            await asyncio.gather(*(one(i) for i in range(streams)))

    async def exit(self) -> None:
        return None


# --- the orchestrator ----------------------------------------------------------------------------


Row = tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]


def run(args: argparse.Namespace) -> bool:
    ctx = mp.get_context("spawn")
    fake = Worker(ctx, CHILD, "fake")
    server = attacker = None
    rows: list[Row] = []
    try:
        creds = fake.call("start")
        server = Worker(ctx, CHILD, "server")
        keys = ("account_sid", "auth_token", "base_url")
        up = server.call("start", timeout=60, **{k: creds[k] for k in keys})
        fake.call("route", public_host=up["public_host"], local=f"127.0.0.1:{up['port']}")
        attacker = Worker(ctx, CHILD, "attacker")
        bomb = attacker.call("setup", timeout=120, port=up["port"], auth_token=creds["auth_token"])
        print(f"   server pid {up['pid']}; gzip bomb {bomb['bomb_bytes'] / 1e6:.2f} MB", flush=True)
        phases: list[tuple[str, str, dict[str, int]]] = [("baseline", "", {})]
        if "gzip" in args.phases:
            phases.append(("(a) gzip 1 MB bodies", "gzip", {"streams": args.gzip_streams}))
        if "idle" in args.phases:
            phases.append((f"(b) {args.idle} idle conns", "idle", {"connections": args.idle}))
        if "flood" in args.phases:
            phases.append(("(c) pre-auth flood", "flood", {"streams": args.flood_streams}))
        for round_ in range(args.repeat):
            for name, kind, knobs in phases:  # interleaved: each round has its own baseline
                print(f"-- round {round_ + 1}: {name}", flush=True)
                rows.append(phase(args, fake, server, attacker, name, kind, knobs))
                time.sleep(args.settle)
        logs = all_call([server, fake], "logs")
    finally:
        for w in (attacker, server, fake):
            if w is not None:
                w.close()
    return report(rows, logs, args)


def phase(
    args: argparse.Namespace,
    fake: Worker,
    server: Worker,
    attacker: Worker,
    name: str,
    kind: str,
    knobs: dict[str, int],
) -> Row:
    fake.call("healthy", timeout=30)
    server.call("lag")
    profiling = bool(args.profile) and kind == args.profile
    if profiling:
        server.call("profile")
    if kind:
        attacker.send("attack", kind=kind, seconds=args.seconds + 1.0, **knobs)
        time.sleep(0.5)  # the attack is under way when the window opens
    window = fake.call(
        "window", timeout=args.seconds + 30, seconds=args.seconds, probe_every=args.probe_every
    )
    attack = attacker.reply(timeout=args.seconds + 60) if kind else {}
    stats = server.call("stats")
    if profiling:
        print(server.call("profile", timeout=60, path=f"/tmp/abuse-{kind}.prof"))
    fake.call("hangup")
    return name, window, attack, stats


def report(rows: list[Row], logs: list[dict[str, int]], args: argparse.Namespace) -> bool:
    print()
    print(
        f"{'phase':24} {'worst gap':>10} {'p99 gap':>8} {'loop lag':>9} {'frames':>12} "
        f"{'new calls':>10} {'answer max':>10}  attack, server"
    )
    for name, w, attack, stats in rows:
        g = w["gaps"]
        print(
            f"{name:24} {g['max']:8.1f}ms {g['p99']:6.1f}ms {stats['loop_lag_ms']:7.1f}ms "
            f"{w['frames']:5}/{w['expected']:<6} {w['answered']:>6}/{w['probes']:<3} "
            f"{w['answer_ms']['max']:8.0f}ms  "
            + ", ".join(f"{k} {v}" for k, v in sorted(attack.items()))
            + f"; conns {stats['connections']}, evicted {stats['evicted']}, "
            f"RSS {stats['rss_mib']:.0f} MiB"
        )
    names = list(dict.fromkeys(name for name, *_ in rows))
    worst = {n: [w["gaps"]["max"] for name, w, *_ in rows if name == n] for n in names}
    base = float(np.median(worst[names[0]])) if names else float("nan")
    print()
    print(f"over {args.repeat} round(s), each phase's worst gap (median of rounds; x baseline):")
    ok = True
    for n in names:
        med = float(np.median(worst[n]))
        answered = all(w["answered"] == w["probes"] for name, w, *_ in rows if name == n)
        passed = med <= TARGET_GAP_MS and answered
        ok &= passed
        print(
            f"   {n:24} {med:6.1f} ms  ({', '.join(f'{x:.0f}' for x in worst[n])})  "
            f"{med / base:5.2f}x  new calls {'all' if answered else 'NOT all'} answered"
            + ("" if passed else "   <- FAIL")
        )
    for kind, counts in zip(("server", "fake"), logs, strict=True):
        for line, n in sorted(counts.items(), key=lambda kv: -kv[1])[:6]:
            print(f"   {kind} log x{n}: {line}")
    print(
        f"target: worst gap <= {TARGET_GAP_MS:.0f} ms (median of rounds) and every new call "
        f"answered within {ANSWER_WITHIN:.0f} s, in every phase: {'PASS' if ok else 'FAIL'}"
    )
    for line in machine_lines():
        print(line)
    with contextlib.suppress(OSError):
        print(f"load      {os.getloadavg()[0]:.1f} (1-min load average at the end)")
    return ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--seconds", type=float, default=8.0, help="length of each phase's window")
    p.add_argument("--phases", nargs="*", default=["gzip", "idle", "flood"])
    p.add_argument("--idle", type=int, default=2000, help="idle connections in phase (b)")
    p.add_argument("--gzip-streams", type=int, default=4)
    p.add_argument("--flood-streams", type=int, default=16)
    p.add_argument("--probe-every", type=float, default=1.0, help="seconds between new calls")
    p.add_argument("--settle", type=float, default=1.0, help="seconds between phases")
    p.add_argument("--profile", default="", help="profile the server during this phase")
    p.add_argument("--repeat", type=int, default=3, help="rounds of all phases")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    ok = run(args)
    print(f"run time  {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
