"""A fake Twilio: phone network, REST API, signed webhooks and media streams on 127.0.0.1."""

from .network import (
    AnswerMode,
    Callee,
    CallError,
    FakeCall,
    FakeRecording,
    FakeTwilio,
    PhoneNumber,
    RestRequest,
    Webhook,
    compute_signature,
)

__all__ = [
    "AnswerMode",
    "CallError",
    "Callee",
    "FakeCall",
    "FakeRecording",
    "FakeTwilio",
    "PhoneNumber",
    "RestRequest",
    "Webhook",
    "compute_signature",
]
