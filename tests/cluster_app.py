"""The app every node of the cluster tests runs, as a child process:
`getpatter serve tests/cluster_app.py:app --port P` with GETPATTER_NODE etc. in
its environment, CLUSTER_TEST_CARRIER ("twilio", the default, or "telnyx") and the fake
carrier's credentials in TWILIO_* or TELNYX_*.

For the outbound test only, the node also listens on CLUSTER_TEST_DIAL_PORT, where a POST
places a call with `phone.call()` on this node (what an app's own code would do).
"""

from __future__ import annotations

import os
from typing import Any

from aiohttp import web

from getpatter import Patter, Telnyx, Twilio
from getpatter.agent import Agent
from getpatter.testing.engines import ScriptedEngine

NUMBER = "+15550001234"
HOST = "calls.cluster.test"
TOKEN = "cluster-dashboard-token"


class NodeApp(Patter):
    async def serve(self, agent: Agent, *args: Any, **kwargs: Any) -> None:
        runner: web.AppRunner | None = None
        port = int(os.environ.get("CLUSTER_TEST_DIAL_PORT", "0") or 0)
        if port:

            async def dial(request: web.Request) -> web.Response:
                body = await request.json()
                call = await self.call(body["to"], agent, machine_detection=True)
                return web.json_response({"call_id": call.call_id})

            app = web.Application()
            app.add_routes([web.post("/dial", dial)])
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            await super().serve(agent, *args, **kwargs)
        finally:
            if runner is not None:
                await runner.cleanup()


def carrier() -> Twilio | Telnyx:
    """The fake network's carrier (its keys from the environment, its API on loopback)."""
    if os.environ.get("CLUSTER_TEST_CARRIER", "twilio") == "telnyx":
        return Telnyx(base_url=os.environ["TELNYX_BASE_URL"])  # TELNYX_API_KEY etc.
    return Twilio(
        os.environ["TWILIO_ACCOUNT_SID"],
        os.environ["TWILIO_AUTH_TOKEN"],
        base_url=os.environ["TWILIO_BASE_URL"],
    )


def app() -> tuple[Patter, Agent, dict[str, Any]]:
    phone = NodeApp(
        carrier=carrier(),
        phone_number=NUMBER,
        webhook_url=HOST,
    )  # history: GETPATTER_DATABASE_URL
    agent = phone.agent(engine=ScriptedEngine(), first_message="Hello there.")
    # a node behind a balancer needs a dashboard token (one is generated if none is given)
    return phone, agent, {"host": "127.0.0.1", "dashboard_token": TOKEN}
