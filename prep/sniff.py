"""What an input holds, told before it is read as text: by its name (names_jsonl, names_json,
names_no_format) and by its first bytes. Compressed bytes, or UTF-16 or UTF-32 text, fail as
invalid UTF-8 when read as text, whose hint (--errors replace) would then tokenize the bytes as if
they were text, and UTF-16 or UTF-32 without a byte-order mark may even read as valid UTF-8, NULs
and all: each is refused, saying how to convert it (a compressed one: how to decompress it on its
way in, CompressedError). JSON read as text by default is judged in prep.sniff_json.

CorpusError, raised for every problem with the corpus a user can fix (here, in prep.sniff_json,
prep.sources and prep.corpus), is defined here, below them all.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import PurePath

BLOCK_BYTES = 1 << 20  # one binary read: small enough to stream, big enough to be cheap
JSONL_SUFFIXES = (".jsonl", ".ndjson")  # JSON lines, by either name
TEXT_SUFFIX = ".txt"  # what a directory is read for
JSON_SUFFIX = ".json"  # JSON lines or one JSON document: --stdin-format says which
COMPRESSED_SUFFIXES = (".gz", ".xz", ".zst", ".bz2", ".zip")  # what x.jsonl.gz is named for
BOM = "\ufeff"  # at the start of a file it marks the encoding: no text, so no tokens


class CorpusError(ValueError):
    """Input the user must fix (missing path, bad UTF-8, malformed JSONL); says where."""


class CompressedError(CorpusError):
    """A compressed input, named or streamed in (not a directory's file), whose message spells
    out a command that decompresses it on its way in; the CLI, which has the whole command line,
    spells out all of it. `label` names the input as the message does, `kind` its format, `cat`
    the command that writes it decompressed, `jsonl` whether it is read as JSON lines, `stream`
    whether it is stdin or a pipe (no name to give the decompressor)."""

    def __init__(self, message: str, label: str, kind: str, jsonl: bool, stream: bool):
        super().__init__(message)
        self.label, self.kind, self.cat, self.jsonl, self.stream = label, kind, CAT[kind], jsonl, stream


def names_jsonl(path: str | os.PathLike, compressed: bool = False) -> bool:
    """Whether a file's name says JSON lines: its suffix, any case, is .jsonl or .ndjson, or, with
    `compressed`, the one before a compressed file's own suffix is (x.jsonl.gz). The name's
    suffixes exactly: neither a folder above it (data.jsonl/a.txt) nor one inside it
    (notes.jsonl.txt) says so."""
    name = PurePath(os.fspath(path).lower())
    if name.suffix in JSONL_SUFFIXES:
        return True
    return compressed and name.suffix in COMPRESSED_SUFFIXES and PurePath(name.stem).suffix in JSONL_SUFFIXES


def names_no_format(path: str | os.PathLike) -> bool:
    """Whether a compressed file's name says nothing of what it holds (x.gz; not x.jsonl.gz,
    nor x.txt.gz, whose decompressed x.txt is text by its name): its first lines, decompressed,
    say whether the pipe spelled out for it reads JSON lines (refuse_not_utf8)."""
    name = PurePath(os.fspath(path).lower())
    return (name.suffix in COMPRESSED_SUFFIXES and not names_jsonl(name, compressed=True)
            and PurePath(name.stem).suffix != TEXT_SUFFIX)


def names_json(path: str | os.PathLike) -> bool:
    """Whether a file's name, any case, ends in .json: JSON, but not which (JSON lines or one
    document), so it is read as --stdin-format says, and refused when that says nothing."""
    return PurePath(os.fspath(path).lower()).suffix == JSON_SUFFIX


# A format's leading bytes. Each holds a byte that valid UTF-8 text cannot start with (0x8b,
# 0xfd, 0xb5, control characters), except bzip2's "BZh", which is matched with its block-size
# digit and block magic ("1AY&SY") so that text starting "BZh" is not taken for it.
COMPRESSED = {b"\x1f\x8b": "gzip", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd", b"PK\x03\x04": "zip"}
_BZIP2 = re.compile(rb"^BZh[1-9]1AY&SY")
CAT = {"gzip": "zcat", "xz": "xzcat", "zstd": "zstdcat", "zip": "unzip -p", "bzip2": "bzcat"}  # -> stdout


# UTF-32's first: its little-endian mark starts with UTF-16LE's. 00 00 FE FF: NULs, then bytes no
# UTF-8 holds; the others' FF and FE start no UTF-8 character.
BOMS = {b"\xff\xfe\x00\x00": ("UTF-32", "FF FE 00 00"), b"\x00\x00\xfe\xff": ("UTF-32", "00 00 FE FF"),
        b"\xff\xfe": ("UTF-16", "FF FE"), b"\xfe\xff": ("UTF-16", "FE FF")}


def decompressed_input(label: str, cat: str) -> str:
    """The shell words that stream the named compressed file `label` decompressed: its name
    quoted, and ./-name for one starting with '-' (else the decompressor takes it for options)."""
    return f"{cat} {shlex.quote(f'./{label}' if label.startswith('-') else label)}"


def not_utf8(head: bytes, label: str, jsonl: bool = False, member: bool = False) -> CorpusError | None:
    """The error for input whose first bytes say it is no UTF-8 text at all (compressed, or
    UTF-16 or UTF-32, with a byte-order mark or without), None otherwise: read as text it fails as invalid UTF-8,
    whose hint (--errors replace) would then tokenize the bytes as if they were text. `jsonl`:
    the bytes are read as JSON lines (stdin with --stdin-format jsonl), as the pipe shown must.
    `member`: a file found in a directory, which no pipe stands in for (its siblings would be lost)."""
    found = [kind for magic, kind in COMPRESSED.items() if head.startswith(magic)]
    found += ["bzip2"] if _BZIP2.match(head) else []
    if found:
        kind, cat = found[0], CAT[found[0]]
        if member:
            return CorpusError(f"{label}: {kind}-compressed; decompress it first (a directory's files are read "
                               f"as they are)")
        # the pipe reads JSON lines as JSON lines: without the flag they would be one text document
        jsonl = jsonl or names_jsonl(label, compressed=True)
        fmt = " --stdin-format jsonl" if jsonl else ""
        if label == "<stdin>":
            return CompressedError(f"{label}: {kind}-compressed; decompress it on its way in, e.g. "
                                   f"{cat} FILE | prep tokenize{fmt} -", label, kind, jsonl, True)
        if not os.path.isfile(label):  # a pipe (<(cat x.gz)): no name to read again
            return CompressedError(f"{label}: {kind}-compressed; decompress it on its way in, e.g. "
                                   f"prep tokenize{fmt} <({cat} FILE)", label, kind, jsonl, True)
        return CompressedError(f"{label}: {kind}-compressed; decompress it first, or stream it (adding your "
                               f"other inputs and options, --out among them): "
                               f"{decompressed_input(label, cat)} | prep tokenize{fmt} -", label, kind, jsonl, False)
    bom = next((kind_mark for magic, kind_mark in BOMS.items() if head.startswith(magic)), None)
    if bom is not None:
        return CorpusError(f"{label}: {bom[0]} text (byte-order mark {bom[1]}), not UTF-8; convert it first, "
                           f"e.g. iconv -f {bom[0]} -t UTF-8")
    # Without a mark, UTF-16 of Latin text is valid UTF-8 (a NUL after or before each letter):
    # it would be tokenized, NULs and all. Text does not alternate letters and NULs like that.
    for order, nuls, letters in (("LE", head[1::2], head[0::2]), ("BE", head[0::2], head[1::2])):
        if len(head) >= 6 and not nuls.strip(b"\x00") and all(letters):
            return CorpusError(f"{label}: UTF-16{order} text (a NUL byte beside each letter), not UTF-8; convert "
                               f"it first, e.g. iconv -f UTF-16{order} -t UTF-8")
    # UTF-32 without a mark is valid UTF-8 too, for any character up to U+FFFF: two NULs beside
    # the two bytes that hold it (these may be NUL, but not both). Text has no NULs like that.
    units = [head[i:i + 4] for i in range(0, len(head) - 3, 4)]
    for order, high, low in (("LE", slice(2, 4), slice(0, 2)), ("BE", slice(0, 2), slice(2, 4))):
        if len(units) >= 2 and all(u[high] == b"\x00\x00" and u[low] != b"\x00\x00" for u in units):
            return CorpusError(f"{label}: UTF-32{order} text (two NUL bytes in each 4-byte character), not UTF-8; "
                               f"convert it first, e.g. iconv -f UTF-32{order} -t UTF-8")
    return None
