"""Cut a streamed reply into speakable pieces: sentences, with a fast first flush.

TTS sounds best on whole sentences, but waiting for the first full stop delays the first
word. So the first piece of a reply goes out at the first clause boundary once it is long
enough to sound natural; later pieces are whole sentences.

Text arrives two ways, and both must work. An LLM streams token deltas (" I", " can", ".",
" Dr", ".", " Smith"): a sentence ends where whitespace follows its full stop. An `on_message`
generator may instead yield whole sentences with no trailing space, pausing between them
("First, let me check the calendar." … a lookup … "Tuesday at ten is free."). So:

- a piece that brings a whole sentence by itself is cut at once;
- a sentence end with nothing after it is a boundary once no more text has come for
  `pause` seconds (`number_pause` after a digit: "1." may be followed by "5"); the caller of
  `push` asks `hold()` how long to wait and calls `boundary()` when that time has passed;
- pieces are joined as a reader would: a space goes between "calendar." and "Tuesday", none
  between "1." and "5", nor before a piece that brings its own space.

An abbreviation or an initial ("Dr.", "e.g.", "J.") never ends a sentence, however long the
pause: "Dr. Smith" is never split.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]”’]*(?=\s)|\n+")
_CLAUSE_END = re.compile(r"[,;:—–]+(?=\s)")
_TAIL = re.compile(r"[.!?…]+[\"')\]”’]*$")  # the buffer ends where a sentence could
_JOIN_AFTER = re.compile(r"([.!?…,;:])[\"')\]”’]*$")
_OPENERS = "“‘([¿¡"
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st sr jr prof inc ltd co vs etc e.g i.e a.m p.m approx no dept est".split()
)


@dataclass(slots=True)
class ChunkerOptions:
    first_min_chars: int = 24  # the first piece may end at a comma once this long
    first_max_words: int = 12  # … or at any space once this many words are waiting
    min_chars: int = 2  # pieces shorter than this are joined with the next
    pause: float = 0.05  # a sentence end followed by no text for this long is a boundary
    number_pause: float = 0.3  # … when it may be a decimal point ("1." then "5")


class SentenceChunker:
    """Feed text pieces with `push`; take finished pieces as they appear; when `hold()` gives a
    time and no text came within it, take `boundary()`; `flush` at the end."""

    def __init__(self, options: ChunkerOptions | None = None) -> None:
        self.options = options or ChunkerOptions()
        self._buffer = ""
        self._recent = ""  # the last few characters pushed, to join the next piece
        self._first = True

    def push(self, delta: str) -> Iterator[str]:
        if not delta:
            return
        delta = self._joined(delta)
        whole = not self._buffer.strip()  # this piece starts the unspoken text
        self._buffer += delta
        self._recent = (self._recent + delta)[-16:]
        yield from self._drain()
        if whole and self._tail() == "sentence":
            yield from self.boundary()  # a whole sentence in one piece: no need to wait

    def hold(self) -> float | None:
        """Seconds to wait for more text before the sentence end the buffer stops at counts
        as a boundary; None when it does not stop at one."""
        tail = self._tail()
        if tail is None:
            return None
        return self.options.number_pause if tail == "number" else self.options.pause

    def boundary(self) -> Iterator[str]:
        """No more text came in time: the sentence end at the end of the buffer is a cut."""
        if self._tail() is None:
            return
        piece, self._buffer = self._buffer.strip(), ""
        if len(piece) >= self.options.min_chars:
            self._first = False
            yield piece

    def flush(self) -> Iterator[str]:
        piece = self._buffer.strip()
        self._buffer = ""
        if piece:
            self._first = False
            yield piece

    def _joined(self, delta: str) -> str:
        """`delta` as it follows the text so far: with a space after a sentence or clause end
        when it starts a word right there ("calendar." + "Tuesday"), never inside a number."""
        first = delta[0]
        if not (first.isalnum() or first in _OPENERS):
            return delta
        match = _JOIN_AFTER.search(self._recent)
        if match is None:
            return delta
        mark = match.group(1)
        before = self._recent[match.start() - 1 : match.start()]
        if mark in ",;:" and not first.isalpha():
            return delta  # "1,000", "3:30"
        if mark == "." and before.isdigit() and first.isdigit():
            return delta  # "1.5"
        return " " + delta

    def _tail(self) -> str | None:
        """ "sentence" when the buffer ends at a sentence end, "number" when that end may be a
        decimal point, None otherwise (no end, or an abbreviation)."""
        text = self._buffer.rstrip(" ")
        if text != self._buffer or not text.strip():
            return None  # ends in a space: `_drain` has already cut there
        match = _TAIL.search(text)
        if match is None:
            return None
        before = text[: match.start()].rsplit(None, 1)
        word = before[-1].lower() if before else ""
        if match.group().startswith("."):
            if word.rstrip(".") in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
                return None
            if word[-1:].isdigit():
                return "number"
        return "sentence"

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
