"""What a server keeps of its calls, and what it keeps out of its logs.

Opening history means: the store (SQLite, memory, or PostgreSQL with the cluster it brings),
marking the calls a killed process left active as interrupted, the journal that writes live
calls as they go, the secrets redacted from every log line, and whoever watches the calls
(tracing, metrics, the dashboard). The server holds one `History` for its whole life.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from getpatter.core.credentials import redact_logs, secret_values, secrets_in
from getpatter.core.journal import CallJournal
from getpatter.core.webguard import LOOPBACK_HOSTS

if TYPE_CHECKING:
    from getpatter.agent import Agent
    from getpatter.core.server import EmbeddedServer
    from getpatter.core.store import Scrubber, Store
    from getpatter.dashboard.routes import Dashboard

log = logging.getLogger(__name__)


class History:
    """The call store's life beside the server's, and the log redaction that goes with it."""

    def __init__(self) -> None:
        self.journal: CallJournal | None = None
        self._sink: Callable[[dict[str, Any]], Any] | None = None
        self._unredact: list[Callable[[], None]] = []  # secrets kept out of the logs, to release
        self._redacted: set[int] = set()  # agents whose secrets are registered

    def redact(self, values: Iterable[str]) -> None:
        """Keep `values` out of every log line of the process until `close()`."""
        self._unredact.append(redact_logs(list(values)))

    def redact_agent(self, agent: Agent) -> None:
        """Another agent's keys (phone.call(agent=...)), once per agent."""
        if id(agent) not in self._redacted:
            self._redacted.add(id(agent))
            self.redact(secrets_in(agent))

    async def open(self, server: EmbeddedServer, given_token: str) -> Dashboard | None:
        """Open the store, the journal and the watchers; the dashboard if the server has one."""
        from getpatter.core.store import Scrubber

        token = given_token
        # beyond loopback, or behind a balancer (which makes a loopback node public): a token
        exposed = server.host not in LOOPBACK_HOSTS or server.node.behind_balancer
        if server.dashboard and not token and exposed:
            token = secrets.token_urlsafe(24)
        known = [*secret_values(server.config), *secrets_in(server.agent), token]
        # out of every log line of the process (any logger, any level) while we serve; a
        # generated dashboard token only after start() has shown it, once, to its owner
        self.redact(s for s in known if s != token or given_token)
        scrub = Scrubber(known, mask_phone_numbers=server.mask_phone_numbers)
        store = server.store = await _open_store(server, scrub)
        await _mark_interrupted(store)
        self.journal = CallJournal(store)
        ui: Dashboard | None = None

        async def keep(record: dict[str, Any]) -> None:
            try:
                await store.write(record)
            except Exception:
                log.exception("call %s: storing the call record failed", record.get("call_id"))
            if ui is not None:
                ui.changed()

        self._sink = keep
        server.record_sinks.append(keep)
        render = _watch(server)
        if server.dashboard:
            from getpatter.dashboard.routes import Dashboard

            ui = Dashboard(server, store, scrub, token, metrics=render)
        return ui

    async def close(self, server: EmbeddedServer) -> None:
        """Write what is pending, leave the cluster, close the store, release the redaction."""
        while self._unredact:
            self._unredact.pop()()
        self._redacted.clear()
        sink, self._sink = self._sink, None
        if sink is not None and sink in server.record_sinks:
            server.record_sinks.remove(sink)
        journal, self.journal = self.journal, None
        if journal is not None:
            await journal.aclose()
        cluster, server.cluster = server.cluster, None
        if cluster is not None:
            if cluster in server.observers:
                server.observers.remove(cluster)
            await cluster.stop()
        store, server.store = server.store, None
        if store is not None:
            await store.close()


async def _open_store(server: EmbeddedServer, scrub: Scrubber) -> Store:
    """The history at the persist location; PostgreSQL brings the cluster with it."""
    from getpatter.core.store import open_store
    from getpatter.core.store_pg import PostgresStore

    store = await open_store(server.config.persist_root, scrub, node=server.node.ident)
    if isinstance(store, PostgresStore):
        from getpatter.core.cluster import join

        server.cluster = await join(server, store, scrub)
    return store


async def _mark_interrupted(store: Store) -> None:
    """Calls a killed process left active: marked interrupted, with what was said."""
    try:
        cut_off = await store.interrupt_active()
    except Exception as exc:
        log.error("call history: marking interrupted calls failed: %s", exc)
        return
    if cut_off:
        log.warning(
            "%d call(s) were cut off when this server last stopped without hanging up "
            "(killed?); their records are marked interrupted, with what was said",
            len(cut_off),
        )


def _watch(server: EmbeddedServer) -> Callable[[], Any] | None:
    """The server's observers (cluster rows, tracing, metrics); /metrics' renderer if served."""
    from getpatter.observability import has_prometheus, tracer_for

    server.observers.clear()
    if server.cluster is not None:  # a call's row among the live calls follows the call
        server.observers.append(server.cluster)
    tracer = tracer_for(server.tracer_provider, server.carrier.name)
    if tracer is not None:
        server.observers.append(tracer)
    server.metrics_enabled = server.dashboard and has_prometheus()
    if not server.metrics_enabled:
        return None
    from getpatter.observability.prometheus import CallMetricsExporter

    exporter = CallMetricsExporter(lambda: list(server.sessions.values()))
    server.observers.append(exporter)
    return exporter.render
