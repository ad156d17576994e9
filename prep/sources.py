"""Input arguments resolved to sources before any work: what each one is, the files it stands
for and their size.

One text file is one document, one JSONL line is one document (its `--field`), and stdin is one
document (or JSON lines, with --stdin-format jsonl; so is a pipe given by name, <(zcat x.jsonl.gz),
which has no name to say it; read as text because nothing said otherwise, either is refused
when its first lines are JSON objects). A file named *.json is read as --stdin-format says too,
and refused when it says nothing (prep.sniff_json). Directories are searched recursively for
`*.txt` (`.TXT` too; linked directories too, a link loop being an error; hidden entries below
it, such as .ipynb_checkpoints/ or macOS's ._x.txt, are not read; what is left out is named in a
note), in sorted order, so the same tree always gives the same token stream. One file reached
twice (named twice, through a link, inside a directory also given) is an error: its text would
be trained on twice. A named file whose first bytes say it is no UTF-8 text is refused here too
(prep.sniff).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from prep.atomic import file_identity
from prep.sniff import JSON_SUFFIX, JSONL_SUFFIXES, TEXT_SUFFIX, CorpusError, names_json, names_jsonl
from prep.sniff_json import refuse_json, refuse_not_utf8

STDIN = "-"
STDIN_KINDS = {"text": "stdin", "jsonl": "stdin-jsonl"}  # --stdin-format -> Source.kind


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
                raise CorpusError("<stdin>: closed; give files, or pipe the text in")
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
            refuse_not_utf8(path, field)
            if json_unsaid:
                refuse_json(path, field)
        except PermissionError as e:
            raise CorpusError(f"{arg}: cannot read ({e.strerror})") from None
    return sources
