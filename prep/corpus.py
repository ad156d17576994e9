"""Reading the corpus: input arguments -> sources -> a stream of document pieces.

One text file is one document, one JSONL line is one document (its `--field`), and stdin is one
document (or JSON lines, with --stdin-format jsonl; so is a pipe given by name, <(zcat x.jsonl.gz),
which has no name to say it; read as text because nothing said otherwise, either is refused
when its first lines are JSON objects). A file named *.json is read as --stdin-format says too,
and refused when it says nothing: the name says JSON, not which (datasets' to_json writes JSON
lines there, others one JSON document), and as text its braces, keys and escapes would be
tokenized. Directories are searched recursively for
`*.txt` (`.TXT` too; linked directories too, a link loop being an error; hidden entries below
it, such as .ipynb_checkpoints/ or macOS's ._x.txt, are not read; what is left out is named in a
note), in sorted order, so the same tree always gives the same token stream. One file reached
twice (named twice, through a link, inside a directory also given) is an error: its text would
be trained on twice.
Text is the file's bytes decoded as UTF-8, exactly: no newline translation; only a byte-order
mark at the very start of a file (text or JSONL) or of stdin is dropped, since it marks the
encoding and is no text (one anywhere else is kept as U+FEFF). Files are read in binary blocks
and decoded incrementally, so a huge document never sits in memory whole and a multibyte
character split across two blocks decodes as one. Every problem a user can fix raises
CorpusError with the file, and the line or byte offset, in its message.
"""

from __future__ import annotations

import bz2
import codecs
import json
import lzma
import os
import re
import shlex
import stat
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import BinaryIO

from prep.atomic import file_identity

BLOCK_BYTES = 1 << 20  # one binary read: small enough to stream, big enough to be cheap
STDIN = "-"
STDIN_KINDS = {"text": "stdin", "jsonl": "stdin-jsonl"}  # --stdin-format -> Source.kind
JSONL_SUFFIXES = (".jsonl", ".ndjson")  # JSON lines, by either name
TEXT_SUFFIX = ".txt"  # what a directory is read for
JSON_SUFFIX = ".json"  # JSON lines or one JSON document: --stdin-format says which
JQ_LINES = "jq -c '.[]'"  # an array of JSON objects -> JSON lines (quoted: zsh takes .[] for a pattern)
OPENING_BYTES = 64 << 10  # where a stream read as text by default must show "[{" to be judged a JSON array
FIRST_LINE_MAX = 64 << 20  # a *.json file's first line, read whole to tell JSON lines (a record may be a book)
COMPRESSED_SUFFIXES = (".gz", ".xz", ".zst", ".bz2", ".zip")  # what x.jsonl.gz is named for
BOM = "\ufeff"  # at the start of a file it marks the encoding: no text, so no tokens
ERRORS = ("strict", "replace")
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number",
               float: "a number", bool: "a boolean", type(None): "null"}


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


