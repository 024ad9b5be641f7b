"""Carrier-neutral media events: what a carrier's media socket says, once its adapter has
read the wire (JSON, base64, μ-law) and before the session acts on it.

Every carrier adapter maps its own messages onto these; the server and the session know
nothing else of a carrier's media protocol.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as _dataclass_field
from typing import Any

from getpatter.core.audio import AudioFrame, ulaw_decode


@dataclass(slots=True)
class InboundAudio:
    """20 ms of caller audio as the carrier sent it (G.711 μ-law, 8 kHz).

    Engines that take G.711 use `payload` untouched; the rest use `frame`, decoded once.
    """

    payload: bytes
    timestamp: float
    _frame: AudioFrame | None = _dataclass_field(default=None, repr=False)

    @property
    def frame(self) -> AudioFrame:
        if self._frame is None:
            self._frame = AudioFrame(ulaw_decode(self.payload), 8000, self.timestamp)
        return self._frame


@dataclass(slots=True, frozen=True)
class StreamStarted:
    """The media stream is up; `parameters` carry the per-call token we handed the carrier."""

    stream_id: str
    call_id: str
    parameters: dict[str, str]


@dataclass(slots=True, frozen=True)
class MarkPlayed:
    """The carrier has played everything sent before the mark called `name`."""

    name: str


@dataclass(slots=True, frozen=True)
class DtmfReceived:
    digit: str


@dataclass(slots=True, frozen=True)
class StreamStopped:
    reason: str = "stop"


@dataclass(slots=True, frozen=True)
class Ignored:
    """A message we understood and have nothing to do with (e.g. `connected`)."""

    event: str


MediaEvent = StreamStarted | InboundAudio | MarkPlayed | DtmfReceived | StreamStopped | Ignored


class MalformedMessage(ValueError):
    """A media message that breaks the carrier's protocol (bad JSON, base64, fields)."""


# --- reading a carrier's JSON media messages (shared by the carriers' wire modules) ---------

MAX_MEDIA_MESSAGE = 64 * 1024  # a 20 ms frame is ~300 bytes of JSON; this is generous


def json_message(text: str | bytes) -> dict[str, Any]:
    """One media-socket message as a JSON object; MalformedMessage if it is not one."""
    if len(text) > MAX_MEDIA_MESSAGE:
        raise MalformedMessage("message too large")
    try:
        msg = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedMessage(f"bad JSON: {exc}") from None
    except RecursionError:  # `[[[[…` deep enough to exhaust the parser's stack
        raise MalformedMessage("bad JSON: nested too deeply") from None
    if not isinstance(msg, dict):
        raise MalformedMessage("message is not a JSON object")
    return msg


def field(msg: Mapping[str, object], *path: str) -> object:
    """`msg[path[0]][path[1]]…`; MalformedMessage naming the path if any step is missing."""
    cur: object = msg
    for key in path:
        if not isinstance(cur, Mapping) or key not in cur:
            raise MalformedMessage(f"missing field {'.'.join(path)}")
        cur = cur[key]
    return cur


def str_field(msg: Mapping[str, object], *path: str) -> str:
    """A string (or integer) field, as a string."""
    value = field(msg, *path)
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise MalformedMessage(f"field {'.'.join(path)} is not a string")
    return str(value)


def audio_payload(msg: Mapping[str, object], *path: str) -> bytes:
    """The base64 audio at `path`, decoded; MalformedMessage if it is not base64."""
    text = str_field(msg, *path)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedMessage("media payload is not valid base64") from None
