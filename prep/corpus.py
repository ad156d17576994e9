"""Reading the corpus: sources (prep.sources) -> a stream of document pieces.

A text file, or stdin read as text, is one document; each line of JSON lines is one (its `--field`).
Text is the file's bytes decoded as UTF-8, exactly: no newline translation; only a byte-order
mark at the very start of a file (text or JSONL) or of stdin is dropped, since it marks the
encoding and is no text (one anywhere else is kept as U+FEFF). Files are read in binary blocks
and decoded incrementally, so a huge document never sits in memory whole and a multibyte
character split across two blocks decodes as one. Stdin's and a pipe's first bytes are judged as
they are read (prep.sniff, prep.sniff_json), as a named file's were when it was resolved. Every
problem a user can fix raises CorpusError with the file, and the line or byte offset, in its
message.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import stat
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from prep.sniff import BLOCK_BYTES, BOM, CorpusError, not_utf8
from prep.sniff_json import JSON_WHITESPACE, first_bytes_error, judge_json, to_json_lines
from prep.sources import Source

ERRORS = ("strict", "replace")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # in a str json.loads made: a pair decodes to one character
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number",
               float: "a number", bool: "a boolean", type(None): "null"}


@dataclass(frozen=True)
class Piece:
    """A run of decoded text; `new_document` marks the first piece of each document.

    `nbytes` is the input consumed for it (for the progress bar and the byte totals).
    """

    text: str
    new_document: bool
    nbytes: int


def _read_text(stream: BinaryIO, label: str, errors: str, block_bytes: int,
               json_field: str | None = None, member: bool = False) -> Iterator[Piece]:
    """The stream's bytes as one document. `json_field`: a stream read as text by default, refused
    if it opens as JSON (judge_json). `member`: a directory's file."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    read = getattr(stream, "read1", stream.read)  # read1: what a pipe has now, not a full block
    offset, first, at_start = 0, True, True
    while True:
        block = read(block_bytes)
        if first:  # stdin, a directory's files: compressed or UTF-16 bytes are refused here
            while 0 < len(block) < 10 and (more := read(10 - len(block))):  # a pipe's first read may be short
                block += more
            error = first_bytes_error(block, read, label, json_field, member)
            if error is None and json_field is not None:
                block, error = judge_json(block, read, block_bytes, label, json_field)
            if error is not None:
                raise error
        held = len(decoder.getstate()[0])  # bytes of an unfinished character from the last block
        try:
            text = decoder.decode(block, final=not block)
        except UnicodeDecodeError as e:  # e.start counts from the held bytes
            raise CorpusError(f"{label}: invalid UTF-8 at byte {offset - held + e.start} "
                              f"(pass --errors replace to substitute U+FFFD)") from None
        if at_start and text:  # the first character decoded: the one at byte 0, whatever the blocks
            at_start = False
            text = text[1:] if text[0] == BOM else text
        yield Piece(text, first, len(block))  # a dropped BOM's bytes still count as read
        first = False
        offset += len(block)
        if not block:
            return


def _read_jsonl(stream: BinaryIO, label: str, field: str, errors: str) -> Iterator[Piece]:
    """Each line's `field` as one document; `label` names the stream in errors (path:line)."""
    offset, first = 0, True  # first: no line has held JSON yet
    for line_no, raw in enumerate(stream, start=1):
        where = f"{label}:{line_no}"
        if line_no == 1 and (error := not_utf8(raw[:10], label, jsonl=True)) is not None:  # stdin's: unchecked so far
            raise error
        try:
            line = raw.decode("utf-8", errors)
        except UnicodeDecodeError as e:
            raise CorpusError(f"{where}: invalid UTF-8 at byte {offset + e.start} "
                              f"(pass --errors replace to substitute U+FFFD)") from None
        offset += len(raw)
        if line_no == 1 and line.startswith(BOM):  # it marks the file, not the record
            line = line[1:]
        elif line.startswith(BOM):  # json.loads: "Unexpected UTF-8 BOM (decode using utf-8-sig)"
            raise CorpusError(f"{where}: starts with a byte-order mark (U+FEFF), which only a file's first line "
                              f"may have (files joined with cat, each with its own?): remove it")
        line = line.rstrip("\r\n")  # so a JSON error's column counts within this line
        # blank line (JSON's own whitespace only: a line of \x0c or U+00A0 is no JSON): no
        # document, but its bytes count as read
        if not line.strip(JSON_WHITESPACE):
            yield Piece("", False, len(raw))
            continue
        # one JSON document, an array (of records, most likely), on one line or pretty-printed
        # ("[" alone, "[{" ...): said so, with the jq line that makes it JSON lines, as stdin's
        # and a *.json file's are when nothing said to read them as JSON lines (prep.sniff_json)
        opening = line.lstrip(JSON_WHITESPACE)[:2].rstrip(JSON_WHITESPACE) if first else ""
        first = False
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            # (the C scanner's "Invalid control character at" ends where its position went)
            why = f"not valid JSON ({e.msg.removesuffix(' at')}, column {e.colno})"
            if opening in ("[", "[{"):
                raise CorpusError(f"{where}: {why}, the opening of a JSON array{_array(label)}") from None
            raise CorpusError(f"{where}: {why}") from None
        except (ValueError, RecursionError) as e:  # an integer of > 4,300 digits; nested too deeply
            why = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(":")[0]
            raise CorpusError(f"{where}: not valid JSON ({why})") from None
        if not isinstance(record, dict):
            raise CorpusError(f"{where}: expected a JSON object, got {_JSON_TYPES[type(record)]}"
                              f"{_array(label) if opening and isinstance(record, list) else ''}")
        if field not in record:
            keys = ", ".join(map(repr, list(record)[:5])) or "none"
            raise CorpusError(f"{where}: no {field!r} field (keys: {keys}; choose one with --field)")
        text = record[field]
        if not isinstance(text, str):
            kind = _JSON_TYPES.get(type(text), type(text).__name__)
            raise CorpusError(f"{where}: field {field!r} is {kind}, not a string")
        # a \ud800 escape without its pair decodes to a lone surrogate: no character, which
        # encode_ordinary tokenizes as U+FFFD (its own fallback, prep.workers), as --errors
        # replace does invalid UTF-8; strict says where (only an escape can give one: the line
        # itself is UTF-8, decoded)
        if errors == "strict" and "\\u" in line and (lone := _LONE_SURROGATE.search(text)) is not None:
            raise CorpusError(f"{where}: field {field!r} holds a lone surrogate, the JSON escape "
                              f"\\u{ord(lone.group()):04x} without its pair, no character (pass --errors "
                              f"replace to substitute U+FFFD)")
        yield Piece(text, True, len(raw))


