"""Safe split points (prep/chunking.py): cutting a document there never changes a token.

The proof is in the module docstring; these tests attack it with adversarial text (whitespace
runs, contractions, digits, unicode, CRLF, tabs, punctuation) against the real encoder.
"""

from __future__ import annotations

import sys

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from prep.chunking import (SPLIT_WHITESPACE, WHITE_SPACE, Chunker, is_safe_boundary, next_safe_boundary,
                           split_text, whitespace_run_pieces)
from prep.tokenizer import get_encoding

from _data import TINY_SHAKESPEARE

ENC = get_encoding()

# Pieces chosen to hit every alternative of the GPT-2 pattern and its edges.
FRAGMENTS = [
    " ", "  ", "   ", "\n", "\n\n", "\r\n", "\r", "\t", "\t ", " \n", "\x0b", "\x0c",
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'", "''", "'S", "’s",
    "a", "Ab", "word", "I", "x", "123", "4", "٣", "½", "!", "?!", "...", "-", "--", "(", ")",
    "é", "e\u0301", "日本語", "。", "ß", "Ω", "😀", "👍🏽",
    "\u00a0", "\u3000", "\u2028", "\u0085",
    "\x1c", "\x1f", "\u200b", "\ufeff", "<|endoftext|>", "http://x.y/z?a=1", "don't", "O'Neil",
]
TEXT = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=60).map("".join)


def tokens(text: str) -> list[int]:
    return ENC.encode_ordinary(text)


def chunked_tokens(chunks: list[str]) -> list[int]:
    return [t for chunk in chunks for t in tokens(chunk)]


def test_known_boundaries():
    assert is_safe_boundary("a b", 1)
    assert is_safe_boundary("a\n\nb", 1)
    assert is_safe_boundary("x.\tb", 2)
    assert not is_safe_boundary("a b", 0)  # nothing before
    assert not is_safe_boundary(" ab", 0)  # nothing before, even where text[-1] (the end) is no whitespace
    assert not is_safe_boundary("a  b", 2)  # inside a whitespace run
    assert not is_safe_boundary("a\n\nb", 2)
    assert not is_safe_boundary("ab", 1)  # no whitespace
    assert not is_safe_boundary("a\u00a0b", 1)  # non-ASCII whitespace: not needed, not trusted
    assert not is_safe_boundary("a ", 2)  # the end is no cut
    assert next_safe_boundary("ab cd ef", 0) == 2
    assert next_safe_boundary("ab cd ef", 3) == 5
    assert next_safe_boundary("abc", 0) is None
    assert next_safe_boundary(" x", 0, prev_char="a") == 0
    assert next_safe_boundary(" x", 0, prev_char=" ") is None


@pytest.mark.parametrize("text, cut", [("a\n\n\nb", 2), ("a\n\n\n\nb", 5), ("x   y", 4),
                                       ("'ll", 1), ("it's", 3)])
def test_unsafe_cuts_really_change_tokens(text, cut):
    """Why the rule is what it is: these naive cuts change the tokens, and the rule rejects them."""
    assert not is_safe_boundary(text, cut)
    assert tokens(text[:cut]) + tokens(text[cut:]) != tokens(text)


def test_every_regex_whitespace_is_str_isspace():
    """Fact (a) of the proof: `not isspace()` implies not `\\s` for the regex engine."""
    chars = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    engine_space = regex.findall(r"\s", chars)
    assert engine_space and all(c.isspace() for c in engine_space)
    white_space = [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
                   0x2028, 0x2029, 0x202F, 0x205F, 0x3000]  # Unicode's White_Space property
    assert all(chr(c).isspace() for c in white_space)
    assert all(regex.fullmatch(r"\s", c) for c in SPLIT_WHITESPACE)


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_every_safe_boundary_is_exact(text):
    whole = tokens(text)
    for i in range(len(text) + 1):
        if is_safe_boundary(text, i):
            assert tokens(text[:i]) + tokens(text[i:]) == whole, (text, i)


WS_TEXT = st.lists(st.one_of(st.sampled_from([*WHITE_SPACE, "\x1c", "x", "1", "!", "'s", "\u200b"]),
                             st.sampled_from(FRAGMENTS)).map(lambda f: f * 3), max_size=40).map("".join)


