"""The exceptions getpatter raises. Catch `PatterError` to catch them all."""

from __future__ import annotations


class PatterError(Exception):
    """Base class of every getpatter error."""


class PatterConfigError(PatterError, ValueError):
    """A configuration mistake, raised at construction; the message says what to fix."""


class PatterConnectionError(PatterError, ConnectionError):
    """A provider or carrier could not be reached, refused us, or dropped the connection."""


class ProviderError(PatterError):
    """A provider answered with an error (bad request, quota, protocol violation)."""


class PluginNotFoundError(PatterConfigError, LookupError):
    """A provider was asked for by a name no installed plugin registers."""


class CallError(PatterError):
    """An outbound call could not be placed or a call-control command failed."""


class SignatureError(PatterError):
    """A webhook or media socket failed authentication."""
