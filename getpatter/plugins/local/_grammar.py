"""Phrase hints → a JSGF grammar and the small pronunciation dictionary it needs.

A grammar decoder only ever needs the grammar's own words, so instead of loading the full
CMU dictionary (135k words, ~0.1 s of GIL-holding C per decoder) each grammar decoder gets a
dictionary of just those words, looked up once per `LocalSTT` by scanning the dictionary file.
Words the dictionary lacks (names, digits, made-up words) get a pronunciation from espeak-ng,
which is installed with the same `local` extra: its IPA is mapped to the ARPABET phones of
pocketsphinx's English model. A phrase with a word neither knows is dropped with a warning.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

log = logging.getLogger("getpatter.plugins.local")

# Pieces of one JSGF grammar that are not words: header lines, comments, rule names, tags,
# weights, quoted tokens' quotes and the operators.
_JSGF_NOT_WORDS = re.compile(
    r"#JSGF[^;]*;|grammar\s+[^;]*;|import\s+[^;]*;|//[^\n]*|/\*.*?\*/|<[^>]*>|\{[^}]*\}"
    r"|/[^/]*/|\bpublic\b|[=;|*+()\[\]\"]",
    re.DOTALL,
)


def words_of(phrase: str) -> list[str]:
    """The words of a phrase as the recogniser spells them: lower case, no punctuation."""
    words = (w.strip("'") for w in re.findall(r"[\w']+", phrase.lower()))
    return [w for w in words if w and w != "_"]


def grammar_words(jsgf: str) -> set[str]:
    """The words (terminal tokens) of a JSGF grammar."""
    return {w.lower() for w in _JSGF_NOT_WORDS.sub(" ", jsgf).split()}


@dataclass(frozen=True, slots=True)
class Grammar:
    """What a grammar decoder is built from; `phrases` maps recognised text to the hint."""

    jsgf: str
    dictionary: str  # pocketsphinx dictionary lines for the grammar's words
    phrases: dict[str, str]
    dropped: tuple[str, ...] = ()


def phrases_jsgf(phrases: Iterable[str]) -> str:
    alternatives = " | ".join(f"( {p} )" for p in phrases)
    return f"#JSGF V1.0;\ngrammar hints;\npublic <utt> = {alternatives};\n"


def lookup(words: Iterable[str], dictionary_path: str) -> dict[str, list[str]]:
    """Pronunciation lines (``word phones``, variants ``word(2) phones``) for `words`."""
    wanted = set(words)
    found: dict[str, list[str]] = {}
    with open(dictionary_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            head, _, phones = line.partition(" ")
            word = head.split("(", 1)[0]
            if word in wanted and phones.strip():
                found.setdefault(word, []).append(phones.strip())
    return found


def build(
    phrases: Sequence[str] | None,
    jsgf: str | None,
    dictionary_path: str,
    g2p: Callable[[str], str | None] | None,
) -> Grammar:
    """The grammar and dictionary for `phrases` (or a raw `jsgf`); raises ValueError when
    nothing is left to recognise."""
    if jsgf is not None:
        words = grammar_words(jsgf)
    else:
        assert phrases is not None
        words = {w for p in phrases for w in words_of(p)}
    found = lookup(words, dictionary_path)
    for word in sorted(words - found.keys()):
        phones = g2p(word) if g2p is not None else None
        if phones:
            found[word] = [phones]
    missing = words - found.keys()

    if jsgf is not None:
        if missing:
            raise ValueError(
                "grammar words with no pronunciation (not in the dictionary, no espeak-ng "
                f"to guess one): {', '.join(sorted(missing))}"
            )
        return Grammar(jsgf, _dictionary(found), {})

    assert phrases is not None
    kept: dict[str, str] = {}
    dropped: list[str] = []
    for phrase in phrases:
        phrase_words = words_of(phrase)
        if not phrase_words or missing.intersection(phrase_words):
            dropped.append(phrase)
            continue
        kept.setdefault(" ".join(phrase_words), phrase)
    if dropped:
        log.warning(
            "LocalSTT: dropped %d phrase hint(s) with words it cannot pronounce (%s): %s",
            len(dropped),
            ", ".join(sorted(missing)) or "no words",
            "; ".join(repr(p) for p in dropped),
        )
    if not kept:
        raise ValueError("none of the phrase hints has words the recogniser can pronounce")
    used = {w for p in kept for w in p.split()}
    entries = {w: v for w, v in found.items() if w in used}
    return Grammar(phrases_jsgf(kept), _dictionary(entries), kept, tuple(dropped))


def _dictionary(entries: dict[str, list[str]]) -> str:
    lines = []
    for word in sorted(entries):
        for i, phones in enumerate(entries[word]):
            lines.append(f"{word}{'' if i == 0 else f'({i + 1})'} {phones}")
    return "\n".join(lines) + "\n"


# --- espeak-ng IPA → ARPABET ------------------------------------------------------------------

_ARPABET = {
    # vowels and diphthongs (length marks are stripped before lookup)
    "ɑ": "AA", "ɒ": "AA", "æ": "AE", "a": "AE", "ʌ": "AH", "ə": "AH", "ɐ": "AH",
    "ɚ": "ER", "ɜ": "ER", "ɝ": "ER", "ɔ": "AO", "o": "OW", "aʊ": "AW", "aɪ": "AY",
    "ɛ": "EH", "e": "EH", "eɪ": "EY", "ɪ": "IH", "ᵻ": "IH", "i": "IY", "oʊ": "OW",
    "əʊ": "OW", "ɔɪ": "OY", "ʊ": "UH", "u": "UW",
    "ɪə": "IH R", "ɛə": "EH R", "eə": "EH R", "ʊə": "UH R", "aɪə": "AY ER", "aʊə": "AW ER",
    # consonants
    "b": "B", "d": "D", "f": "F", "h": "HH", "k": "K", "l": "L", "m": "M", "n": "N",
    "p": "P", "s": "S", "t": "T", "v": "V", "w": "W", "z": "Z", "ɡ": "G", "g": "G",
    "ð": "DH", "θ": "TH", "ʃ": "SH", "ʒ": "ZH", "tʃ": "CH", "dʒ": "JH", "ŋ": "NG",
    "ɹ": "R", "r": "R", "j": "Y", "ɾ": "T", "ʔ": "T", "x": "K", "ç": "HH", "ɫ": "L",
    "ɬ": "L", "ʍ": "W",
}  # fmt: skip
_LONGEST = max(len(k) for k in _ARPABET)
_MARKS = str.maketrans("", "", "ˈˌːˑ‿.")


def ipa_to_arpabet(phonemes: Iterable[str]) -> str | None:
    """espeak IPA phonemes → space-separated ARPABET, or None when one has no equivalent.

    The phonemes are joined and split again greedily into the longest known pieces, so
    espeak's compounds (``ɔːɹ``, ``aɪɚ``) and its centring diphthongs, which it separates
    (``ɪ_ə``, American English "ear"), both come out right.
    """
    rest = "".join(
        c for c in unicodedata.normalize("NFD", "".join(phonemes).translate(_MARKS))
        if not unicodedata.combining(c)
    )  # fmt: skip
    out: list[str] = []
    while rest:
        for size in range(min(_LONGEST, len(rest)), 0, -1):
            phones = _ARPABET.get(rest[:size])
            if phones is not None:
                out.append(phones)
                rest = rest[size:]
                break
        else:
            return None
    return " ".join(out) or None
