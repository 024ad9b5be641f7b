"""The start-up banner `serve()` logs once the server listens: where it listens, what to paste
into the carrier's console, where the dashboard and /metrics are and how they are guarded.

It is one INFO record on the `getpatter` logger (with the same facts as `extra=` fields, for
the JSON log format), so it shows wherever the app's logs go.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from getpatter.agent import Agent
    from getpatter.core.server import EmbeddedServer

log = logging.getLogger("getpatter")

__all__ = ["describe_agent", "log_banner", "render_banner"]

_GUARDS = {
    "open": "no token: it listens on this machine only",
    "token": "token required: your dashboard_token=, as Authorization: Bearer <token>",
    "generated": "token required: a generated one, see the log line with ?token=",
}


def describe_agent(agent: Agent, has_on_message: bool) -> str:
    """`OpenAI Realtime (gpt-realtime, voice marin)` or `pipeline: local STT → on_message → …`."""

    def name(value: object, kind: str) -> str:
        if value is None:
            value = "local"
        if isinstance(value, str):
            return f"{value} {kind}"  # a registered name
        return type(value).__name__

    if agent.engine is not None:
        engine = agent.engine
        model = getattr(engine, "model", "")
        voice = getattr(engine, "voice", "")
        details = ", ".join(x for x in (model, f"voice {voice}" if voice else "") if x)
        return f"{type(engine).__name__}" + (f" ({details})" if details else "")
    brain = "on_message" if has_on_message else "no brain"
    if agent.llm is not None:
        brain = name(agent.llm, "LLM")
    return f"pipeline: {name(agent.stt, 'STT')} → {brain} → {name(agent.tts, 'TTS')}"


def _local_base(host: str, port: int | None) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def render_banner(
    server: EmbeddedServer, agent: Agent, *, version: str = ""
) -> tuple[str, dict[str, Any]]:
    """The banner's text, and its facts as a dict."""
    cfg = server.config
    port = server.port
    listening = f"http://{server.host}:{port}"
    if server.host in ("0.0.0.0", "::"):
        listening += "  (all interfaces)"
    local = _local_base(server.host, port)
    public = cfg.webhook_url
    webhooks = [
        (where, f"https://{public}{path}")
        for where, path in getattr(server.carrier, "console_webhooks", ())
    ]
    carrier = server.carrier.name
    agent_text = describe_agent(agent, server.callbacks.on_message is not None)
    title = f"getpatter {version} · {agent_text} · {carrier.capitalize()}".replace("  ", " ")
    if cfg.phone_number:
        title += f" {cfg.phone_number}"
    lines = [title, f"  listening   {listening}"]
    if public:
        for where, url in webhooks:
            lines += [f"  webhook     {url}", f"              ↳ {where}"]
    else:
        lines.append(
            "  webhook     none yet: pass webhook_url= (e.g. your ngrok host) or tunnel=True; "
            "until then only the simulator can call"
        )
    guard = server.dashboard_guard
    dashboard = ""
    metrics = ""
    if guard != "off":
        dashboard = f"{local}/dashboard"
        lines.append(f"  dashboard   {dashboard}  ({_GUARDS[guard]})")
        if getattr(server, "metrics_enabled", False):
            metrics = f"{local}/metrics"
            lines.append(f"  metrics     {metrics}  (Prometheus; guarded like the dashboard)")
    lines.append("  Ctrl-C stops (live calls are hung up politely, their records written)")
    facts = {
        "listening": f"http://{server.host}:{port}",
        "carrier": carrier,
        "phone_number": cfg.phone_number,
        "agent": agent_text,
        "webhooks": [url for _, url in webhooks] if public else [],
        "dashboard": dashboard,
        "dashboard_guard": guard,
        "metrics": metrics,
    }
    return "\n".join(lines), facts


def log_banner(server: EmbeddedServer, agent: Agent) -> None:
    from getpatter import __version__

    text, facts = render_banner(server, agent, version=__version__)
    log.info("%s", text, extra={"banner": facts})
