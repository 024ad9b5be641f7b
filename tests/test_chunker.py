"""SentenceChunker: LLM token deltas and sentence-yielding generators both cut and join right."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from getpatter.core.chunker import ChunkerOptions, SentenceChunker


def chunks(pieces: Iterable[str], *, pause: float = 0.0) -> list[str]:
    """What the chunker hands the TTS when the source goes quiet for `pause` seconds after
    each piece (a sentence end it stops at is a boundary if its hold is that short)."""
    chunker = SentenceChunker()
    out: list[str] = []
    for piece in pieces:
        out += chunker.push(piece)
        hold = chunker.hold()
        if hold is not None and hold <= pause:
            out += chunker.boundary()
    return out + list(chunker.flush())


TOKENS = [" I", " can", " help", ".", " Dr", ".", " Smith", " sees", " you", " at"]
TOKENS += [" 1", ".", "5", " past", " nine", "."]


def test_token_deltas_keep_their_own_spacing() -> None:
    assert chunks(["Hello", "!", " How", " are", " you", "?"]) == ["Hello!", "How are you?"]
    assert chunks(TOKENS) == ["I can help.", "Dr. Smith sees you at 1.5 past nine."]


def test_token_deltas_are_cut_the_same_when_the_stream_pauses_everywhere() -> None:
    # an LLM that stalls 200 ms after every token: abbreviations and decimals hold together
    assert chunks(TOKENS, pause=0.2) == chunks(TOKENS)
    # an abbreviation holds however long the pause; a digit before the stop holds 300 ms
    assert chunks(TOKENS, pause=10.0)[1].startswith("Dr. Smith sees you at 1.")


def test_first_clause_goes_out_early_for_token_deltas() -> None:
    chunker = SentenceChunker()
    words = "Well, the thing is that we can, in fact, do that for you today".split(" ")
    out: list[str] = []
    for i, word in enumerate(words):
        out += chunker.push(word if i == 0 else " " + word)
    assert out[0] == "Well, the thing is that we can,"


def test_yielded_sentences_are_joined_as_a_reader_would() -> None:
    yields = ["First, let me check the calendar.", "Tuesday at ten is free.", "Booked!"]
    assert chunks(yields) == yields
    # and when the pieces are not whole sentences, the words still come apart at the join
    assert chunks(["Let me check", " the calendar.", "Tuesday works,", "right?"]) == [
        "Let me check the calendar.",
        "Tuesday works, right?",
    ]
    assert chunks(["Ask Dr.", "Smith."], pause=10.0) == ["Ask Dr. Smith."]


def test_no_space_is_added_inside_numbers() -> None:
    assert chunks(["It is 1.", "5 km and 1,", "000 m at 3:", "30."]) == [
        "It is 1.5 km and 1,000 m at 3:30."
    ]


def test_a_whole_sentence_in_one_piece_is_cut_at_once() -> None:
    chunker = SentenceChunker()
    assert list(chunker.push("First, let me check the calendar.")) == [
        "First, let me check the calendar."
    ]
    assert list(chunker.push("Hello there. How are you?")) == ["Hello there.", "How are you?"]
    assert chunker.hold() is None


@pytest.mark.parametrize(
    ("text", "hold"),
    [
        ("Let me check", None),  # no sentence end
        ("I will ask Dr.", None),  # an abbreviation never ends a sentence
        ("Plan B.", None),  # nor does an initial
        ("The total is 42.", 0.3),  # may be a decimal point: wait longer
        ("Done!", 0.05),
        ('He said "yes."', 0.05),
    ],
)
def test_hold_after_a_sentence_end_without_a_space(text: str, hold: float | None) -> None:
    chunker = SentenceChunker()
    assert list(chunker.push("So")) == []
    assert list(chunker.push(" " + text)) == []
    assert chunker.hold() == hold
    if hold is None:
        assert list(chunker.boundary()) == []
    else:
        assert list(chunker.boundary()) == ["So " + text]


def test_pauses_are_options() -> None:
    chunker = SentenceChunker(ChunkerOptions(pause=0.01, number_pause=0.2))
    list(chunker.push("It is"))
    list(chunker.push(" done."))
    assert chunker.hold() == 0.01
