"""EmbeddedServer: the aiohttp app that mounts the carrier's routes, the media socket and health.

The server owns the table of calls. Carriers create sessions from their webhooks; the media
socket (one route for every carrier) opens only with the single-use token the carrier was
handed for that call, and is refused before any engine or provider session is opened.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from getpatter.core.carrier import Admission, CallTable, Carrier, DialRequest
from getpatter.core.connections import (
    HEADER_TIMEOUT,
    AcceptErrorLog,
    ConnectionGuard,
    connection_limit,
    raise_fd_limit,
)
from getpatter.core.engine import Engine, EngineCall
from getpatter.core.history import History
from getpatter.core.media_socket import MediaSockets
from getpatter.core.node import (
    BUSY_MESSAGE,
    DRAIN_GOODBYE,
    Gate,
    NodeSettings,
    prefixed,
    request_url,
)
from getpatter.core.observe import CallObserver
from getpatter.core.playout import PlayoutScheduler
from getpatter.core.session import AmdCallback, CallCallbacks, CallInfo, CallSession
from getpatter.core.signals import stop_on_signals
from getpatter.core.webguard import REQUEST_TIMEOUT, request_guard
from getpatter.errors import CallError, PatterConfigError

if TYPE_CHECKING:
    from getpatter.agent import Agent
    from getpatter.config import LocalConfig
    from getpatter.core.cluster import Cluster
    from getpatter.core.pricing import PriceTable
    from getpatter.core.store import Store
    from getpatter.dashboard.routes import Dashboard

log = logging.getLogger(__name__)

TOKEN_TTL = 60.0  # seconds between the carrier's webhook and its media socket
HISTORY_LIMIT = 1000
SEEN_LIMIT = 100_000  # carrier call ids remembered (beyond history) against replayed webhooks


class EmbeddedServer:
    """The server behind `Patter.serve()`; `start(port)` blocks until `stop()` (or SIGTERM)."""

    handle_signals = True  # SIGTERM stops politely (see core/signals.py); False leaves them be
    max_connections: int | None = None  # None: from the open-file limit (core/connections.py)
    header_timeout = HEADER_TIMEOUT  # seconds for a new connection's first request headers
    keepalive_timeout = 15.0  # seconds an idle keep-alive connection is kept
    request_timeout = REQUEST_TIMEOUT  # seconds for a request with a body (core/webguard.py)

    def __init__(
        self,
        config: LocalConfig,
        agent: Agent,
        recording: bool = False,
        voicemail_message: str = "",
        *,
        callbacks: CallCallbacks | None = None,
        dashboard: bool = True,
        dashboard_token: str = "",
        host: str = "127.0.0.1",
        pricing: PriceTable | None = None,
        mask_phone_numbers: bool = False,
        tracer_provider: Any = None,
        node: NodeSettings | None = None,
    ) -> None:
        self.config = config
        self.node = node or NodeSettings()
        self.busy_message = BUSY_MESSAGE  # what callers hear when every line is busy
        self.drain_goodbye = DRAIN_GOODBYE  # what callers still on the line at the drain's end hear
        self.cluster: Cluster | None = None  # the other nodes, when history is in PostgreSQL
        self.agent = agent
        self.recording = recording
        self.voicemail_message = voicemail_message
        self.callbacks = callbacks or CallCallbacks()
        self.dashboard = dashboard
        if not isinstance(dashboard_token, str):
            raise PatterConfigError("dashboard_token must be a str (empty: none)")
        self._dashboard_token = dashboard_token
        self.host = host
        self.pricing = pricing
        self.mask_phone_numbers = mask_phone_numbers
        self.store: Store | None = None  # call history, opened by start()
        self._dashboard_ui: Dashboard | None = None
        self._history = History()  # the store, the journal, secrets kept out of the logs
        self.port: int | None = None
        self.sessions: dict[str, CallSession] = {}
        self.gate = Gate(self.node, self.sessions)  # capacity and drain
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_LIMIT)
        self.record_sinks: list[Callable[[dict[str, Any]], Any]] = []
        self._media = MediaSockets(self)  # the media sockets and their single-use tokens
        self._carrier_ids: dict[str, str] = {}  # carrier call id → session key, while it lives
        self._seen: OrderedDict[str, None] = OrderedDict()  # carrier call ids given a session
        self._runner: web.AppRunner | None = None
        self._stopped: asyncio.Event | None = None
        self._shutting_down: asyncio.Future[None] | None = None
        self._scheduler: PlayoutScheduler | None = None
        self._signal_stop: asyncio.Task[None] | None = None
        self._guard: ConnectionGuard | None = None
        self._listener: asyncio.Server | None = None
        self._accept_log = AcceptErrorLog()
        self.tracer_provider = tracer_provider  # None: OpenTelemetry's global one
        self.observers: list[CallObserver] = []  # tracing and metrics, set up by start()
        self.metrics_enabled = False  # /metrics is served (prometheus-client is installed)
        if agent.engine is not None and not isinstance(agent.engine, Engine):
            raise PatterConfigError(
                f"engine={type(agent.engine).__name__}(...) is not an engine: "
                "it needs an open(call) method (e.g. OpenAIRealtime)"
            )
        if agent.engine is None and agent.llm is None and self.callbacks.on_message is None:
            raise PatterConfigError(
                "this pipeline agent has no brain: pass llm=OpenAILLM() (or any LLM) to "
                "phone.agent(), on_message=fn to serve(), or engine=OpenAIRealtime() for speech "
                "to speech (the default when OPENAI_API_KEY is set)"
            )
        self._engines: dict[int, Engine] = {}
        self.engine_for(agent)  # provider mistakes surface now, before the server listens
        self.carrier: Carrier = self._make_carrier()
        self._listening: asyncio.Future[int] | None = None

    @property
    def listening(self) -> asyncio.Future[int]:
        """Resolves to the bound port once the server listens; rejects if binding fails."""
        if self._listening is None:
            self._listening = asyncio.get_running_loop().create_future()
        return self._listening

    def __repr__(self) -> str:
        return f"EmbeddedServer(carrier={self.config.telephony_provider!r}, port={self.port})"

    def _make_carrier(self) -> Carrier:
        """The carrier registered under the config's provider name, working against this
        server as its `CallTable` and reading its own credentials from the config."""
        from getpatter.core.registry import default_registry

        carrier_cls = default_registry().load("carrier", self.config.telephony_provider)
        table: CallTable = self
        carrier: Carrier = carrier_cls(table, self.config)
        return carrier

    @property
    def dashboard_guard(self) -> str:
        """How the dashboard (and /metrics) is guarded: `off` (no dashboard), `open` (no token:
        loopback only), `token` (the dashboard_token= given) or `generated` (made at start)."""
        ui = self._dashboard_ui
        if ui is None:
            return "off"
        if not ui.token:
            return "open"
        return "token" if self._dashboard_token else "generated"

    # --- public URLs ---------------------------------------------------------------------

    @property
    def public_host(self) -> str:
        return self.config.webhook_url or f"{self.host}:{self.port}"

    def public_url(self, path: str) -> str:
        """Where carriers reach this node (its own route when it is one of many)."""
        return self.node.base_url(self.public_host) + path

    def public_ws_url(self, path: str) -> str:
        return "wss://" + self.public_url(path).removeprefix("https://")

    def request_url(self, request: web.Request) -> str:
        return request_url(request, self.public_host, self.node.host(self.public_host))

    def admit(self, request: web.Request) -> Admission:
        return self.gate.admit(request)  # capacity and drain: core/node.py

    def stream_url(self, key: str) -> str:
        return self.public_ws_url(f"/ws/stream/{key}")

    # --- calls ---------------------------------------------------------------------------

    def new_call(
        self,
        info: CallInfo,
        *,
        key: str | None = None,
        agent: Agent | None = None,
        token_ttl: float = TOKEN_TTL,
    ) -> tuple[CallSession, str]:
        """A call the carrier is about to stream: its session and its single-use media token."""
        assert self._scheduler is not None, "server not started"
        key = key or info.call_id
        if agent is not None and agent is not self.agent:
            self._history.redact_agent(agent)
        journal = self._history.journal
        session = CallSession(
            info,
            agent or self.agent,
            callbacks=self.callbacks,
            control=self.carrier,
            scheduler=self._scheduler,
            on_record=lambda record: self._write_record(key, record),
            recording=self.recording,
            pricing=self.pricing,
            journal=journal.changed if journal is not None else None,
            observers=self.observers,
        )
        session.key = key
        self.sessions[key] = session
        self.bind_carrier_id(info.call_id, key)
        if self.cluster is not None:
            self.cluster.call_opened(session)
        token = self._media.issue(key, token_ttl)
        asyncio.get_running_loop().call_later(token_ttl + 1, self._expire, key)
        return session, token

    async def open_call(
        self, info: CallInfo, *, key: str | None = None
    ) -> tuple[CallSession, str] | None:
        """First sight of a carrier's call (its first webhook): its session and media token,
        and its record in history from now on. None when this call id was seen before — a
        replayed or duplicated webhook gets no session and leaves the call's record alone."""
        preliminary = {
            "call_id": info.call_id,
            "caller": info.caller,
            "callee": info.callee,
            "direction": info.direction,
            "created_at": time.time(),
        }
        if not await self._claim(info.call_id, preliminary):
            return None
        return self.new_call(info, key=key)

    async def _claim(self, call_id: str, record: dict[str, Any], *, ours: bool = False) -> bool:
        """Whether `call_id` is new here and in history; if so its row now exists (active).
        `ours`: the id of a call we dialled, already bound to its session."""
        if not call_id or call_id in self._seen:
            return False
        if not ours and self.find_call(call_id) is not None:
            return False
        self._seen[call_id] = None
        while len(self._seen) > SEEN_LIMIT:
            self._seen.popitem(last=False)
        if self.store is None:
            return True
        try:
            return await self.store.open_call(record)
        except Exception as exc:  # history is broken: the call still gets answered
            log.error("call %s: opening its record failed: %s", call_id, exc)
            return True

    def new_outbound_call(
        self,
        *,
        to: str,
        from_: str,
        agent: Agent,
        first_message: str = "",
        voicemail_message: str = "",
        on_machine_detection: AmdCallback | None = None,
        ring_timeout: int | None = 25,
    ) -> tuple[CallSession, str]:
        """The session of a call we are about to dial, keyed by our own id until the carrier
        gives its own; the media token lives through the ringing."""
        key = "out-" + secrets.token_hex(12)
        info = CallInfo(
            call_id=key,
            caller=from_,
            callee=to,
            direction="outbound",
            first_message=first_message or None,
            voicemail_message=voicemail_message,
            on_machine_detection=on_machine_detection,
        )
        ttl = (ring_timeout or 60) + 30.0
        return self.new_call(info, key=key, agent=agent, token_ttl=ttl)

    def bind_carrier_id(self, carrier_id: str, key: str) -> None:
        self._carrier_ids[carrier_id] = key

    def find_call(self, carrier_id: str) -> CallSession | None:
        key = self._carrier_ids.get(carrier_id, carrier_id)
        return self.sessions.get(key)

    def call_by_key(self, key: str) -> CallSession | None:
        return self.sessions.get(key)

    async def place_call(
        self,
        *,
        to: str,
        from_: str,
        agent: Agent,
        first_message: str = "",
        machine_detection: bool = True,
        on_machine_detection: AmdCallback | None = None,
        voicemail_message: str = "",
        ring_timeout: int | None = 25,
    ) -> CallSession:
        """Dial `to` through the carrier; the session exists (and is recorded) from the start,
        and ends as "failed" if the carrier refuses or cannot be reached."""
        refusal = self.gate.refusal()
        if refusal:
            raise CallError(refusal)
        session, token = self.new_outbound_call(
            to=to,
            from_=from_,
            agent=agent,
            first_message=first_message,
            voicemail_message=voicemail_message,
            on_machine_detection=on_machine_detection,
            ring_timeout=ring_timeout,
        )
        key = session.key
        request = DialRequest(to, from_, machine_detection or bool(voicemail_message), ring_timeout)
        try:
            dialed = await self.carrier.dial(session, token, request)
            if not dialed.call_id:
                raise CallError(f"{self.carrier.name} accepted the call but returned no call id")
        except BaseException:
            session.end_soon("failed")
            raise
        if session.call_id == key:  # not yet learned from a webhook that beat the answer
            session.info.call_id = dialed.call_id
        self.bind_carrier_id(dialed.call_id, key)
        if not await self._claim(session.call_id, session.record(), ours=True):
            log.warning("call %s: the carrier reused a known call id", session.call_id)
        if dialed.status:
            session.event("dialing", carrier_status=dialed.status)
        else:
            session.event("dialing")
        return session

    def _expire(self, key: str) -> None:
        """A call whose media never arrived still ends, and still gets its record."""
        self._media.forget(key)
        session = self.sessions.get(key)
        if session is not None and session.state == "pending" and not self._media.connected(key):
            session.end_soon("no_media")

    async def _write_record(self, key: str, record: dict[str, Any]) -> None:
        session = self.sessions.pop(key, None)
        self._media.forget(key)
        for carrier_id in [c for c, k in self._carrier_ids.items() if k == key]:
            del self._carrier_ids[carrier_id]  # a finished call is found by nobody
        journal = self._history.journal
        if session is not None and journal is not None:
            journal.forget(session)
        if self.node.name:
            record["node"] = self.node.name
        self.history.append(record)
        for sink in self.record_sinks:
            result = sink(record)
            if asyncio.iscoroutine(result):
                await result

    def engine_for(self, agent: Agent) -> Engine:
        """The agent's engine: its realtime engine, or a pipeline built once from its providers."""
        engine = agent.engine
        if engine is None:
            engine = self._engines.get(id(agent))
            if engine is None:
                from getpatter.core.credentials import PROVIDER_KEY_ENV
                from getpatter.core.pipeline import PipelineEngine

                keys = {env: getattr(self.config, f, "") for f, env in PROVIDER_KEY_ENV.items()}
                engine = self._engines[id(agent)] = PipelineEngine.for_agent(agent, keys=keys)
        if not isinstance(engine, Engine):
            raise PatterConfigError(
                f"engine {type(engine).__name__} has no open(call) method: it is not an engine"
            )
        return engine

    def open_engine(self, session: CallSession) -> EngineCall:
        return self.engine_for(session.agent).open(session)

    # --- routes --------------------------------------------------------------------------

    def _app(self) -> web.Application:
        guard = request_guard(
            restricted=lambda r: self._guard is not None and self._guard.restricted(r.transport),
            reserved_for=self._reserved_for,
            request_timeout=lambda: self.request_timeout,
        )
        app = web.Application(client_max_size=256 * 1024, middlewares=[guard])
        routes = [
            web.get("/health", self._health),
            web.get("/ws/stream/{call_id}", self.media_socket),
            *self.carrier.routes(),
        ]
        if self._dashboard_ui is not None:
            routes += self._dashboard_ui.routes()
        # and all of them again on this node's own path (see core/node.py)
        app.add_routes(routes + prefixed(routes, self.node.prefix(self.public_host)))
        return app

    def _reserved_for(self, request: web.Request) -> bool:
        """A media socket of a call we are waiting for: what the reserve of connections is for."""
        key = request.match_info.get("call_id", "")
        return request.method == "GET" and bool(key) and self._media.awaiting(key)

    async def _health(self, request: web.Request) -> web.Response:
        node, status = self.gate.health()  # 503 while draining
        body = {"carrier": self.carrier.name, "active_calls": len(self.sessions), **node}
        return web.json_response({"status": node["status"], **body}, status=status)

    async def media_socket(self, request: web.Request) -> web.StreamResponse:
        """The media WebSocket of every carrier (carriers mount it at their own paths too);
        see core/media_socket.py for who may open it and what its messages may do."""
        return await self._media.handle(request)

    # --- life ----------------------------------------------------------------------------

    async def start(self, port: int = 8000) -> None:
        """Listen on `port` and serve until `stop()`. Sets `listening` once bound."""
        if self.listening.done():
            self._listening = None
        self._stopped = asyncio.Event()
        self._shutting_down = None
        self._scheduler = PlayoutScheduler()
        await self._open_history()
        loop = asyncio.get_running_loop()
        limit = self.max_connections or connection_limit(raise_fd_limit())
        self._guard = ConnectionGuard(limit, header_timeout=self.header_timeout)
        self._accept_log.install(loop)
        self._runner = web.AppRunner(
            self._app(),
            access_log=None,
            handle_signals=False,
            auto_decompress=False,  # see core/webguard.py: nothing is inflated, ever
            keepalive_timeout=self.keepalive_timeout,
            # a body left unread (a refusal) is not drained: the connection closes instead
            lingering_time=0.0,
        )
        try:
            await self._runner.setup()
            protocols = self._runner.server
            assert protocols is not None
            self._listener = await loop.create_server(
                self._guard.wrap(protocols), self.host, port, reuse_address=True
            )
            sockets = list(self._listener.sockets)
            self.port = sockets[0].getsockname()[1] if sockets else port
        except BaseException as exc:
            await self._close_listener()
            await self._runner.cleanup()
            self._runner = None
            await self._close_history()
            if not self.listening.done():
                self.listening.set_exception(exc)
                self.listening.exception()  # retrieved here; the caller sees the raise too
            raise
        # DEBUG: `serve()` logs the full start-up banner right after this
        log.debug("listening on %s:%s (public %s)", self.host, self.port, self.public_host)
        ui = self._dashboard_ui
        if ui is not None and ui.token and not self._dashboard_token:
            # generated for a server reachable beyond this machine: shown once, to its owner
            log.warning(
                "dashboard token (generated; pass dashboard_token= to choose one): %s  "
                "— open http://<this host>:%s/dashboard?token=%s",
                ui.token,
                self.port,
                ui.token,
            )
        if ui is not None and ui.token and not self._dashboard_token:
            self._history.redact([ui.token])  # from now on, like any secret
        # Everything alive now (modules, SDKs, the app) lives as long as the process: out of
        # the collector's sight, a full collection no longer walks it — on this scale a 50 ms
        # pause in every call's audio whenever garbage piles up (e.g. under a flood).
        gc.freeze()
        self.listening.set_result(self.port)
        release_signals = stop_on_signals(self._signalled) if self.handle_signals else None
        try:
            await self._stopped.wait()
        finally:
            if release_signals is not None:
                release_signals()
            await self._shutdown()

    def _signalled(self, name: str) -> None:
        """SIGTERM (see `core/signals.py`): the polite stop of `stop()`, from a signal."""
        task = asyncio.get_running_loop().create_task(self.stop(), name=f"getpatter:{name}")
        self._signal_stop = task  # held until done: a task nobody references may vanish

    async def stop(self) -> None:
        """End every live call politely (hang up, write its record) and stop listening;
        with a `drain_timeout`, first take no new calls and let live ones finish."""
        if self._stopped is not None and not self._stopped.is_set():
            cluster = self.cluster
            await self.gate.drain(
                self.node.drain_timeout,
                self.drain_goodbye,
                cluster.set_draining if cluster is not None else None,
            )
        if self._stopped is not None:
            self._stopped.set()
        await self._shutdown()

    async def _shutdown(self) -> None:
        """Once, however many of stop() and start()'s exit get here."""
        if self._shutting_down is None:
            self._shutting_down = asyncio.ensure_future(self._shutdown_once())
        await asyncio.shield(self._shutting_down)

    async def _shutdown_once(self) -> None:
        sessions = list(self.sessions.values())
        if sessions:
            await asyncio.gather(
                *(s.hangup("server_stopped") for s in sessions), return_exceptions=True
            )
        if self._scheduler is not None:
            await self._scheduler.aclose()
        if self._dashboard_ui is not None:
            await self._dashboard_ui.close()  # event streams end, so cleanup needn't wait
        await self._close_listener()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        await self.carrier.aclose()
        await self._close_history()

    async def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()  # open connections are closed by the runner's cleanup
        if self._guard is not None:
            self._guard.close()
        self._accept_log.uninstall()

    # --- history and dashboard (core/history.py) -----------------------------------------

    async def _open_history(self) -> None:
        self._dashboard_ui = await self._history.open(self, self._dashboard_token)

    async def _close_history(self) -> None:
        await self._history.close(self)
        self._dashboard_ui = None

    async def control_call(self, call_id: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Hang up or transfer a live call from the API of any node (core/cluster.py)."""
        from getpatter.core.cluster import control_call

        return await control_call(self, call_id, op, args)

    @property
    def node_host(self) -> str:
        """The host carriers reach this node by, if it has one of its own ("" if not)."""
        host = self.node.host(self.public_host)
        return host if host != self.public_host else ""

    @property
    def cluster_node(self) -> str:
        """This node's name among many sharing a database ("" when it is alone)."""
        return self.node.ident if self.cluster is not None else ""

    def remote_calls(self) -> list[dict[str, Any]]:
        """Live calls on the other nodes (empty for a lone node)."""
        return self.cluster.remote_calls() if self.cluster is not None else []
