"""JSON read as text by default, refused before it is tokenized: its braces, keys and escapes
would be tokenized as text. Stdin and a pipe given by name (<(zcat x.jsonl.gz), which has no name
to say what it holds) are read as one text document unless --stdin-format says otherwise, so
either is refused when its first lines are JSON objects (JSON lines) or it opens as a JSON array
of objects. A file named *.json is read as --stdin-format says, and refused when it says nothing:
the name says JSON, not which (datasets' to_json writes JSON lines there, others one JSON
document). A compressed file named for no format (x.gz) whose first lines, decompressed, are
JSON objects gets the pipe that reads them as JSON lines in its error, so the first bytes' check
as a whole (prep.sniff's, then that: first_bytes_error, not_utf8_error) is made here.
"""

from __future__ import annotations

import bz2
import json
import lzma
import os
import re
import shlex
import zlib
from collections.abc import Callable
from pathlib import Path

from prep.sniff import (BLOCK_BYTES, BOM, CompressedError, CorpusError, not_utf8, decompressed_input,
                        names_no_format)

JQ_LINES = "jq -c '.[]'"  # an array of JSON objects -> JSON lines (quoted: zsh takes .[] for a pattern)
OPENING_BYTES = 64 << 10  # where a stream read as text by default must show "[{" to be judged a JSON array
FIRST_LINE_MAX = 64 << 20  # a *.json file's first line, read whole to tell JSON lines (a record may be a book)
JSON_WHITESPACE = " \t\r\n"  # RFC 8259's; str.strip() would take any Unicode space
_FIRST_TOKEN = re.compile(rb"[^ \t\r\n]")  # a byte past JSON's whitespace (searched in place: no copy)


_DECOMPRESSORS = {"gzip": lambda: zlib.decompressobj(wbits=31), "bzip2": bz2.BZ2Decompressor,
                  "xz": lzma.LZMADecompressor}  # the standard library's (no zstd before Python 3.14; zip seeks)


SNIFF_BYTES = 1 << 20  # decompressed, at most: enough for the first lines of JSON lines to judge


def _opens_json(block: bytes, read: Callable[[int], bytes], kind: str, label: str, field: str) -> bool:
    """Whether the compressed stream that `block` starts (`read` reads on) holds JSON lines, as
    _json_lines_error judges the same bytes uncompressed: its first complete lines, decompressed
    (SNIFF_BYTES of them at most), all JSON objects. It is refused either way, so reading on from
    it costs nothing: bzip2 writes nothing out before a whole block (up to 900 kB in), more than a
    pipe's first read. False where its format has no decompressor here, or it does not decompress."""
    if kind not in _DECOMPRESSORS:
        return False
    decompressor, head, data, whole = _DECOMPRESSORS[kind](), bytearray(), block, False
    while True:
        try:
            head += decompressor.decompress(data, SNIFF_BYTES - len(head))
        except (zlib.error, OSError, EOFError, lzma.LZMAError):
            return False
        token = _FIRST_TOKEN.search(head)
        if len(head) >= SNIFF_BYTES or (token is not None and head.find(b"\n", token.start()) >= 0):
            break
        data = getattr(decompressor, "unconsumed_tail", b"") or read(1 << 16)  # (zlib's: input it has not read)
        if not data:
            whole = True
            break
    return _json_lines_error(bytes(head), label, field, whole) is not None



def first_bytes_error(block: bytes, read: Callable[[int], bytes], label: str, json_field: str | None,
                       member: bool = False) -> CorpusError | None:
    """not_utf8's error for the input that `block` starts (`read` reads on). `json_field`: a
    compressed one whose first lines, decompressed, are JSON objects (_opens_json) gets the pipe
    that reads JSON lines: read as text by default, they are refused next."""
    error = not_utf8(block[:10], label, member=member)
    if (isinstance(error, CompressedError) and json_field is not None
            and _opens_json(block, read, error.kind, label, json_field)):
        error = not_utf8(block[:10], label, jsonl=True, member=member)
    return error