@dataclass(frozen=True)
class Source:
    """One input argument, resolved: what it is, the files it stands for, their size."""

    arg: str  # as the user gave it
    kind: str  # "text", "jsonl", "directory", "stdin" (one text document) or "stdin-jsonl" (JSON lines)
    files: tuple[Path, ...]  # the files read, in order (empty for stdin)
    bytes: int | None  # None when unknown up front (stdin, pipes)
    left_out: tuple[Path, ...] = ()  # a directory's other entries: not *.txt, not regular files, or hidden
    format_said: bool = True  # False: stdin or a pipe read as text because nobody said otherwise

    def note(self) -> str | None:
        """What a directory left out, for the user to see before the work starts; None: nothing."""
        if not self.left_out:
            return None
        names = ", ".join(p.relative_to(self.arg).as_posix() + ("/" if p.is_dir() else "")
                          for p in self.left_out[:3])
        more = f" and {len(self.left_out) - 3:,} more" if len(self.left_out) > 3 else ""
        return (f"{self.arg}: {len(self.left_out):,} left out, not *.txt, not regular files or hidden: "
                f"{names}{more}{_jsonl_hint(self.left_out)}")

    @property
    def is_stdin(self) -> bool:
        return self.kind in STDIN_KINDS.values()

    def to_meta(self, bytes_read: int | None = None) -> dict:
        """The entry for meta.json's "sources" list."""
        path = self.arg if self.is_stdin else str(Path(self.arg).absolute())
        entry = {"path": path, "kind": self.kind, "bytes": self.bytes if bytes_read is None else bytes_read}
        if self.kind == "directory":
            entry["files"] = len(self.files)
        return entry

    @property
    def stem(self) -> str:
        """The default dataset name: a file's stem, a directory's name, "stdin", and "pipe" for
        a pipe named by its descriptor's number (bash's <(...): /dev/fd/63, whose "63" says nothing)."""
        if self.is_stdin:
            return "stdin"
        if names_descriptor(self.arg):
            return "pipe"
        path = Path(os.path.abspath(self.arg))  # normalized: '..' is named after the directory it is
        return path.name if self.kind == "directory" else path.stem


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
    say whether the pipe spelled out for it reads JSON lines (_refuse_not_utf8)."""
    name = PurePath(os.fspath(path).lower())
    return (name.suffix in COMPRESSED_SUFFIXES and not names_jsonl(name, compressed=True)
            and PurePath(name.stem).suffix != TEXT_SUFFIX)


def names_json(path: str | os.PathLike) -> bool:
    """Whether a file's name, any case, ends in .json: JSON, but not which (JSON lines or one
    document), so it is read as --stdin-format says, and refused when that says nothing."""
    return PurePath(os.fspath(path).lower()).suffix == JSON_SUFFIX


def is_stream(arg: str) -> bool:
    """Whether an input is read as --stdin-format says: '-', or a named one that is neither a
    directory nor a regular file (a pipe: bash's <(zcat x.jsonl.gz) is /dev/fd/63; a FIFO)."""
    return arg == STDIN or (os.path.exists(arg) and not os.path.isdir(arg) and not os.path.isfile(arg))


def names_descriptor(arg: str) -> bool:
    """Whether an input is a pipe named by its descriptor's number (bash's <(...): /dev/fd/63),
    a name that says nothing of it and means nothing in another command."""
    path = Path(os.path.abspath(arg))  # normalized: '..' is named after the directory it is
    return path.name.isdigit() and path.parent.name == "fd" and is_stream(arg)


def _file_size(path: Path) -> int | None:
    """A file's size, or None where it is unknown up front: pipes and devices, and a file whose
    size says 0 but which reads as text (/proc's and /sys's files), refused as empty before."""
    if not path.is_file():
        return None
    size = path.stat().st_size
    if size == 0:
        try:
            with open(path, "rb") as f:
                return None if f.read(1) else 0
        except OSError:  # unreadable: the read proper says why
            return 0
    return size


def _unreadable(error: OSError) -> None:
    # os.walk skips a directory it cannot list unless told otherwise: its files would be
    # missing from the dataset without a word.
    raise CorpusError(f"{error.filename}: cannot read ({error.strerror})")


def _jsonl_hint(paths: Sequence[Path]) -> str:
    """Directories are read for *.txt only: how to read the JSON lines files (.jsonl, .ndjson)
    or JSON files (.json) among `paths`."""
    suffix = next((p.suffix.lower() for p in paths if p.suffix.lower() in (*JSONL_SUFFIXES, JSON_SUFFIX)), None)
    said = ", with --stdin-format saying how" if suffix == JSON_SUFFIX else ""
    return f" (a {suffix} file is read when given by name, e.g. dir/*{suffix}{said})" if suffix else ""


def _text_files(directory: Path) -> tuple[list[Path], list[Path]]:
    """The *.txt files under `directory` (any case of the suffix), in sorted order, and the
    other entries found there, which are left out. Hidden ones (a name starting with ".") are
    left out whole, unread: a Jupyter .ipynb_checkpoints/ holds a copy of each file edited there,
    macOS writes a binary ._name.txt beside each file on some disks, and .git/ is no corpus."""
    found, left_out = [], []
    # Linked directories are followed (else their files would be missing without a word); the
    # directories on the way down to each one, by device and inode, tell a link loop.
    # A link to a directory above the one given (corpus/up -> /) is a loop said at once, not
    # after walking everything under its target first.
    above = {os.fspath(directory): frozenset([file_identity(directory)])}
    real = os.path.realpath(directory)
    for root, dirs, files in os.walk(directory, onerror=_unreadable, followlinks=True):
        dirs.sort()
        chain = above.pop(root, frozenset())
        left_out.extend(Path(root) / name for name in dirs if name.startswith("."))
        dirs[:] = [name for name in dirs if not name.startswith(".")]  # not walked into
        for name in dirs:
            sub = os.path.join(root, name)
            try:
                identity = file_identity(sub)
            except OSError:  # gone meanwhile, or unreadable: os.walk's onerror says so
                continue
            linked = os.path.realpath(sub) if os.path.islink(sub) else None
            if identity in chain or (linked is not None and
                                     (real == linked or real.startswith(linked.rstrip(os.sep) + os.sep))):
                raise CorpusError(f"{sub}: a symbolic link loop (it leads back to {Path(sub).resolve()})")
            above[sub] = chain | {identity}
        for path in (Path(root) / f for f in files):
            if path.name.startswith(".") or not path.name.lower().endswith(TEXT_SUFFIX):
                left_out.append(path)
            elif path.is_symlink() and not path.exists():  # else its text would be missing without a word
                raise CorpusError(f"{path}: a broken symbolic link (to {os.readlink(path)})")
            else:
                (found if path.is_file() else left_out).append(path)  # a pipe or device: no text file
    order = lambda p: p.relative_to(directory).as_posix()  # noqa: E731
    return sorted(found, key=order), sorted(left_out, key=order)


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


def _not_utf8(head: bytes, label: str, jsonl: bool = False, member: bool = False) -> CorpusError | None:
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


def _first_bytes_error(block: bytes, read: Callable[[int], bytes], label: str, json_field: str | None,
                       member: bool = False) -> CorpusError | None:
    """_not_utf8's error for the input that `block` starts (`read` reads on). `json_field`: a
    compressed one whose first lines, decompressed, are JSON objects (_opens_json) gets the pipe
    that reads JSON lines: read as text by default, they are refused next."""
    error = _not_utf8(block[:10], label, member=member)
    if (isinstance(error, CompressedError) and json_field is not None
            and _opens_json(block, read, error.kind, label, json_field)):
        error = _not_utf8(block[:10], label, jsonl=True, member=member)
    return error


def not_utf8_error(path: Path, field: str) -> CorpusError | None:
    """_not_utf8's error for a file named as input, None for one whose first bytes may be text
    (and for a pipe or a device: _read_text checks those as it reads them). A compressed file
    named for no format (x.gz: names_no_format) whose first lines, decompressed, are JSON objects
    gets the pipe that reads them as such (_opens_json): read as text by default, they are
    refused there next."""
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return _first_bytes_error(f.read(1 << 16), f.read, str(path), field if names_no_format(path) else None)


def _refuse_not_utf8(path: Path, field: str) -> None:
    """not_utf8_error's error raised, before any work."""
    if (error := not_utf8_error(path, field)) is not None:
        raise error


def _stdin_identity(stdin: BinaryIO | None) -> tuple[int, int] | None:
    """(device, inode) of what stdin reads, or None when it is no file (a test's BytesIO)."""
    try:
        st = os.fstat((stdin or sys.stdin).fileno())
    except (AttributeError, OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _refuse_duplicates(sources: Sequence[Source], stdin: BinaryIO | None) -> None:
    """A CorpusError naming both spellings when two inputs are one file: the same path spelled
    twice, a symbolic or hard link to it, a file also inside a directory given, or the file
    piped into '-'. Its text would be tokenized twice, and so trained on twice per epoch."""
    seen: dict[tuple[int, int], str] = {}
    for source in sources:
        if source.is_stdin:
            spellings = [("'-' (stdin)", _stdin_identity(stdin))]
        else:
            spellings = []
            for path in source.files:
                try:
                    identity = file_identity(path)
                except OSError:  # gone meanwhile: reading it says so
                    continue
                spelling = f"{path} (in {source.arg})" if source.kind == "directory" else source.arg
                spellings.append((spelling, identity))
        for spelling, identity in spellings:
            if identity is None:
                continue
            if identity in seen:
                raise CorpusError(f"{seen[identity]} and {spelling} are the same file; give each file once "
                                  f"(else its text is tokenized twice)")
            seen[identity] = spelling


def as_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The inputs as a list of strings: one path may be given as it is (a string is one input,
    never a sequence of one-letter ones; an absolute path's first would be "/")."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    return [os.fspath(arg) for arg in inputs]


def resolve_sources(inputs: str | os.PathLike | Sequence[str | os.PathLike],
                    stdin: BinaryIO | None = None, stdin_format: str | None = None,
                    field: str = "text") -> list[Source]:
    """Check every input exists, expand directories, and refuse a file given twice; raises
    CorpusError before any work. `stdin` is what '-' reads (default sys.stdin), as one text
    document or, with `stdin_format` "jsonl", as JSON lines (a decompressor's output, say); so
    is a pipe given by name, unless its name says JSON lines (x.jsonl), and so is a file named
    *.json. `stdin_format` None is "text", but stdin or a pipe whose first lines are JSON objects
    is refused as it is read, and a *.json file is refused here (saying how to read it: as JSON
    lines, with `field` or another key, or as text)."""
    if stdin_format is not None and stdin_format not in STDIN_KINDS:
        raise ValueError(f"stdin_format must be one of {tuple(STDIN_KINDS)}, got {stdin_format!r}")
    said = stdin_format is not None
    stdin_format = stdin_format or "text"
    inputs = as_inputs(inputs)
    if not inputs:
        raise CorpusError("no input given (files, directories, .jsonl files or - for stdin)")
    if list(inputs).count(STDIN) > 1:
        raise CorpusError("'-' (stdin) can be given only once")
    sources = []
    # each named file's bytes are judged (compressed, UTF-16, JSON) once no file is found given
    # twice: the pipes a compressed one's error offers for each are no files to tell apart
    first_bytes: list[tuple[str, Path, bool]] = []  # (arg, path, a *.json file nothing said how to read)
    for arg in inputs:
        if arg == STDIN:
            if sys.stdin is None:  # started with stdin closed (`<&-`)
                raise CorpusError("'-': stdin is closed; give files, or pipe the text in")
            sources.append(Source(arg, STDIN_KINDS[stdin_format], (), None, format_said=said))
            continue
        path = Path(arg)
        if not path.exists():
            if path.is_symlink():  # as a directory's broken link is named
                raise CorpusError(f"{arg}: a broken symbolic link (to {os.readlink(path)})")
            raise CorpusError(f"{arg}: no such file or directory")
        try:
            if path.is_dir():
                files, left_out = _text_files(path)
                if not files:
                    n = len(left_out)
                    held = f", only {n:,} other entr{'y' if n == 1 else 'ies'}, e.g. {left_out[0].name}" if n else ""
                    hidden = " (hidden ones are not read)" if any(p.name.startswith(".") for p in left_out) else ""
                    raise CorpusError(f"{arg}: directory has no .txt files{hidden}{held}{_jsonl_hint(left_out)}")
                sizes = [_file_size(f) for f in files]
                total = None if None in sizes else sum(sizes)
                sources.append(Source(arg, "directory", tuple(files), total, tuple(left_out)))
            else:
                stream = not path.is_file() and not names_jsonl(path)  # a pipe: no name says what it holds
                json_file = path.is_file() and names_json(path)  # a name that does not say which JSON
                first_bytes.append((arg, path, json_file and not said))
                kind = "jsonl" if names_jsonl(path) or ((stream or json_file) and stdin_format == "jsonl") else "text"
                sources.append(Source(arg, kind, (path,), _file_size(path), format_said=said or not stream))
        except PermissionError as e:
            raise CorpusError(f"{arg}: cannot read ({e.strerror})") from None
    _refuse_duplicates(sources, stdin)
    for arg, path, json_unsaid in first_bytes:
        try:
            _refuse_not_utf8(path, field)
            if json_unsaid:
                _refuse_json(path, field)
        except PermissionError as e:
            raise CorpusError(f"{arg}: cannot read ({e.strerror})") from None
    return sources


@dataclass(frozen=True)
class Piece:
    """A run of decoded text; `new_document` marks the first piece of each document.

    `nbytes` is the input consumed for it (for the progress bar and the byte totals).
    """

    text: str
    new_document: bool
    nbytes: int


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


def _refuse_json(path: Path, field: str) -> None:
    """The error for a file named *.json read with no --stdin-format, before any work: the JSON
    it holds, JSON lines (as datasets' to_json writes them) or not, and the flag that reads it.
    Its first line is read whole (up to FIRST_LINE_MAX: a record may be a book), then a block."""
    with open(path, "rb") as f:
        head = f.readline(FIRST_LINE_MAX)
        head += f.read(BLOCK_BYTES)
        whole = not f.read(1)
    error = _json_lines_error(head, str(path), field, whole, what="named .json, and")
    if error is None:  # one JSON document, most likely (pretty-printed, an array of records)
        jq = f"{decompressed_input(str(path), JQ_LINES)} > {shlex.quote(str(path.with_suffix('.jsonl')))}"
        error = CorpusError(f"{path}: named .json, but not JSON lines (one JSON object a line), the only JSON read "
                            f"here; make it JSON lines first (for an array of objects: {jq}), or pass "
                            f"--stdin-format text to tokenize the JSON as it is")
    raise error


def _judge_json(block: bytes, read: Callable[[int], bytes], block_bytes: int, label: str,
                field: str) -> tuple[bytes, CorpusError | None]:
    """A stream's first block read on until it can be judged (with the bytes read for it), and
    the error for JSON read as text by default: JSON lines (_json_lines_error) or a JSON array of
    objects (_json_array_error); None for text."""
    # a complete first line: a pipe may hand it over in parts, and where the stream opens as a
    # JSON object that line may be a book, longer than a block (a .json file's is read as far,
    # _refuse_json), so read on to FIRST_LINE_MAX. The first line that holds more than JSON's
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


def _read_text(stream: BinaryIO, label: str, errors: str, block_bytes: int,
               json_field: str | None = None, member: bool = False) -> Iterator[Piece]:
    """The stream's bytes as one document. `json_field`: a stream read as text by default, refused
    if it opens as JSON (_judge_json). `member`: a directory's file."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    read = getattr(stream, "read1", stream.read)  # read1: what a pipe has now, not a full block
    offset, first, at_start = 0, True, True
    while True:
        block = read(block_bytes)
        if first:  # stdin, a directory's files: compressed or UTF-16 bytes are refused here
            while 0 < len(block) < 10 and (more := read(10 - len(block))):  # a pipe's first read may be short
                block += more
            error = _first_bytes_error(block, read, label, json_field, member)
            if error is None and json_field is not None:
                block, error = _judge_json(block, read, block_bytes, label, json_field)
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


JSON_WHITESPACE = " \t\r\n"  # RFC 8259's; str.strip() would take any Unicode space
_FIRST_TOKEN = re.compile(rb"[^ \t\r\n]")  # a byte past JSON's whitespace (searched in place: no copy)


def _read_jsonl(stream: BinaryIO, label: str, field: str, errors: str) -> Iterator[Piece]:
    """Each line's `field` as one document; `label` names the stream in errors (path:line)."""
    offset = 0
    for line_no, raw in enumerate(stream, start=1):
        where = f"{label}:{line_no}"
        if line_no == 1 and (error := _not_utf8(raw[:10], label, jsonl=True)) is not None:  # stdin's: unchecked so far
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
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            # (the C scanner's "Invalid control character at" ends where its position went)
            raise CorpusError(f"{where}: not valid JSON ({e.msg.removesuffix(' at')}, column {e.colno})") from None
        except (ValueError, RecursionError) as e:  # an integer of > 4,300 digits; nested too deeply
            why = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(":")[0]
            raise CorpusError(f"{where}: not valid JSON ({why})") from None
        if not isinstance(record, dict):
            raise CorpusError(f"{where}: expected a JSON object, got {_JSON_TYPES[type(record)]}")
        if field not in record:
            keys = ", ".join(map(repr, list(record)[:5])) or "none"
            raise CorpusError(f"{where}: no {field!r} field (keys: {keys}; choose one with --field)")
        text = record[field]
        if not isinstance(text, str):
            kind = _JSON_TYPES.get(type(text), type(text).__name__)
            raise CorpusError(f"{where}: field {field!r} is {kind}, not a string")
        yield Piece(text, True, len(raw))


def read_pieces(sources: Sequence[Source], *, field: str = "text", errors: str = "strict",
                block_bytes: int = BLOCK_BYTES, stdin: BinaryIO | None = None,
                bytes_read: list[int] | None = None) -> Iterator[Piece]:
    """Every document of every source, in order, as a stream of pieces (flat memory).

    `errors` is "strict" (invalid UTF-8 raises CorpusError naming file and byte offset) or
    "replace" (U+FFFD). `stdin` is the binary stream read for "-" (default sys.stdin).
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
