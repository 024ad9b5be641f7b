"""Guardrails applied to what the agent is about to say, before it is spoken."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from getpatter.agent import Guardrail

log = logging.getLogger(__name__)


def screen(text: str, guardrails: Sequence[Guardrail]) -> tuple[str, Guardrail | None]:
    """`text` unchanged, or the first violated guardrail's replacement and that guardrail.

    A check function that raises counts as a violation: failing closed is the safe side.
    """
    for guardrail in guardrails:
        try:
            violated = guardrail.violates(text)
        except Exception:
            log.exception("guardrail %r check raised; treating the text as blocked", guardrail.name)
            violated = True
        if violated:
            return guardrail.replacement, guardrail
    return text, None
