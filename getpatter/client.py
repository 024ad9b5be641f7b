"""Patter, the facade of local mode: agent, serve, ready, tunnel_ready, call, disconnect."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from getpatter.agent import Agent
from getpatter.config import (
    Carrier,
    LocalConfig,
    resolve_persist_root,
    validate_e164,
    validate_port,
)
from getpatter.core.session import AmdCallback, CallCallbacks, CallSession, MachineDetectionResult
from getpatter.errors import CallError, PatterConfigError

if TYPE_CHECKING:
    from getpatter.core.carrier import Restore
    from getpatter.core.pricing import PriceTable
    from getpatter.core.server import EmbeddedServer
    from getpatter.tunnel import Tunnel

log = logging.getLogger(__name__)

__all__ = ["MachineDetectionResult", "OutboundCall", "Patter"]


@dataclass(slots=True)
class OutboundCall:
    """A call placed by `Patter.call()`; `await wait()` returns its record once it ends."""

    session: CallSession

    @property
    def call_id(self) -> str:
        return self.session.call_id

    @property
    def state(self) -> str:
        """`pending` (dialling/ringing), `live`, or `ended`."""
        return self.session.state

    @property
    def outcome(self) -> str:
        """Why it ended: `hangup`, `busy`, `no_answer`, `failed`, `voicemail`, … ("" while up)."""
        return self.session.end_reason

    async def wait(self, timeout: float | None = None) -> dict[str, Any]:  # noqa: ASYNC109
        await asyncio.wait_for(asyncio.shield(self.session.ended), timeout)
        return self.session.record()


class Patter:
    """A phone number with a voice agent behind it, served from this process."""

    def __init__(
        self,
        carrier: Carrier | None = None,
        phone_number: str = "",
        webhook_url: str = "",
        tunnel: object = None,
        persist: str | bool | None = None,
        *,
        require_signature: bool = True,
        pricing: dict[str, Any] | None = None,
        mask_phone_numbers: bool = False,
    ) -> None:
        from getpatter.logs import install_error_hook

        install_error_hook()  # a config mistake in a script: one line, not a traceback
        if carrier is None:
            raise PatterConfigError(
                "Patter needs a carrier: Patter(carrier=Twilio(), ...), carrier=Telnyx() "
                "or carrier=Plivo()"
            )
        if tunnel and webhook_url:
            raise PatterConfigError(
                "pass either webhook_url= or tunnel=, not both: a tunnel provides the public URL"
            )
        self.config = LocalConfig.from_carrier(
            carrier,
            phone_number=phone_number,
            webhook_url=webhook_url,
            persist_root=resolve_persist_root(persist),
            require_signature=require_signature,
        )
        # prices merged over the dated default table (checked now: a typo fails here)
        self.pricing: PriceTable | None = None
        if pricing is not None:
            from getpatter.core.pricing import load_pricing

            self.pricing = load_pricing(pricing)
        if not isinstance(mask_phone_numbers, bool):
            raise PatterConfigError("mask_phone_numbers must be True or False")
        self.mask_phone_numbers = mask_phone_numbers  # in stored history and the dashboard
        from getpatter.tunnel import as_tunnel

        self._tunnel = as_tunnel(tunnel)
        self._server: EmbeddedServer | None = None
        self._ready: asyncio.Future[str] | None = None
        self._tunnel_ready: asyncio.Future[str] | None = None
        self._closed = False
        self._default_engine: dict[int, Agent] = {}  # agents made realtime only by default
        self._pipeline_of: dict[int, Agent] = {}  # … and the pipeline agent each became

    def __repr__(self) -> str:
        return (
            f"Patter(carrier={self.config.telephony_provider!r}, "
            f"phone_number={self.config.phone_number!r}, webhook_url={self.config.webhook_url!r})"
        )

    # --- agents --------------------------------------------------------------------------

    def agent(self, **kwargs: Any) -> Agent:
        """Build a validated Agent (system_prompt, first_message, engine, stt, tts, llm, …).

        With no engine, stt, tts or llm, the agent is the one the spec's examples describe:
        OpenAI Realtime when `OPENAI_API_KEY` is set, else the embedded default (offline
        speech, and `serve(on_message=...)` as its brain).
        """
        chosen = ("engine", "stt", "tts", "llm")
        if (
            any(kwargs.get(k) not in (None, "") for k in chosen)
            or not os.environ.get("OPENAI_API_KEY", "").strip()
        ):
            return Agent(**kwargs)
        from getpatter.plugins.openai.realtime import OpenAIRealtime

        voice = kwargs.get("voice") or "marin"
        engine = OpenAIRealtime(voice=voice) if isinstance(voice, str) else OpenAIRealtime()
        agent = Agent(**{**kwargs, "engine": engine})
        # an on_message given to serve() later means the pipeline after all (see _agent_for)
        self._default_engine[id(agent)] = agent
        return agent

    def _agent_for(
        self, agent: Agent, on_message: Callable[..., Any] | None, *, warn: bool = False
    ) -> Agent:
        """The agent a call really runs. An agent that got OpenAI Realtime only by default, served
        with `on_message`, runs the pipeline instead: `on_message` says who the brain is."""
        if on_message is None:
            return agent
        if self._default_engine.get(id(agent)) is agent:
            swapped = self._pipeline_of.get(id(agent))
            if swapped is None:
                log.info(
                    "on_message given: the agent runs the pipeline (offline speech) instead of "
                    "the default OpenAI Realtime engine"
                )
                swapped = self._pipeline_of[id(agent)] = agent.replace(engine=None)
            return swapped
        if agent.engine is not None and warn:
            log.warning(
                "on_message is ignored: this agent's engine (%s) answers the caller itself; "
                "drop engine= to use on_message",
                type(agent.engine).__name__,
            )
        return agent

    @property
    def port(self) -> int | None:
        """The port the server listens on (useful with port=0), or None when not serving."""
        return self._server.port if self._server is not None else None

    @property
    def server(self) -> EmbeddedServer | None:
        return self._server

    # --- readiness -----------------------------------------------------------------------

    def _future(self, attr: str) -> asyncio.Future[str]:
        fut: asyncio.Future[str] | None = getattr(self, attr)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            setattr(self, attr, fut)
        return fut

    @property
    def ready(self) -> asyncio.Future[str]:
        """Resolves to the public hostname once the server listens and the carrier is wired;
        rejects with the real error if `serve()` fails first."""
        return self._future("_ready")

    @property
    def tunnel_ready(self) -> asyncio.Future[str]:
        """Resolves to the public hostname as soon as it is known (before the server listens)."""
        return self._future("_tunnel_ready")

    def _settle(self, exc: BaseException | None = None, host: str = "") -> None:
        for fut in (self.ready, self.tunnel_ready):
            if fut.done():
                continue
            if exc is not None:
                fut.set_exception(exc)
                fut.add_done_callback(lambda f: f.exception())  # never "never retrieved"
            else:
                fut.set_result(host)

    # --- serving -------------------------------------------------------------------------

    async def serve(
        self,
        agent: Agent,
        port: int = 8000,
        recording: bool = False,
        on_call_start: Callable[..., Any] | None = None,
        on_call_end: Callable[..., Any] | None = None,
        on_transcript: Callable[..., Any] | None = None,
        on_message: Callable[..., Any] | None = None,
        voicemail_message: str = "",
        on_metrics: Callable[..., Any] | None = None,
        dashboard: bool = True,
        dashboard_token: str = "",
        tunnel: bool = False,
        *,
        host: str = "0.0.0.0",
        tracer_provider: Any = None,
    ) -> None:
        """Start the embedded server and block until it is stopped (`disconnect()`).

        `tracer_provider`: where OpenTelemetry spans go (with `getpatter[otel]` installed);
        OpenTelemetry's global provider if None."""
        from getpatter.logs import install_default_handler

        install_default_handler()  # a script that set up no logging still sees the banner
        try:
            if not isinstance(agent, Agent):
                raise PatterConfigError("serve() needs an Agent: build one with phone.agent(...)")
            agent = self._agent_for(agent, on_message, warn=True)
            port = validate_port(port, allow_ephemeral=True)
            if tunnel and self.config.webhook_url:
                raise PatterConfigError(
                    "serve(tunnel=True) and webhook_url= are mutually exclusive: drop one"
                )
            from getpatter.tunnel import as_tunnel

            the_tunnel = as_tunnel(tunnel) or self._tunnel
            if self._server is not None:
                raise PatterConfigError("this Patter is already serving; call disconnect() first")
            from getpatter.core.server import EmbeddedServer  # the aiohttp server stack, on use

            callbacks = CallCallbacks(
                on_call_start=on_call_start,
                on_call_end=on_call_end,
                on_transcript=on_transcript,
                on_message=on_message,
                on_metrics=on_metrics,
            )
            server = EmbeddedServer(
                self.config,
                agent,
                recording,
                voicemail_message,
                callbacks=callbacks,
                dashboard=dashboard,
                dashboard_token=dashboard_token,
                host=host,
                pricing=self.pricing,
                mask_phone_numbers=self.mask_phone_numbers,
                tracer_provider=tracer_provider,
            )
        except BaseException as exc:
            self._settle(exc)
            raise
        self._server = server
        self._closed = False
        if self.config.webhook_url:
            fut = self.tunnel_ready
            if not fut.done():
                fut.set_result(self.config.webhook_url)
        restore: Restore | None = None
        serving = asyncio.ensure_future(server.start(port))
        listening = server.listening
        try:
            waiters: set[asyncio.Future[Any]] = {serving, listening}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if listening.done() and not listening.cancelled() and listening.exception() is None:
                if the_tunnel is not None:
                    restore = await self._open_tunnel(the_tunnel, server)
                elif not self.config.webhook_url:
                    log.warning(
                        "no webhook_url: the carrier cannot reach this server; "
                        "only local tests (the fake network) will"
                    )
                self._settle(host=server.public_host)
                from getpatter.banner import log_banner

                log_banner(server, agent)
            await serving
        except BaseException as exc:
            self._settle(exc)
            if not serving.done():
                await server.stop()
                serving.cancel()
                await asyncio.gather(serving, return_exceptions=True)
            raise
        finally:
            self._server = None
            if the_tunnel is not None:
                await self._close_tunnel(the_tunnel, restore)

    async def _open_tunnel(self, tunnel: Tunnel, server: EmbeddedServer) -> Restore | None:
        """Bring the tunnel up, then point the carrier's number at it (spec order: the
        hostname is known first — `tunnel_ready` — and `ready` waits for the carrier)."""
        from getpatter.tunnel import check_public_host

        assert server.port is not None

        async def repoint(host: str) -> None:  # a restarted quick tunnel has a new hostname
            self.config.webhook_url = check_public_host(host)
            await server.carrier.point_at(host)

        host = check_public_host(await tunnel.start(server.port, repoint))
        self.config.webhook_url = host
        fut = self.tunnel_ready
        if not fut.done():
            fut.set_result(host)
        return await server.carrier.point_at(host)

    @staticmethod
    async def _close_tunnel(tunnel: Tunnel, restore: Restore | None) -> None:
        if restore is not None:
            try:
                await restore()
            except Exception as exc:
                log.warning("could not restore the carrier's webhook: %s", exc)
        await tunnel.stop()

    # --- outbound ------------------------------------------------------------------------

    async def call(
        self,
        to: str,
        agent: Agent,
        first_message: str = "",
        from_number: str = "",
        machine_detection: bool = True,
        on_machine_detection: AmdCallback | None = None,
        voicemail_message: str = "",
        ring_timeout: int | None = 25,
    ) -> OutboundCall:
        """Place an outbound call once `await phone.ready` has resolved."""
        server = self._server
        if server is None or not server.listening.done():
            raise CallError("the server is not running: start serve() and await phone.ready first")
        validate_e164(to, "to")
        from_ = (
            validate_e164(from_number, "from_number") if from_number else self.config.phone_number
        )
        if not isinstance(agent, Agent):
            raise PatterConfigError("call() needs an Agent: build one with phone.agent(...)")
        agent = self._agent_for(agent, server.callbacks.on_message)
        if ring_timeout is not None and (not isinstance(ring_timeout, int) or ring_timeout < 1):
            raise PatterConfigError("ring_timeout must be a positive number of seconds or None")
        session = await server.place_call(
            to=to,
            from_=from_,
            agent=agent,
            first_message=first_message,
            machine_detection=machine_detection,
            on_machine_detection=on_machine_detection,
            voicemail_message=voicemail_message or server.voicemail_message,
            ring_timeout=ring_timeout,
        )
        return OutboundCall(session)

    # --- shutdown ------------------------------------------------------------------------

    async def disconnect(self) -> None:
        """Idempotent: hang up live calls, write their records, stop the server."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            await self._server.stop()

    async def __aenter__(self) -> Patter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.disconnect()