def not_utf8_error(path: Path, field: str) -> CorpusError | None:
    """not_utf8's error for a file named as input, None for one whose first bytes may be text
    (and for a pipe or a device: _read_text checks those as it reads them). A compressed file
    named for no format (x.gz: names_no_format) whose first lines, decompressed, are JSON objects
    gets the pipe that reads them as such (_opens_json): read as text by default, they are
    refused there next."""
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return first_bytes_error(f.read(1 << 16), f.read, str(path), field if names_no_format(path) else None)


def refuse_not_utf8(path: Path, field: str) -> None:
    """not_utf8_error's error raised, before any work."""
    if (error := not_utf8_error(path, field)) is not None:
        raise error


def _json_lines_error(block: bytes, label: str, field: str, whole: bool,
                      what: str = "read as text, but") -> CorpusError | None:
    """The error for a stream read as text by default whose complete lines in `block` (its first;
    `whole`: all of it, the last line too) are all JSON objects with keys, one at least: JSON
    lines, almost surely (a decompressor's output, <(zcat x.jsonl.gz)), whose braces and keys
    would be tokenized as text. None otherwise: text, or a first line longer than the block
    (nothing said). The fix it names reads `field`, or says to choose the key where not all hold it.
    `what` starts the message (a *.json file is not read at all: "named .json, and")."""
    lines = block.removeprefix(BOM.encode()).split(b"\n")
    lines = [line for line in (lines if whole else lines[:-1]) if line.strip(b" \t\r")]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except (ValueError, RecursionError):  # not JSON, not UTF-8, too deep
            return None
        if not isinstance(records[-1], dict) or not records[-1]:
            return None
    if not records:
        return None
    if all(isinstance(record.get(field), str) for record in records):
        fix = f"pass --stdin-format jsonl to read each line's {field!r} as a document"
    else:
        keys = ", ".join(map(repr, list(records[0])[:5]))
        fix = f"pass --stdin-format jsonl and --field with the key holding the text (line 1's keys: {keys})"
    return CorpusError(f"{label}: {what} its first lines are JSON objects (JSON lines); {fix}, "
                       f"or --stdin-format text to tokenize the JSON as it is")


def _opening(block: bytes) -> bytes:
    """A stream's first JSON tokens as far as `block` holds them: its bytes after a byte-order
    mark with JSON's whitespace taken out, up to the first two ("[{" opens an array of objects)."""
    rest = block.removeprefix(BOM.encode()).lstrip(JSON_WHITESPACE.encode())
    return rest[:1] + rest[1:].lstrip(JSON_WHITESPACE.encode())[:1]


def _json_array_error(block: bytes, label: str) -> CorpusError | None:
    """The error for a stream read as text by default that opens as a JSON array of objects (one
    JSON document, `[{...}, ...]`, on one line or pretty-printed): its brackets, keys and escapes
    would be tokenized as text. The array's first element must be a whole JSON object with keys
    within `block`, followed by `,` or `]`. None otherwise: text that merely starts with "[{", an
    array of strings, or a first object longer than the block (nothing said)."""
    if _opening(block) != b"[{":
        return None
    text = block.removeprefix(BOM.encode()).decode("utf-8", "ignore")  # (a character cut at the block's end)
    start = text.index("{")
    try:
        first, end = json.JSONDecoder().raw_decode(text, start)
    except (ValueError, RecursionError):
        return None
    if not isinstance(first, dict) or not first or text[end:].lstrip(JSON_WHITESPACE)[:1] not in (",", "]"):
        return None
    return CorpusError(f"{label}: read as text, but it opens as a JSON array of objects (one JSON document, not "
                       f"JSON lines, the only JSON read here); pipe it through {JQ_LINES} and pass --stdin-format "
                       f"jsonl (and --field if the text is not under 'text'), or pass --stdin-format text to "
                       f"tokenize the JSON as it is")


