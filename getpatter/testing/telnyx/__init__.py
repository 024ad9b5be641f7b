"""A fake Telnyx: Call Control REST, signed webhooks and media streaming on 127.0.0.1."""

from .network import (
    SIGNATURE_HEADER,
    STREAM_TOKEN_HEADER,
    TIMESTAMP_HEADER,
    AnswerMode,
    Callee,
    CallError,
    FakeCall,
    FakeTelnyx,
    PhoneNumber,
    RestRequest,
    Webhook,
)

__all__ = [
    "SIGNATURE_HEADER",
    "STREAM_TOKEN_HEADER",
    "TIMESTAMP_HEADER",
    "AnswerMode",
    "CallError",
    "Callee",
    "FakeCall",
    "FakeTelnyx",
    "PhoneNumber",
    "RestRequest",
    "Webhook",
]
