"""Cut a streamed reply into speakable pieces: sentences, with a fast first flush.

TTS sounds best on whole sentences, but waiting for the first full stop delays the first
word. So the first piece of a reply goes out at the first clause boundary once it is long
enough to sound natural; later pieces are whole sentences.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s)|\n+")
_CLAUSE_END = re.compile(r"[,;:—–]+(?=\s)")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st sr jr prof inc ltd co vs etc e.g i.e a.m p.m approx no dept est".split()
)


@dataclass(slots=True)
class ChunkerOptions:
    first_min_chars: int = 24  # the first piece may end at a comma once this long
    first_max_words: int = 12  # … or at any space once this many words are waiting
    min_chars: int = 2  # pieces shorter than this are joined with the next


class SentenceChunker:
    """Feed text deltas with `push`; take finished pieces as they appear; `flush` at the end."""

    def __init__(self, options: ChunkerOptions | None = None) -> None:
        self.options = options or ChunkerOptions()
        self._buffer = ""
        self._first = True

    def push(self, delta: str) -> Iterator[str]:
        self._buffer += delta
        yield from self._drain()

    def flush(self) -> Iterator[str]:
        piece = self._buffer.strip()
        self._buffer = ""
        if piece:
            self._first = False
            yield piece

    def _drain(self) -> Iterator[str]:
        while True:
            cut = self._next_cut()
            if cut is None:
                return
            piece, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if len(piece) >= self.options.min_chars:
                self._first = False
                yield piece

    def _next_cut(self) -> int | None:
        text = self._buffer
        for match in _SENTENCE_END.finditer(text):
            end = match.end()
            if match.group().startswith(".") and self._is_abbreviation_or_number(text, match):
                continue
            return end
        if self._first:
            opts = self.options
            for match in _CLAUSE_END.finditer(text):
                if match.end() >= opts.first_min_chars:
                    return match.end()
            words = text.split(" ")
            if len(words) > opts.first_max_words and text.endswith(" "):
                return len(text)
        return None

    @staticmethod
    def _is_abbreviation_or_number(text: str, match: re.Match[str]) -> bool:
        before = text[: match.start()].rsplit(None, 1)
        word = before[-1].lower() if before else ""
        if word.rstrip(".") in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
            return True
        after = text[match.end() : match.end() + 2]
        return word[-1:].isdigit() and after[1:2].isdigit()
