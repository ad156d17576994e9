"""Where a document may be cut so that tokenizing the pieces gives exactly its tokens.

`prep tokenize` sends pieces of one document to different worker processes, so cutting must
never change a token: tokens(text) == tokens(text[:i]) + tokens(text[i:]) at every cut i.

The rule. A position i is a *safe boundary* when 0 < i < len(text), text[i] is an ASCII
whitespace character (tab, \\n, \\v, \\f, \\r or space) and text[i-1] is not whitespace
(`str.isspace()` is false): we cut right before the first character of a whitespace run.

Why it is exact. tiktoken's GPT-2 `encode_ordinary` first splits the text into pre-tokens
with the regex (tiktoken's r50k_pat_str; `++` is possessive), alternatives in this order::

    A1 `'(?:[sdmt]|ll|ve|re)`   A2 ` ?\\p{L}++`   A3 ` ?\\p{N}++`   A4 ` ?[^\\s\\p{L}\\p{N}]++`
    A5 `\\s++$`                  A6 `\\s+(?!\\S)`  A7 `\\s`

Matches are searched left to right, each search starting where the previous match ended;
every character starts a match of A2-A7, so pre-tokens tile the text. Then BPE runs on each
pre-token on its own: no merge crosses a pre-token. So it suffices that the pre-tokens of
text are those of text[:i] followed by those of text[i:]. Two facts are used: (a) every
character the regex engine calls `\\s` (Unicode White_Space) is `str.isspace()`, so a
character that is not `isspace()` is not `\\s` (tests check this for every code point), and
the six ASCII characters above are `\\s` in every engine; (b) the pattern has no lookbehind
or `\\b`, and its one anchor `$` is the end of the string: an attempt at position p reads only
text[p:] and where the string ends (A6 looks ahead, not back).

1. No whole-text pre-token spans i. Such a match m (start p < i < end) holds text[i-1] and
   text[i]. A1 holds no whitespace. In A2-A4 the only possible whitespace is the optional
   leading space, m's first character, at p <= i-1, not at i. A5-A7 hold only
   whitespace, but text[i-1] is not whitespace. So a pre-token starts exactly at i.
2. Suffix. By (b) the attempts at p >= i read only text[p:] = text[i:][p-i:] (and both
   strings end at the same place), so from the pre-token that starts at i (step 1) on,
   the whole text and text[i:] tokenize alike.
3. Prefix. For p < i each alternative gives the same result on text and on text[:i]:
   A1 is a literal without whitespace, so where it would read text[i] it fails on both
   strings (whitespace, resp. end of string). A2-A4 end with a greedy class run that stops
   at the first character outside the class; text[i] is whitespace, outside every class, so
   the run stops at or before i on both strings. A5-A7: a whitespace run starting at p < i
   ends before i-1 (text[i-1] is not whitespace), so A5's `$` fails on both strings (neither
   ends there), A6's lookahead reads a position <= i-1, and A7 reads text[p] only, on both
   strings alike. So the left-to-right search visits the same positions and picks the same
   matches before i.

Examples of unsafe cuts (tested): inside a whitespace run ("a\\n\\n\\nb" cut at 2 turns the
token "\\n\\n" into two "\\n"), before a word after spaces ("x   y" cut at 4), and inside a
contraction ("it's" cut at 3).
Text without whitespace has no safe boundary, so a chunk grows until one comes: memory is
bounded by the chunk size plus the longest whitespace-free stretch.

Long whitespace runs. tiktoken's regex engine backtracks A6's `\\s+` one character at a
time, and a run of about a million whitespace characters followed by a non-whitespace one
exceeds its backtracking stack: `encode_ordinary` panics (`encode_to_numpy` raises
ValueError) on the whole text, so the cut rule above (which never cuts inside a run) cannot
help. A second cut, used by the workers inside each chunk (`whitespace_run_pieces`): right
before the last character of a run of Unicode White_Space (which the engine calls `\\s`;
tests check it) that a character outside White_Space follows ("\\x1c" is `isspace()` but no
`\\s`: a run before it is cut too). Let the run be text[s:i+1], i >= s+1, text[s-1] not
`\\s` (or s = 0), text[i+1] not `\\s`. Whole text: no pre-token spans s (as in step 1:
text[s-1] is no whitespace, text[s] is). At s, A1 fails, A2-A4 fail (text[s+1] is
whitespace), A5 fails (text[i+1] follows the run), A6 matches text[s:i] (the greedy run
backs off one character for its lookahead), so a pre-token starts at i. text[:i]: the
attempts before s are those of the whole text (as in step 3), and at s A2-A4 fail as before
and A5 matches text[s:i] to the end of the string: the same pre-token, without backtracking.
text[i:] tokenizes like the whole text from i on (step 2). So tokens(text) ==
tokens(text[:i]) + tokens(text[i:]).

Below the rule: `Chunker` (one document, streamed) and the two generators that turn the
corpus's pieces into the units of work `prep tokenize` sends to its workers.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator

from prep.corpus import Piece

SPLIT_WHITESPACE = "\t\n\x0b\x0c\r "  # the characters a cut may precede (all are \s anywhere)

# A cut point: an ASCII whitespace character whose predecessor is not whitespace. Python's
# `\S` on str is exactly `not str.isspace()`; the lookbehind also sees text before `pos`.
_BOUNDARY = re.compile(r"(?<=\S)[\t\n\x0b\x0c\r ]")

# Unicode's White_Space property: what the encoder's regex engine calls \s (tests check it)
WHITE_SPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
               "\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
LONG_WHITESPACE_RUN = 1 << 12  # runs this long are cut before their last character (far below ~1e6)


@functools.lru_cache(maxsize=None)
def _whole_runs(min_run: int) -> re.Pattern:
    """A whole whitespace run (nothing of it before the match) of at least `min_run`
    characters, and a character outside it after; each run is tried once: a linear scan."""
    return re.compile(rf"(?<![{WHITE_SPACE}])[{WHITE_SPACE}]{{{min_run},}}(?=[^{WHITE_SPACE}])")


def whitespace_run_pieces(text: str, min_run: int = LONG_WHITESPACE_RUN) -> list[str]:
    """`text` cut right before the last character of every whitespace run of at least
    `min_run` (>= 2) characters that a non-whitespace character follows (joined == text).

    Exact at any run length (module docstring, "Long whitespace runs"); done for long runs
    only, where tiktoken would otherwise exceed its regex backtracking stack (about a million
    characters) and fail on the text."""
    if min_run < 2:
        raise ValueError(f"min_run must be >= 2, got {min_run}")
    pieces, start = [], 0
    for match in _whole_runs(min_run).finditer(text):
        cut = match.end() - 1
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def is_safe_boundary(text: str, i: int) -> bool:
    """True when cutting `text` before index i cannot change any token (see module docstring)."""
    return 0 < i < len(text) and text[i] in SPLIT_WHITESPACE and not text[i - 1].isspace()


def next_safe_boundary(text: str, start: int, prev_char: str = "") -> int | None:
    """The first safe boundary i >= start in `text`, or None.

    `prev_char` is the character right before text[0] (the end of text already held back),
    which makes i = 0 a candidate too; "" means text[0] starts the document.
    """
    if start <= 0:
        if prev_char and text and text[0] in SPLIT_WHITESPACE and not prev_char.isspace():
            return 0
        start = 1
    match = _BOUNDARY.search(text, start)
    return None if match is None else match.start()


class Chunker:
    """Cut one document, arriving in arbitrary pieces, into chunks of about `chunk_chars`.

    Each chunk (but the last) is cut at the first safe boundary at or after `chunk_chars`
    characters, so chunk sizes are `chunk_chars` plus a few characters. Work is linear in
    the text: each character is searched once, whatever the pieces look like.
    """

    def __init__(self, chunk_chars: int):
        if chunk_chars < 1:
            raise ValueError(f"chunk_chars must be >= 1, got {chunk_chars}")
        self.chunk_chars = chunk_chars
        self._held: list[str] = []  # text read but not yet cut off, in order
        self._held_chars = 0

    def feed(self, text: str) -> Iterator[str]:
        """Add the next piece of the document; yield every chunk that is now complete."""
        pos = 0  # start of the part of `text` not yet emitted
        while pos < len(text):
            target = pos + max(self.chunk_chars - self._held_chars, 0)
            if target >= len(text):
                break
            prev_char = self._held[-1][-1] if (target == 0 and self._held) else ""
            cut = next_safe_boundary(text, target, prev_char)
            if cut is None:
                break
            chunk = "".join(self._held) + text[pos:cut]
            self._held, self._held_chars, pos = [], 0, cut
            yield chunk
        if pos < len(text):
            self._held.append(text[pos:])
            self._held_chars += len(text) - pos

    def finish(self) -> str:
        """The rest of the document (possibly ""); the chunker is then ready for the next one."""
        rest = "".join(self._held)
        self._held, self._held_chars = [], 0
        return rest


def split_text(text: str, chunk_chars: int) -> list[str]:
    """A whole text cut at safe boundaries into chunks of about `chunk_chars` (joined == text)."""
    chunker = Chunker(chunk_chars)
    chunks = list(chunker.feed(text))
    rest = chunker.finish()
    return chunks + [rest] if rest else chunks


def document_chunks(pieces: Iterable[Piece], chunk_chars: int) -> Iterator[tuple[str, bool, int]]:
    """(text, starts_document, bytes read since the last one) for every non-empty chunk, and
    last ("", False, bytes) where the corpus ends in empty documents, whose bytes it counts.

    A document with no text starts no chunk, so it gets no EOT: empty documents are skipped.
    """
    chunker, first, nbytes = Chunker(chunk_chars), False, 0
    for piece in pieces:
        if piece.new_document:
            if rest := chunker.finish():
                yield rest, first, nbytes
                nbytes = 0
            first = True
        nbytes += piece.nbytes
        for chunk in chunker.feed(piece.text):
            yield chunk, first, nbytes
            first, nbytes = False, 0
    if (rest := chunker.finish()) or nbytes:
        yield rest, first and bool(rest), nbytes


def batches(chunks: Iterable[tuple[str, bool, int]], chunk_chars: int) -> Iterator[tuple[list, int, int]]:
    """(pieces, chars, bytes): consecutive chunks packed until a batch holds `chunk_chars`.

    Small documents travel together, so per-task overhead stays small next to encoding.
    """
    pieces, chars, nbytes = [], 0, 0
    for text, starts_document, read in chunks:
        pieces.append((text, starts_document))
        chars, nbytes = chars + len(text), nbytes + read
        if chars >= chunk_chars:
            yield pieces, chars, nbytes
            pieces, chars, nbytes = [], 0, 0
    if pieces:
        yield pieces, chars, nbytes
