"""Word error rate: word-level Levenshtein distance over the reference's length.

Both texts are normalised first, so that a transcript is not charged for what a caller cannot
hear: case, punctuation, and hyphens ("follow-up" is "follow up"). Numbers are not spelled
out ("10" against "ten" is a substitution); a corpus whose providers format numbers should
write its references the way they do.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["WordErrors", "normalize", "wer", "word_errors"]

_DASHES = re.compile(r"[-‐‑‒–—―/_]+")
_NOT_WORD = re.compile(r"[^\w\s']+")


def normalize(text: str) -> list[str]:
    """The words of `text`: lower case, without punctuation; inner apostrophes are kept."""
    text = unicodedata.normalize("NFKC", text).replace("’", "'").replace("‘", "'").lower()
    text = _NOT_WORD.sub(" ", _DASHES.sub(" ", text))
    words = (w.strip("'") for w in text.split())
    return [w for w in words if w]


@dataclass(frozen=True, slots=True)
class WordErrors:
    """The edits that turn the reference into the hypothesis, counted in words."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    reference_words: int = 0

    @property
    def edits(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """edits / reference words. With an empty reference: 0 for an empty hypothesis, else
        1 (any words at all are wrong; a rate over zero words has no other useful value)."""
        if self.reference_words == 0:
            return 0.0 if self.insertions == 0 else 1.0
        return self.edits / self.reference_words

    def __add__(self, other: WordErrors) -> WordErrors:
        return WordErrors(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.reference_words + other.reference_words,
        )


def word_errors(reference: str | Sequence[str], hypothesis: str | Sequence[str]) -> WordErrors:
    """Substitutions, deletions and insertions of a minimum-edit alignment (ties prefer a
    substitution, then a deletion, as the usual scoring tools do)."""
    ref = normalize(reference) if isinstance(reference, str) else list(reference)
    hyp = normalize(hypothesis) if isinstance(hypothesis, str) else list(hypothesis)
    # cost[j] and ops[j]: the best alignment of ref[:i] with hyp[:j], as (cost, s, d, ins)
    prev = [(j, 0, 0, j) for j in range(len(hyp) + 1)]
    for i in range(1, len(ref) + 1):
        cur = [(i, 0, i, 0)]
        for j in range(1, len(hyp) + 1):
            c, s, d, n = prev[j - 1]
            if ref[i - 1] == hyp[j - 1]:
                best = (c, s, d, n)
            else:
                best = (c + 1, s + 1, d, n)
            c, s, d, n = prev[j]
            if c + 1 < best[0]:
                best = (c + 1, s, d + 1, n)
            c, s, d, n = cur[j - 1]
            if c + 1 < best[0]:
                best = (c + 1, s, d, n + 1)
            cur.append(best)
        prev = cur
    _, s, d, n = prev[-1]
    return WordErrors(s, d, n, len(ref))


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of `hypothesis` against `reference` (0.0 = perfect; can exceed 1)."""
    return word_errors(reference, hypothesis).rate
