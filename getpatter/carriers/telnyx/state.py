"""What the Telnyx adapter remembers beyond each call's session: events already handled,
per-call DTMF/AMD/last-words state, and the order of each media stream."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field

MAX_TRACKED = 10_000  # event ids and ended call ids remembered for deduplication


class Recent:
    """A bounded set that remembers the latest `size` items."""

    def __init__(self, size: int = MAX_TRACKED) -> None:
        self._items: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def __contains__(self, item: str) -> bool:
        return item in self._items

    def discard(self, item: str) -> None:
        self._items.pop(item, None)

    def add(self, item: str) -> bool:
        """False when already present."""
        if item in self._items:
            return False
        self._items[item] = None
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return True


@dataclass
class CallState:
    """What the adapter tracks per call beyond the session."""

    dtmf_counts: dict[str, int] = field(default_factory=lambda: {"socket": 0, "webhook": 0})
    dtmf_delivered: int = 0
    amd_reported: bool = False
    human: bool = False  # the AMD verdict was a human
    last_words: asyncio.Task[None] | None = None  # a voicemail drop or a goodbye being spoken
    greeting_ended: asyncio.Event = field(default_factory=asyncio.Event)
    speak_ended: asyncio.Event = field(default_factory=asyncio.Event)
    answered: asyncio.Event = field(default_factory=asyncio.Event)  # a busy call's answer

    def accept_dtmf(self, source: str) -> bool:
        """The n-th digit of either source is new only if fewer than n have been delivered."""
        self.dtmf_counts[source] += 1
        if self.dtmf_counts[source] > self.dtmf_delivered:
            self.dtmf_delivered = self.dtmf_counts[source]
            return True
        return False


@dataclass
class StreamOrder:
    """A media stream's call and how its sequence numbers have gone so far."""

    call_id: str
    last_seq: int = -1
    late: int = 0
