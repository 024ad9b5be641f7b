"""The app every node runs (deploy/README and the README's "Scaling out").

Credentials and the database come from the environment (/srv/getpatter/.env):
TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, OPENAI_API_KEY, GETPATTER_DASHBOARD_TOKEN and
GETPATTER_DATABASE_URL (postgresql://getpatter:PASSWORD@db-host:5432/getpatter). The node's name, capacity and drain
timeout come from GETPATTER_NODE, GETPATTER_MAX_CALLS and GETPATTER_DRAIN_TIMEOUT.
"""

import os

from getpatter import OpenAIRealtime, Patter, Twilio

phone = Patter(
    carrier=Twilio(),
    phone_number="+15550001234",
    webhook_url="calls.example.com",  # the shared host nginx answers on
)
agent = phone.agent(
    engine=OpenAIRealtime(voice="marin"),
    system_prompt="You are a friendly receptionist for Acme Corp.",
    first_message="Thanks for calling Acme! How can I help?",
)
# nginx makes every node's dashboard and /api/ public: they need a token
app = (phone, agent, {"dashboard_token": os.environ["GETPATTER_DASHBOARD_TOKEN"]})