def _array(label: str) -> str:
    """What the message for JSON lines that open as a JSON array adds: what it is, and the fix."""
    return f" (one JSON document, not JSON lines, the only JSON read here); {to_json_lines(label)}"


def read_pieces(sources: Sequence[Source], *, field: str = "text", errors: str = "strict",
                block_bytes: int = BLOCK_BYTES, stdin: BinaryIO | None = None,
                bytes_read: list[int] | None = None) -> Iterator[Piece]:
    """Every document of every source, in order, as a stream of pieces (flat memory).

    `errors` is "strict" (invalid UTF-8 raises CorpusError naming file and byte offset, and a
    JSON line's lone surrogate escape, \\ud800, file and line) or "replace" (U+FFFD; a lone
    surrogate is left to encode_ordinary, which tokenizes it as U+FFFD). `stdin` is the binary
    stream read for "-" (default sys.stdin).
    `bytes_read`, if given, gets each source's bytes yielded so far, in the sources' order
    (stdin's and a pipe's size is known only once read).
    """
    if errors not in ERRORS:
        raise ValueError(f"errors must be one of {ERRORS}, got {errors!r}")
    counts = [] if bytes_read is None else bytes_read
    counts[:] = [0] * len(sources)
    for index, source in enumerate(sources):
        for piece in _source_pieces(source, field, errors, block_bytes, stdin):
            counts[index] += piece.nbytes
            yield piece


def _source_pieces(source: Source, field: str, errors: str, block_bytes: int,
                   stdin: BinaryIO | None) -> Iterator[Piece]:
    """One source's documents as pieces (read_pieces' for each source)."""
    if source.is_stdin:
        stream = stdin or sys.stdin.buffer
        if source.kind == "stdin-jsonl":
            yield from _read_jsonl(stream, "<stdin>", field, errors)
        else:
            yield from _read_text(stream, "<stdin>", errors, block_bytes, None if source.format_said else field)
        return
    for path in source.files:
        try:
            with open(path, "rb") as f:
                opened = os.fstat(f.fileno())
                if source.kind == "jsonl":
                    yield from _read_jsonl(f, str(path), field, errors)
                else:
                    yield from _read_text(f, str(path), errors, block_bytes, None if source.format_said else field,
                                          member=source.kind == "directory")
                _check_unchanged(path, opened, f)
        except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
            raise CorpusError(f"{path}: cannot read ({e.strerror})") from None


def _check_unchanged(path: Path, opened: os.stat_result, f: BinaryIO) -> None:
    """CorpusError where a regular file changed while it was read, `f` read to its end: its
    size or modification time then is not what it was when it was opened. A file cut short or
    appended to mid-run, tokenized as read, was a document of neither version, with no word
    said. The bytes read are not held to the size: /sys's files say 4,096 and read fewer, and
    /proc's say 0 (skipped: no size to hold them to). Pipes and devices are read as they come."""
    if not stat.S_ISREG(opened.st_mode) or opened.st_size == 0:
        return
    now = os.fstat(f.fileno())
    if (now.st_size, now.st_mtime_ns) != (opened.st_size, opened.st_mtime_ns):
        rewritten = ", written meanwhile" if now.st_size == opened.st_size else ""
        raise CorpusError(f"{path}: changed while it was read ({opened.st_size:,} bytes when it was opened, "
                          f"{now.st_size:,} at the end{rewritten}, {f.tell():,} read): tokenize a copy that nothing "
                          f"writes to")