def to_json_lines(label: str) -> str:
    """What to do with one JSON document (an array of objects) read where JSON lines are: a named
    file made JSON lines beside it (x.json -> x.jsonl; never over itself: x.jsonl -> x.lines.jsonl),
    stdin or a pipe piped through jq on its way in."""
    if not os.path.isfile(label):
        return f"pipe it through {JQ_LINES} first"
    path = Path(label)
    own = path.suffix.lower() == ".jsonl"  # (x.JSONL too: one file where names ignore case)
    lines = path.with_name(f"{path.stem}.lines.jsonl") if own else path.with_suffix(".jsonl")
    return (f"make it JSON lines first (for an array of objects: {decompressed_input(label, JQ_LINES)} > "
            f"{shlex.quote(str(lines))})")


def refuse_json(path: Path, field: str) -> None:
    """The error for a file named *.json read with no --stdin-format, before any work: the JSON
    it holds, JSON lines (as datasets' to_json writes them) or not, and the flag that reads it.
    Its first line is read whole (up to FIRST_LINE_MAX: a record may be a book), then a block."""
    with open(path, "rb") as f:
        head = f.readline(FIRST_LINE_MAX)
        head += f.read(BLOCK_BYTES)
        whole = not f.read(1)
    error = _json_lines_error(head, str(path), field, whole, what="named .json, and")
    if error is None:  # one JSON document, most likely (pretty-printed, an array of records)
        error = CorpusError(f"{path}: named .json, but not JSON lines (one JSON object a line), the only JSON read "
                            f"here; {to_json_lines(str(path))}, or pass --stdin-format text to tokenize the "
                            f"JSON as it is")
    raise error


def judge_json(block: bytes, read: Callable[[int], bytes], block_bytes: int, label: str,
                field: str) -> tuple[bytes, CorpusError | None]:
    """A stream's first block read on until it can be judged (with the bytes read for it), and
    the error for JSON read as text by default: JSON lines (_json_lines_error) or a JSON array of
    objects (_json_array_error); None for text."""
    # a complete first line: a pipe may hand it over in parts, and where the stream opens as a
    # JSON object that line may be a book, longer than a block (a .json file's is read as far,
    # refuse_json), so read on to FIRST_LINE_MAX. The first line that holds more than JSON's
    # whitespace: blank lines before JSON lines (a producer's leading newline) judge nothing.
    line, scanned, whole = bytearray(block), 0, False
    past_bom = len(BOM.encode()) if block.startswith(BOM.encode()) else 0
    start = None  # where the stream's first token starts, once read
    while True:
        if start is None and (token := _FIRST_TOKEN.search(line, max(scanned, past_bom))):
            start = token.start()
        limit = FIRST_LINE_MAX if start is not None and line[start:start + 1] == b"{" else block_bytes
        if (start is not None and line.find(b"\n", max(scanned, start)) >= 0) or len(line) >= limit:
            break
        scanned = len(line)
        # a block a read: a file's read1 hands over all it is asked for, and every whole line
        # past the first is parsed to judge it
        more = read(min(block_bytes, limit - len(line)))
        if not more:
            whole = True
            break
        line += more
    block = bytes(line)
    # `[` then `{`, on one line or pretty-printed: one JSON document if its first object is
    # whole; read on (up to FIRST_LINE_MAX: a record may be a book) until it is, or is no JSON,
    # judging it again each time the bytes read have doubled (linear in all)
    array = None
    if _opening(block) in (b"[", b"[{"):
        limit = max(FIRST_LINE_MAX, len(block))
        document, judged = bytearray(block), 0
        while True:
            # the opening from the first bytes alone (the whole would be copied at each read:
            # quadratic); past them, "[" and only spaces is no JSON document worth reading on for
            opening = _opening(bytes(document[:OPENING_BYTES]))
            last = (whole or len(document) >= limit or opening not in (b"[", b"[{")
                    or (opening == b"[" and len(document) >= OPENING_BYTES))
            if last or len(document) >= 2 * judged:
                judged = len(document)
                array = _json_array_error(bytes(document), label)
                if array is not None or last:
                    break
            more = read(min(block_bytes, limit - len(document)))
            whole = not more
            document += more
        block = bytes(document)
    return block, _json_lines_error(block, label, field, whole) or array
