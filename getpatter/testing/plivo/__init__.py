"""A fake Plivo: Voice REST API, V3-signed webhooks, Plivo XML and audio streams on 127.0.0.1."""

from .network import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    AnswerMode,
    Application,
    CallError,
    FakeCall,
    FakePlivo,
    RestRequest,
    Webhook,
    v3_signature,
)

__all__ = [
    "NONCE_HEADER",
    "SIGNATURE_HEADER",
    "AnswerMode",
    "Application",
    "CallError",
    "FakeCall",
    "FakePlivo",
    "RestRequest",
    "Webhook",
    "v3_signature",
]
