"""One node of many: its name, the route carriers reach it by, its capacity and its drain.

One `serve()` process is one node. Many nodes sit behind a load balancer (nginx) and share
PostgreSQL; the number's voice webhook lands on any of them, and from then on a call must
live on the node that took it. So every URL a node hands out for a call (the media stream,
status/AMD/recording callbacks, the Telnyx webhook of a call it answered or dialled) names the
node itself, by its **node URL**: its own hostname (`https://b.calls.example.com`) or a path
prefix on the shared host (`https://calls.example.com/n/b`, the default for a named node),
which the balancer maps to that node and passes on unchanged. The node serves every route
under that prefix too, so what a carrier signed — the URL it was given, prefix included — is
exactly what the node checks.

A full node (`max_calls`) or a draining one refuses a new call with 503, which the balancer
retries on the next node (`proxy_next_upstream http_503`); when every node refused, the
balancer sends the webhook once more with the overflow header, and whichever node gets it
tells the caller every line is busy, in the carrier's own voice, and hangs up. A node with no
name has no balancer in front of it: full, it says so at once.

Settings come from `serve(...)` arguments, else from the environment (so a process manager
or `getpatter serve --workers` can start identical apps as distinct nodes):
GETPATTER_NODE, GETPATTER_NODE_URL, GETPATTER_MAX_CALLS, GETPATTER_DRAIN_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from aiohttp import web

from getpatter.core.carrier import Admission
from getpatter.errors import PatterConfigError

if TYPE_CHECKING:
    from getpatter.core.session import CallSession

log = logging.getLogger(__name__)

NODE_NAME: Final = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
NODE_PREFIX: Final = "/n/"  # the default route of a named node on the shared host
#: sent by the balancer with its last try, once every node refused the call
OVERFLOW_HEADER: Final = "X-Getpatter-Overflow"
BUSY_MESSAGE: Final = (
    "Sorry, all our lines are busy right now. Please call again in a few minutes. Goodbye."
)
# A call's last word from its carrier (Telnyx's call.hangup, a status callback) comes after
# its media stream has closed: a drained node keeps answering for this long before it goes.
DRAIN_TAIL: Final = 2.0
DRAIN_GOODBYE: Final = (
    "I'm sorry, we have to end this call now for maintenance. Please call us back. Goodbye."
)
ENV_NAME, ENV_URL = "GETPATTER_NODE", "GETPATTER_NODE_URL"
ENV_MAX_CALLS, ENV_DRAIN = "GETPATTER_MAX_CALLS", "GETPATTER_DRAIN_TIMEOUT"


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """Who this node is among many, and how many calls it takes.

    name           unique among the nodes sharing a database ("" : a lone node)
    url            how carriers reach this node: https://host[/prefix] ("" : the shared host,
                   or `https://<shared host>/n/<name>` for a named node)
    max_calls      calls at once (live and ringing); None: no limit
    drain_timeout  seconds live calls may go on after a stop (SIGTERM, `disconnect()`); 0:
                   hang up at once
    """

    name: str = ""
    url: str = ""
    max_calls: int | None = None
    drain_timeout: float = 0.0

    @classmethod
    def resolve(
        cls,
        name: str | None = None,
        url: str | None = None,
        max_calls: int | None = None,
        drain_timeout: float | None = None,
    ) -> NodeSettings:
        """Arguments, else the environment; checked now, so a typo fails before serving."""
        name = os.environ.get(ENV_NAME, "") if name is None else name
        url = os.environ.get(ENV_URL, "") if url is None else url
        if max_calls is None and os.environ.get(ENV_MAX_CALLS, "").strip():
            max_calls = int(_env_number(ENV_MAX_CALLS, int))
        if drain_timeout is None:
            raw = os.environ.get(ENV_DRAIN, "").strip()
            drain_timeout = _env_number(ENV_DRAIN, float) if raw else 0.0
        if not isinstance(name, str) or (name and not NODE_NAME.match(name)):
            raise PatterConfigError(
                f"node must be a short name of lowercase letters, digits and '-', got {name!r}"
            )
        if max_calls is not None and (
            isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 1
        ):
            raise PatterConfigError(f"max_calls must be a positive int or None, got {max_calls!r}")
        if (
            isinstance(drain_timeout, bool)
            or not isinstance(drain_timeout, int | float)
            or not 0 <= drain_timeout <= 24 * 3600
        ):
            raise PatterConfigError(
                f"drain_timeout must be seconds between 0 and 86400, got {drain_timeout!r}"
            )
        return cls(name, _node_url(url), max_calls, float(drain_timeout))

    @property
    def ident(self) -> str:
        """The name the cluster knows this node by: its own, else the machine's."""
        if self.name:
            return self.name
        host = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")
        return host[:32].strip("-") or "node"

    @property
    def behind_balancer(self) -> bool:
        """A named node refuses with 503 when full (the balancer tries another); a lone one
        tells the caller at once."""
        return bool(self.name)

    def base_url(self, public_host: str) -> str:
        """`https://...` that every path this node hands out is appended to."""
        if self.url:
            return self.url
        if self.name:
            return f"https://{public_host}{NODE_PREFIX}{self.name}"
        return f"https://{public_host}"

    def prefix(self, public_host: str) -> str:
        """The path prefix of this node's routes on its host ("" for none)."""
        return urlsplit(self.base_url(public_host)).path.rstrip("/")

    def host(self, public_host: str) -> str:
        return urlsplit(self.base_url(public_host)).netloc


