"""The nginx config for many nodes (`getpatter nginx-config`, `getpatter serve --workers`).

nginx does three things for getpatter, and nothing else is needed between the carrier and the
nodes:

1. New calls go to any node (`upstream getpatter`). A full or draining node answers a new
   call's webhook with 503, and nginx tries the next (`proxy_next_upstream http_503
   non_idempotent`: webhooks are POSTs, which nginx otherwise never retries). When every node
   said 503, nginx sends the webhook once more, with `X-Getpatter-Overflow`, and the node
   that gets it tells the caller every line is busy (in the carrier's own voice) instead of
   leaving the carrier to play its application-error message.
2. `/n/<node>/...` goes to that node and only to it, path unchanged: everything a node hands
   out for a call (its media stream, its callbacks) carries its prefix, so a call stays on
   the node that took it, and the URL the carrier signed is the URL the node checks.
3. Media WebSockets are upgraded and may stay open as long as a call lasts (hours).

The config is plain text so it can be read, diffed and edited; `nginx -t` checks it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from getpatter.core.node import NODE_NAME, NODE_PREFIX, OVERFLOW_HEADER
from getpatter.errors import PatterConfigError

CALL_TIMEOUT = "4h"  # a media socket lives as long as its call; carriers cap calls at 4 h


@dataclass(frozen=True, slots=True)
class Node:
    """A node as nginx sees it: its name and where it listens (host:port)."""

    name: str
    address: str

    @classmethod
    def parse(cls, spec: str) -> Node:
        """`name=host:port` (as `--node` takes it)."""
        name, sep, address = spec.partition("=")
        if not sep or not NODE_NAME.match(name) or not re.match(r"^[\w.\-\[\]:]+:\d+$", address):
            raise PatterConfigError(
                f"a node is name=host:port, e.g. w1=127.0.0.1:8001; got {spec!r}"
            )
        return cls(name, address)


def workers(count: int, base_port: int, host: str = "127.0.0.1", prefix: str = "w") -> list[Node]:
    """The nodes `getpatter serve --workers N` starts: w1, w2, ... on consecutive ports."""
    return [Node(f"{prefix}{i + 1}", f"{host}:{base_port + i}") for i in range(count)]


def upstream_block(nodes: list[Node]) -> str:
    """The upstreams: `getpatter` (any node, for new calls) and one per node."""
    if not nodes:
        raise PatterConfigError("no nodes: give at least one name=host:port")
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise PatterConfigError(f"node names must be unique: {names}")
    lines = [
        "# New calls: any node. max_fails=0: a node's 503 means full or draining, not broken,",
        "# and the next call may find room there again.",
        "upstream getpatter {",
        *(f"    server {n.address} max_fails=0;  # {n.name}" for n in nodes),
        "    keepalive 32;",
        "}",
        "",
        "# Each node on its own, for everything it handed out for a call (/n/<node>/...).",
    ]
    for n in nodes:
        lines += [
            f"upstream getpatter_{_ident(n.name)} {{",
            f"    server {n.address};",
            "    keepalive 8;",
            "}",
        ]
    return "\n".join(lines) + "\n"


def _indent(text: str, spaces: int) -> str:
    return "".join(" " * spaces + line + "\n" for line in text.splitlines())


def _ident(name: str) -> str:
    return name.replace("-", "_")


_PROXY = """\
        proxy_http_version 1.1;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
"""


def nginx_config(
    nodes: list[Node],
    *,
    server_name: str = "calls.example.com",
    listen: str = "443 ssl",
    certificate: str = "/etc/letsencrypt/live/calls.example.com/fullchain.pem",
    certificate_key: str = "/etc/letsencrypt/live/calls.example.com/privkey.pem",
    runtime_dir: str = "",
    worker_processes: str = "auto",
) -> str:
    """A complete nginx.conf for `nodes` behind `server_name`.

    `listen` "443 ssl" (TLS here, with `certificate`) or a plain port (TLS terminated in
    front of nginx, or a test). `runtime_dir`: keep the pid, logs and temp files there (to run
    nginx unprivileged, e.g. `nginx -p DIR -c DIR/nginx.conf`); "" for the system's."""
    tls = "ssl" in listen.split()
    runtime = runtime_dir.rstrip("/")
    files = ""
    if runtime:
        files = f"pid {runtime}/nginx.pid;\nerror_log {runtime}/error.log warn;\n"
    temp = ""
    if runtime:
        temp = "".join(
            f"    {what}_temp_path {runtime}/{what}_temp;\n"
            for what in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
    tls_lines = ""
    if tls:
        tls_lines = (
            f"        ssl_certificate {certificate};\n"
            f"        ssl_certificate_key {certificate_key};\n"
            "        ssl_protocols TLSv1.2 TLSv1.3;\n"
        )
    node_locations = "".join(
        f"        location {NODE_PREFIX}{n.name}/ {{\n"
        f"            proxy_pass http://getpatter_{_ident(n.name)};\n"
        "        }\n"
        for n in nodes
    )
    upstreams = "".join(
        "    " + line + "\n" if line else "\n" for line in upstream_block(nodes).splitlines()
    )
    return f"""\
# getpatter: {len(nodes)} node(s) behind nginx, sharing one PostgreSQL database.
# Generated by `getpatter nginx-config`; see README "Scaling out". Check with `nginx -t`.
#
# Point the carrier at https://{server_name}/webhooks/twilio/voice (Twilio) or
# https://{server_name}/webhooks/telnyx/voice (Telnyx); every node runs the same app with
# GETPATTER_NODE=<its name>, webhook_url="{server_name}" and
# persist="postgresql://..." (or GETPATTER_DATABASE_URL).

worker_processes {worker_processes};
{files}
events {{
    worker_connections 8192;  # two per call (carrier in, node out) plus webhooks
}}

http {{
    access_log off;
{temp}
    # WebSocket upgrade for media streams; plain requests keep their upstream keep-alive
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}

{upstreams}
    server {{
        listen {listen};
        server_name {server_name};
{tls_lines}
        client_max_body_size 256k;  # webhooks are small; the nodes refuse more anyway
        proxy_connect_timeout 2s;   # a node that does not accept at once is skipped
        proxy_read_timeout {CALL_TIMEOUT};  # a media socket is quiet only when the call is over
        proxy_send_timeout {CALL_TIMEOUT};
        proxy_buffering off;        # media and the dashboard's live events, as they come
{_PROXY}\
        proxy_set_header {OVERFLOW_HEADER} "";  # only nginx says every node is full

        # Everything a node hands out for a call names the node: it stays there.
{node_locations}
        # New calls (the number's webhook), the dashboard and /api/: any node. A node that
        # is full or draining answers 503 and the next one is tried (POSTs included)...
        location / {{
            proxy_pass http://getpatter;
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries 0;
            proxy_intercept_errors on;
            error_page 502 503 504 = @all_busy;
        }}

        # ...and when every node said no, once more with the overflow header: the node that
        # gets it tells the caller all lines are busy, in the carrier's voice, and hangs up.
        location @all_busy {{
            proxy_pass http://getpatter;
{_indent(_PROXY, 4)}\
            proxy_set_header {OVERFLOW_HEADER} all-busy;
            proxy_next_upstream error timeout non_idempotent;
        }}
    }}
}}
"""
