"""`getpatter nginx-config`: the nginx config for many nodes (README, "Scaling out")."""

from __future__ import annotations

import argparse
from typing import Any


def add_nginx_config(sub: Any) -> None:
    p = sub.add_parser(
        "nginx-config",
        help="write the nginx config for many nodes (see README, Scaling out)",
        description=(
            "A complete, commented nginx.conf for getpatter nodes sharing one PostgreSQL: new "
            "calls to any node (a full or draining node's 503 sends them to the next; all full: "
            "the caller hears all lines are busy), /n/<node>/ to that node, WebSocket upgrades "
            "and timeouts as long as a call."
        ),
    )
    p.add_argument("--node", action="append", metavar="NAME=HOST:PORT", help="a node (repeatable)")
    p.add_argument("--workers", type=int, default=0, help="the N nodes of `serve --workers N`")
    p.add_argument("--port", type=int, default=8000, help="first worker port (8000)")
    p.add_argument("--host", default="127.0.0.1", help="where the workers listen (127.0.0.1)")
    p.add_argument("--server-name", default="calls.example.com", help="the public host")
    p.add_argument("--listen", default="443 ssl", help='nginx listen: "443 ssl" or a port')
    p.add_argument("--cert", help="TLS certificate (default: Let's Encrypt's path)")
    p.add_argument("--key", help="TLS key (default: Let's Encrypt's path)")
    p.add_argument("-o", "--output", default="-", metavar="FILE", help="write here (stdout)")
    p.set_defaults(func=cmd_nginx_config)


def cmd_nginx_config(args: argparse.Namespace) -> int:
    from pathlib import Path

    from getpatter.errors import PatterConfigError
    from getpatter.nginx import Node, nginx_config, workers

    nodes = [Node.parse(spec) for spec in args.node or []]
    if args.workers:
        nodes += workers(args.workers, args.port, args.host)
    if not nodes:
        raise PatterConfigError("no nodes: pass --node NAME=HOST:PORT (repeatable) or --workers N")
    text = nginx_config(
        nodes,
        server_name=args.server_name,
        listen=args.listen,
        certificate=args.cert or f"/etc/letsencrypt/live/{args.server_name}/fullchain.pem",
        certificate_key=args.key or f"/etc/letsencrypt/live/{args.server_name}/privkey.pem",
    )
    if args.output in ("", "-"):
        print(text, end="")
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output} ({len(nodes)} nodes); check it with: nginx -t -c {args.output}")
    return 0