def _env_number(env: str, kind: type[int] | type[float]) -> int | float:
    raw = os.environ.get(env, "").strip()
    try:
        return kind(raw)
    except ValueError:
        raise PatterConfigError(f"{env}={raw!r} is not a number") from None


def _node_url(url: str) -> str:
    if not isinstance(url, str):
        raise PatterConfigError(f"node_url must be a str, got {type(url).__name__}")
    url = url.strip().rstrip("/")
    if not url:
        return ""
    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment or " " in url:
        raise PatterConfigError(
            "node_url must be https://host or https://host/prefix (how carriers reach this "
            f"node), got {url!r}"
        )
    return url


def prefixed(routes: list[web.RouteDef], prefix: str) -> list[web.RouteDef]:
    """The same routes again under `prefix` (the node's path on the shared host)."""
    if not prefix:
        return []
    return [web.route(r.method, prefix + r.path, r.handler, **r.kwargs) for r in routes]


def request_url(request: web.Request, public_host: str, node_host: str) -> str:
    """The public URL a carrier addressed `request` to, as it signed it: on the shared host
    or this node's own, path (and any node prefix) as received. Any other `Host` is taken as
    the shared host, so a request cannot choose which URL its signature is checked against."""
    host = request.host
    if host not in (public_host, node_host):
        host = public_host
    return f"https://{host}{request.path_qs}"


class Gate:
    """Whether this node takes a new call: its capacity (`max_calls`) and its drain."""

    def __init__(self, settings: NodeSettings, calls: Mapping[str, CallSession]) -> None:
        self.settings = settings
        self.calls = calls  # the server's live table, read, never changed here
        self.draining = False

    def full(self) -> bool:
        limit = self.settings.max_calls
        return limit is not None and len(self.calls) >= limit

    def admit(self, request: web.Request) -> Admission:
        """Take a new call unless full or draining; then refuse (503) so the balancer tries
        the next node, or — its last try, or no balancer at all — answer "all lines busy"."""
        if not (self.draining or self.full()):
            return Admission.TAKE
        if request.headers.get(OVERFLOW_HEADER) or not self.settings.behind_balancer:
            log.info("every line is busy: a caller hears so (%d calls here)", len(self.calls))
            return Admission.BUSY
        return Admission.REFUSE

    def refusal(self) -> str:
        """Why this node places no new call now ("" : it does)."""
        if self.draining:
            return "this node is draining: place the call on another node"
        if self.full():
            return f"this node is full ({self.settings.max_calls} calls): place it on another"
        return ""

    def health(self) -> tuple[dict[str, Any], int]:
        """/health's node fields and status: 503 "draining" once stopping, so a balancer's
        health check takes the node out while its live calls finish."""
        body: dict[str, Any] = {"status": "draining" if self.draining else "ok"}
        if self.settings.name:
            body["node"] = self.settings.name
        if self.settings.max_calls is not None:
            body.update(max_calls=self.settings.max_calls, full=self.full())
        return body, 503 if self.draining else 200

    async def drain(
        self, seconds: float, goodbye: str, started: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Take no new calls, let live calls run up to `seconds`, then say `goodbye` (in the
        carrier's voice) to those still on the line and hang up."""
        if self.draining or seconds <= 0:
            return
        self.draining = True
        log.warning(
            "draining: no new calls; %d calls have up to %.0f s to finish", len(self.calls), seconds
        )
        if started is not None:
            await started()
        ends = {s.ended for s in self.calls.values()}
        if ends:
            await asyncio.wait(ends, timeout=seconds)
        left = [s for s in self.calls.values() if s.state != "ended"]
        if left:
            log.warning("drain time is up: saying goodbye to %d calls", len(left))
            await asyncio.gather(
                *(
                    s.hangup("server_stopped", goodbye=goodbye if s.state == "live" else "")
                    for s in left
                ),
                return_exceptions=True,
            )
        if ends:  # the carriers' closing webhooks of those calls are still to be answered
            await asyncio.sleep(DRAIN_TAIL)