def test_white_space_is_regex_whitespace():
    """The long-run cut needs its runs to be the engine's \\s runs: Unicode White_Space, no
    more ("\\x1c" to "\\x1f" are isspace() but not \\s) and no less."""
    engine = {chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and regex.fullmatch(r"\s", chr(c))}
    assert engine == set(WHITE_SPACE) and not any(regex.fullmatch(r"\s", chr(c)) for c in range(0x1C, 0x20))


@settings(max_examples=300, deadline=None)
@given(WS_TEXT, st.integers(min_value=2, max_value=4))
def test_whitespace_run_pieces_are_exact(text, min_run):
    """The cut before a whitespace run's last character (module docstring) at any run length."""
    pieces = whitespace_run_pieces(text, min_run)
    assert "".join(pieces) == text
    assert chunked_tokens(pieces) == tokens(text)


def test_a_million_whitespace_run_is_cut_where_the_encoder_would_fail():
    """tiktoken's regex exceeds its backtracking stack on ~1e6 whitespace before a word."""
    text = "a" + " " * 1_000_000 + "b\n" + "\u3000" * 1_000_000 + "c" + " " * 1_000_000 + "\x1c"
    pieces = whitespace_run_pieces(text)
    assert "".join(pieces) == text and [len(p) for p in pieces] == [1_000_000, 1_000_002, 1_000_001, 2]
    expected = (tokens("a" + " " * 999_999) + tokens(" b\n" + "\u3000" * 999_999) + tokens("\u3000c" + " " * 999_999)
                + tokens(" \x1c"))
    assert chunked_tokens(pieces) == expected


@settings(max_examples=300, deadline=None)
@given(TEXT, st.integers(min_value=1, max_value=40))
def test_split_text_is_exact(text, chunk_chars):
    chunks = split_text(text, chunk_chars)
    assert "".join(chunks) == text
    assert all(chunks) and all(len(c) >= chunk_chars for c in chunks[:-1])
    assert chunked_tokens(chunks) == tokens(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(TEXT, max_size=8), st.integers(min_value=1, max_value=30))
def test_chunker_fed_in_pieces_is_exact(pieces, chunk_chars):
    """However the reads split the document (even mid-run), the chunks cut at safe points."""
    chunker = Chunker(chunk_chars)
    chunks = [c for piece in pieces for c in chunker.feed(piece)]
    rest = chunker.finish()
    text = "".join(pieces)
    assert "".join(chunks) + rest == text
    assert chunked_tokens(chunks + [rest]) == tokens(text)
    position = 0
    for chunk in chunks:  # each cut is the whole text's first safe boundary chunk_chars or more past the last
        first = next((i for i in range(position + chunk_chars, len(text)) if is_safe_boundary(text, i)), None)
        position += len(chunk)
        assert position == first


def test_a_chunk_ending_in_whitespace_is_not_cut_where_the_next_piece_goes_on_with_it():
    """The piece "\\n\\nb" arrives when the held "x" "\\n" already fill a chunk: the candidate cut
    before it is judged by the held text's LAST character ("\\n", inside a run: no cut), not
    its first ("x"); a cut there made "\\n\\n" two "\\n" tokens."""
    chunker = Chunker(2)
    chunks = [c for piece in ("x", "\n", "\n\nb") for c in chunker.feed(piece)]
    assert chunks == [] and chunker.finish() == "x\n\n\nb"


def test_text_without_whitespace_stays_one_chunk():
    chunker = Chunker(4)
    assert [c for _ in range(1000) for c in chunker.feed("abc")] == []
    assert chunker.finish() == "abc" * 1000
    assert chunker.finish() == ""  # ready for the next document


def test_tiny_shakespeare_in_many_chunks(shakespeare_text):
    chunks = split_text(shakespeare_text, 5_000)
    assert len(chunks) > 200
    assert chunked_tokens(chunks) == tokens(shakespeare_text)


@pytest.fixture
def shakespeare_text():

    path = TINY_SHAKESPEARE
    if not path.is_file():
        pytest.skip("tiny Shakespeare not present")
    return path.read_bytes().decode("utf-8")


def test_the_proof_is_about_the_pattern_the_encoder_uses():
    # prep/chunking.py's exactness argument walks these alternatives one by one: if tiktoken
    # ever changes GPT-2's pre-token pattern, the argument must be checked again.
    assert ENC._pat_str == r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
