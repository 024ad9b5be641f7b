"""The other nodes, through PostgreSQL: who is up, which calls are live where, and control of a
call from any node. No cluster software of our own: a table, a heartbeat and LISTEN/NOTIFY.

- `nodes`: one row per node, its route and a heartbeat (the database's clock, so nodes' clocks
  may differ) every `heartbeat` seconds. A node whose heartbeat is older than `timeout` is
  lost: the first node to notice ends its live calls in history as `node_lost` (nothing
  vanishes silently). A node judges others only once it has itself reached the database for
  a whole `timeout` without a break, so a database outage does not make every node "lost".
- `live_calls`: one row per call in progress (written through the database's queue, like
  records: a call never waits on it). The dashboard of any node lists them all.
- control: every node LISTENs on its own channel; a hang-up or transfer asked of a node that
  does not hold the call is NOTIFYed to the one that does, which answers on the asker's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from getpatter.core.pg import Database

if TYPE_CHECKING:
    from getpatter.core.server import EmbeddedServer
    from getpatter.core.session import CallSession
    from getpatter.core.store import Scrubber
    from getpatter.core.store_pg import PostgresStore

log = logging.getLogger(__name__)

HEARTBEAT = 2.0  # seconds between heartbeats
TIMEOUT = 10.0  # seconds without a heartbeat before a node is taken for dead
CONTROL_TIMEOUT = 5.0  # seconds to wait for the holding node's answer
CHANNEL = "getpatter:"  # + node name: the node's control channel
UP, DRAINING, STOPPED, LOST = "up", "draining", "stopped", "lost"

#: (op, call id or key, args) → result dict with "ok"; run by the node that holds the call
ControlHandler = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]


class Cluster:
    """This node's membership of the cluster (see module doc)."""

    def __init__(
        self,
        db: Database,
        node: str,
        url: str,
        *,
        on_control: ControlHandler,
        local_calls: Callable[[], list[CallSession]],
        scrub: Scrubber | None = None,
        heartbeat: float | None = None,
        timeout: float | None = None,
    ) -> None:
        """`heartbeat`, `timeout`: seconds; default GETPATTER_HEARTBEAT and
        GETPATTER_HEARTBEAT_TIMEOUT, else 2 and 10."""
        heartbeat = heartbeat or _env_seconds("GETPATTER_HEARTBEAT", HEARTBEAT)
        timeout = timeout or _env_seconds("GETPATTER_HEARTBEAT_TIMEOUT", TIMEOUT)
        self.db = db
        self.node = node
        self.url = url
        self.heartbeat = heartbeat
        self.timeout = max(timeout, 2 * heartbeat)
        self._on_control = on_control
        self._local_calls = local_calls
        self._scrub = scrub
        self._state = UP
        self._remote: list[dict[str, Any]] = []
        self._reported: dict[str, tuple[str, str]] = {}  # key → (call id, state) in live_calls
        self._tasks: set[asyncio.Task[Any]] = set()
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._listener: Any = None  # asyncpg.Connection holding the LISTEN
        self._listening = asyncio.Event()
        self._beats: asyncio.Task[None] | None = None
        self._listen_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Cluster(node={self.node!r}, state={self._state!r})"

    @property
    def channel(self) -> str:
        return CHANNEL + self.node

    # --- life ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Join: this node's row, the calls an earlier process of this node left behind,
        the control channel, the heartbeat."""
        await self.db.run(self._join, transaction=True)
        loop = asyncio.get_running_loop()
        self._listen_task = loop.create_task(self._listen_loop(), name="getpatter:listen")
        self._beats = loop.create_task(self._heartbeat_loop(), name="getpatter:heartbeat")
        try:
            await asyncio.wait_for(self._listening.wait(), self.db.timeout)
        except TimeoutError:
            log.warning("node %s: control channel not up yet; retrying", self.node)

    async def _join(self, con: Any) -> None:
        fresh = await con.fetchval(
            "SELECT state IN ('up', 'draining') AND heartbeat_at > now() - "
            "make_interval(secs => $2) FROM nodes WHERE name = $1",
            self.node,
            self.timeout,
        )
        if fresh:  # a restart right after a crash looks the same: a warning, not a refusal
            log.warning(
                "node %s: a node of this name beat its heart %.0f s ago or less; if another "
                "process runs as %s, give each node its own name (GETPATTER_NODE)",
                self.node,
                self.timeout,
                self.node,
            )
        await con.execute(
            "INSERT INTO nodes (name, url, state, started_at, heartbeat_at) "
            "VALUES ($1, $2, $3, now(), now()) ON CONFLICT (name) DO UPDATE SET "
            "url = EXCLUDED.url, state = EXCLUDED.state, started_at = now(), heartbeat_at = now()",
            self.node,
            self.url,
            UP,
        )
        left = await _end_calls_of(con, self.node, "interrupted", time.time())
        if left:
            log.warning(
                "node %s: %d calls of its previous process marked interrupted", self.node, left
            )

    async def set_draining(self) -> None:
        self._state = DRAINING
        await self._set_state(DRAINING)

    async def stop(self) -> None:
        """Leave: this node's row says stopped (its calls have ended by now)."""
        for task in (self._beats, self._listen_task, *self._tasks):
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in (self._beats, self._listen_task, *self._tasks) if t is not None),
            return_exceptions=True,
        )
        for fut in self._replies.values():
            if not fut.done():
                fut.cancel()
        if self._listener is not None:
            listener, self._listener = self._listener, None
            try:
                await asyncio.wait_for(listener.close(), 2)
            except Exception:
                listener.terminate()
        self._state = STOPPED
        node = self.node

        async def leave(con: Any) -> None:
            await con.execute("DELETE FROM live_calls WHERE node = $1", node)
            await con.execute("UPDATE nodes SET state = $2 WHERE name = $1", node, STOPPED)

        self.db.submit(leave, f"node {node} leaving")

    async def _set_state(self, state: str) -> None:
        try:
            await self.db.fetchval(
                "UPDATE nodes SET state = $2, heartbeat_at = now() WHERE name = $1",
                self.node,
                state,
            )
        except self.db.transient as exc:
            log.warning("node %s: could not record state %s: %r", self.node, state, exc)

    # --- live calls (queued writes) ------------------------------------------------------

    def _live_row(self, session: CallSession) -> tuple[Any, ...]:
        row = {"caller": session.caller, "callee": session.callee}
        if self._scrub is not None:
            row = self._scrub(row)
        return (
            session.key,
            session.call_id,
            self.node,
            row["caller"],
            row["callee"],
            session.direction,
            "live" if session.state == "live" else "pending",
            session.created_at,
            session.started_at,
        )

    def call_opened(self, session: CallSession) -> None:
        args = self._live_row(session)
        self._reported[session.key] = (session.call_id, args[6])

        async def insert(con: Any) -> None:
            await con.execute(
                "INSERT INTO live_calls (key, call_id, node, caller, callee, direction, state, "
                "created_at, started_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
                "ON CONFLICT (key) DO UPDATE SET call_id = EXCLUDED.call_id, "
                "node = EXCLUDED.node, state = EXCLUDED.state, started_at = EXCLUDED.started_at",
                *args,
            )

        self.db.submit(insert, f"live call {session.call_id}", droppable=True)

    # --- as a call observer (core/observe.py) ---------------------------------------------

    def call_started(self, call: CallSession) -> None:
        pass  # its row is written by `call_opened`, once the server has keyed the call

    def call_event(self, call: CallSession, kind: str, data: dict[str, Any]) -> None:
        if kind == "media_started":  # live: its row says so (and has the carrier's id)
            self.call_opened(call)

    def turn_completed(self, call: CallSession, times: Any, turn: dict[str, Any]) -> None:
        pass

    def call_ended(self, call: CallSession, record: dict[str, Any]) -> None:
        """Its record is queued (before this): now its row among the live calls goes."""
        key = call.key
        self._reported.pop(key, None)

        async def delete(con: Any) -> None:
            await con.execute("DELETE FROM live_calls WHERE key = $1", key)

        self.db.submit(delete, f"end of live call {key}")

    def _sync_live(self) -> None:
        """Each heartbeat: the rows of calls that went live (or learned the carrier's id)
        since, so the media path never waits on this bookkeeping."""
        for session in self._local_calls():
            state = "live" if session.state == "live" else "pending"
            if session.state != "ended" and self._reported.get(session.key) != (
                session.call_id,
                state,
            ):
                self.call_opened(session)

    def remote_calls(self) -> list[dict[str, Any]]:
        """Live calls on the other nodes, as of the last heartbeat."""
        return list(self._remote)

    # --- heartbeat -----------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except self.db.transient as exc:
                self._remote = []  # no longer known: better none than stale
                log.debug("node %s: heartbeat failed: %r", self.node, exc)
            except Exception:
                log.exception("node %s: heartbeat failed", self.node)

    async def beat(self) -> None:
        """One heartbeat: our row and calls, the other nodes' live calls, the dead nodes'."""
        self._sync_live()
        was = await self.db.run(self._beat, transaction=True)
        if was == LOST:
            sessions = [s for s in self._local_calls() if s.state != "ended"]
            log.warning(
                "node %s was taken for dead (its heartbeat was late); its %d calls are live "
                "again in the cluster's view",
                self.node,
                len(sessions),
            )
            for session in sessions:
                self.call_opened(session)
        rows = await self.db.fetch(
            "SELECT l.key, l.call_id, l.node, l.caller, l.callee, l.direction, l.state, "
            "l.created_at, l.started_at FROM live_calls l JOIN nodes n ON n.name = l.node "
            "WHERE l.node <> $1 AND n.state IN ('up', 'draining') "
            "AND n.heartbeat_at > now() - make_interval(secs => $2) ORDER BY l.created_at",
            self.node,
            self.timeout,
        )
        self._remote = [dict(r) for r in rows]
        since = self.db.reachable_since
        if since is not None and time.monotonic() - since >= self.timeout:
            await self.db.run(self._sweep, transaction=True)

    async def _beat(self, con: Any) -> str | None:
        was: str | None = await con.fetchval(
            "SELECT state FROM nodes WHERE name = $1 FOR UPDATE", self.node
        )
        if was is None:
            await con.execute(
                "INSERT INTO nodes (name, url, state) VALUES ($1, $2, $3)",
                self.node,
                self.url,
                self._state,
            )
        else:
            await con.execute(
                "UPDATE nodes SET heartbeat_at = now(), state = $2 WHERE name = $1",
                self.node,
                self._state,
            )
        return was

    async def _sweep(self, con: Any) -> None:
        lost = await con.fetch(
            "UPDATE nodes SET state = $2 WHERE name <> $1 AND state IN ('up', 'draining') "
            "AND heartbeat_at < now() - make_interval(secs => $3) "
            "RETURNING name, extract(epoch FROM heartbeat_at)::double precision AS last",
            self.node,
            LOST,
            self.timeout,
        )
        for row in lost:
            n = await _end_calls_of(con, row["name"], "node_lost", row["last"])
            log.warning(
                "node %s lost (no heartbeat for %.0f s): %d of its calls marked node_lost",
                row["name"],
                time.time() - row["last"],
                n,
            )

    # --- control -------------------------------------------------------------------------

    async def owner(self, call: str) -> tuple[str, str] | None:
        """(node, key) of the live call `call` (its id or key) on a node that is up."""
        row = await self.db.fetchrow(
            "SELECT l.node, l.key FROM live_calls l JOIN nodes n ON n.name = l.node "
            "WHERE (l.call_id = $1 OR l.key = $1) AND n.state IN ('up', 'draining') "
            "ORDER BY l.created_at DESC LIMIT 1",
            call,
        )
        return None if row is None else (row["node"], row["key"])

    async def control(self, call: str, op: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """Ask the node holding `call` to do `op`; its answer, or None if no node holds it."""
        found = await self.owner(call)
        if found is None:
            return None
        node, key = found
        if node == self.node:
            return await self._on_control(op, key, args)
        request_id = secrets.token_hex(8)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = fut
        payload = {"op": op, "call": key, "args": args, "id": request_id, "reply_to": self.node}
        try:
            await self.db.fetchval("SELECT pg_notify($1, $2)", CHANNEL + node, json.dumps(payload))
            return await asyncio.wait_for(fut, CONTROL_TIMEOUT)
        except TimeoutError:
            return {"ok": False, "error": f"node {node} did not answer", "node": node}
        finally:
            self._replies.pop(request_id, None)

    async def _listen_loop(self) -> None:
        """Hold a connection LISTENing on our channel; reconnect when it drops."""
        import asyncpg

        backoff = 0.2
        while True:
            lost = asyncio.Event()
            try:
                con = await asyncpg.connect(self.db.url, timeout=self.db.timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("node %s: control channel: %r", self.node, exc)
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)  # a NOTIFY sent meanwhile is lost: be back soon
                continue
            self._listener = con
            con.add_termination_listener(lambda _c, lost=lost: lost.set())
            try:
                await con.add_listener(self.channel, self._notified)
                self._listening.set()
                backoff = 0.2
                await lost.wait()
                log.warning("node %s: control channel lost; reconnecting", self.node)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("node %s: control channel: %r", self.node, exc)
                await asyncio.sleep(backoff)
            finally:
                self._listening.clear()
                self._listener = None
                con.terminate()

    def _notified(self, _con: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
            op = str(message["op"])
        except (ValueError, KeyError, TypeError):
            log.warning("node %s: malformed control message ignored", self.node)
            return
        if op == "reply":
            fut = self._replies.get(str(message.get("id")))
            if fut is not None and not fut.done():
                fut.set_result(dict(message.get("result") or {}))
            return
        task = asyncio.get_running_loop().create_task(self._serve_control(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_control(self, message: dict[str, Any]) -> None:
        try:
            result = await self._on_control(
                str(message["op"]), str(message.get("call", "")), dict(message.get("args") or {})
            )
        except Exception as exc:
            log.exception("node %s: control %s failed", self.node, message.get("op"))
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        result = {**result, "node": self.node}
        reply = {"op": "reply", "id": message.get("id"), "result": result}
        try:
            await self.db.fetchval(
                "SELECT pg_notify($1, $2)",
                CHANNEL + str(message.get("reply_to", "")),
                json.dumps(reply, default=str),
            )
        except self.db.transient as exc:
            log.warning("node %s: could not answer a control request: %r", self.node, exc)


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %s", name, raw, default)
        return default
    return value if value > 0 else default


async def _end_calls_of(con: Any, node: str, reason: str, ended_at: float) -> int:
    """The live calls of a node that is gone become finished (state `interrupted`, reason
    `reason`) in history, with what is known of them; returns how many."""
    rows = await con.fetch(
        "DELETE FROM live_calls WHERE node = $1 RETURNING call_id, caller, callee, direction, "
        "created_at, started_at",
        node,
    )
    for r in rows:
        started = r["started_at"]
        duration = round(max(0.0, ended_at - started), 3) if started else 0.0
        await con.execute(
            "INSERT INTO calls (call_id, caller, callee, direction, created_at, started_at, "
            "ended_at, duration, end_reason, answered, state, node) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'interrupted', $11) "
            "ON CONFLICT (call_id) DO UPDATE SET ended_at = EXCLUDED.ended_at, "
            "duration = EXCLUDED.duration, end_reason = EXCLUDED.end_reason, "
            "answered = EXCLUDED.answered OR calls.answered, state = 'interrupted' "
            "WHERE calls.state = 'active'",
            r["call_id"],
            r["caller"],
            r["callee"],
            r["direction"],
            r["created_at"],
            started,
            ended_at,
            duration,
            reason,
            started is not None,
            node,
        )
    # rows opened at the first webhook whose live-call row never made it
    status = await con.execute(
        "UPDATE calls SET state = 'interrupted', end_reason = $2, ended_at = $3 "
        "WHERE node = $1 AND state = 'active'",
        node,
        reason,
        ended_at,
    )
    return len(rows) + int(status.split()[-1] or 0)


# --- the server's side -------------------------------------------------------------------------


async def join(server: EmbeddedServer, store: PostgresStore, scrub: Scrubber) -> Cluster:
    """This node's membership of the cluster whose history `store` holds."""

    async def on_control(op: str, key: str, args: dict[str, Any]) -> dict[str, Any]:
        return await run_control(server, op, key, args)

    cluster = Cluster(
        store.db,
        store.node,
        server.node.base_url(server.public_host),
        on_control=on_control,
        local_calls=lambda: list(server.sessions.values()),
        scrub=scrub,
    )
    try:
        await cluster.start()
    except BaseException:
        await store.close()
        raise
    return cluster


async def control_call(
    server: EmbeddedServer, call_id: str, op: str, args: dict[str, Any]
) -> dict[str, Any]:
    """Hang up or transfer a live call, wherever it is: on `server`, or on the node that
    holds it. `{"ok": False, "error": ...}` (and `"missing"`) if it can't be done."""
    session = server.find_call(call_id) or server.call_by_key(call_id)
    if session is not None and session.state != "ended":
        return await run_control(server, op, session.key, args)
    if server.cluster is not None:
        result = await server.cluster.control(call_id, op, args)
        if result is not None:
            return result
    return {"ok": False, "error": f"no call {call_id!r} in progress", "missing": True}


async def run_control(
    server: EmbeddedServer, op: str, key: str, args: dict[str, Any]
) -> dict[str, Any]:
    """`op` on a call this node holds (asked here, or by another node)."""
    from getpatter.errors import CallError

    session = server.call_by_key(key) or server.find_call(key)
    if session is None or session.state == "ended":
        return {"ok": False, "error": f"no call {key!r} in progress here", "missing": True}
    try:
        if op == "hangup":
            await session.hangup("operator_hangup")
        elif op == "transfer":
            await session.transfer(str(args.get("to", "")))
        else:
            return {"ok": False, "error": f"unknown operation {op!r}"}
    except CallError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "call_id": session.call_id}
