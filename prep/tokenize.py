"""`prep tokenize`: corpus -> GPT-2 uint16 token shards + meta.json; parallel, streaming, atomic.

Pipeline. The main process reads documents in blocks (prep.corpus), cuts each one at safe
boundaries into chunks of about `chunk_chars` (prep.chunking: the cut never changes a
token), packs small documents together into batches, and hands batches to `workers`
processes, each with its own encoder (prep.workers). At most 2 batches per worker are in
flight and results come back in order, as uint16 bytes, and stream into shards of at most
`shard_size` tokens. Each document is EOT followed by exactly `encode_ordinary(document)`;
empty documents are skipped. Memory stays flat: a few batches plus the validation tail.

Validation split (deterministic, exact, streaming). With T tokens in all, the val split
holds v = min(val_max_tokens, floor(val_fraction * T)) tokens from the end of the stream;
tiny Shakespeare: T = 338,026 -> train 304,224 + val 33,802. T is known only at the end, so
the last `val_max_tokens` tokens are held back in a ring file on disk (2 bytes a token, 20 MB
by default; memory stays flat) and everything older goes to train shards at once. The cut
then moves forward to the first document start (EOT) after it if val keeps at least half of
v that way: with many documents val is the last whole documents, with one (or a few long)
ones it is the exact tail of the tokens. The rule is stored in meta.json's settings; v == 0
(`val_fraction=0`, or a corpus too small) means no val shard at all.

Atomic output. Shards and meta.json (last) are built in `.<dir>.tmp-<pid>` beside the target,
which is renamed into place only when complete; on failure it is removed, and after a
SIGKILL it stays under that name, holding UNFINISHED (prep.meta.UNFINISHED_NAME) until the
install, which makes every reader refuse it (a later run into the same target removes it).
An existing target needs `overwrite`: the old one is renamed aside, the new one renamed in,
then the old one deleted. The working directory, or one above it, is never a target: the
shell that ran us would be left in a deleted directory.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from prep.chunking import batches, document_chunks
from prep.corpus import ERRORS, Piece, read_pieces
from prep.errors import NAME_MAX, plain_numbers
from prep.install import AtomicDirectory, check_target
from prep.meta import SETTING_FLAGS, write_meta
from prep.output import OutputError, SplitWriter, TailSplitter, build_meta
from prep.progress import Bar
from prep.shards import MAX_TOKENS, parse_shard_name, shard_name
from prep.sniff import CorpusError
from prep.sources import STDIN, STDIN_KINDS, as_inputs, resolve_sources
from prep.streams import bar_disable, say
from prep.tokenizer import ensure_available
from prep.workers import EncoderPool, encode_stream

DEFAULT_SHARD_SIZE = 100_000_000  # llm.c's fineweb shards hold 100M tokens
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_VAL_MAX_TOKENS = 10_000_000  # llm.c-sized val; held back in a 20 MB file until the end
DEFAULT_CHUNK_CHARS = 1 << 20  # ~50 ms of encoding: cheap to send, fine-grained enough to balance
MIN_AUTO_CHUNK_CHARS = 1 << 16  # chunks shrink to this for small inputs, not below
SPILL_NAME = "val-tail.spill"  # in the temporary dir only: removed before the rename
OUTPUT_SETTINGS = tuple(SETTING_FLAGS)  # -> meta.json
VAL_RULE = ("val = last min(val_max_tokens, floor(val_fraction * tokens)) tokens, cut moved forward "
            "to the first document start inside them when that keeps at least half")


def default_workers() -> int:
    """The CPUs this process may run on (the affinity mask, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class TokenizeConfig:
    """Everything that decides the output (and how fast it is made), validated up front."""

    shard_size: int = DEFAULT_SHARD_SIZE
    val_fraction: float = DEFAULT_VAL_FRACTION
    val_max_tokens: int = DEFAULT_VAL_MAX_TOKENS
    workers: int = field(default_factory=default_workers)
    field: str = "text"  # the JSONL key holding the document
    errors: str = "strict"  # invalid UTF-8: "strict" fails, "replace" substitutes U+FFFD
    stdin_format: str = "text"  # what '-' and pipes hold: one text document, or "jsonl" (JSON lines)
    chunk_chars: int = DEFAULT_CHUNK_CHARS
    start_method: str | None = None  # multiprocessing start method; None: the platform's

    def __post_init__(self):
        plain_numbers(self)
        if not 1 <= self.shard_size <= MAX_TOKENS:
            raise ValueError(f"shard_size must be in 1..{MAX_TOKENS}, got {self.shard_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_max_tokens < 0:
            raise ValueError(f"val_max_tokens must be >= 0, got {self.val_max_tokens}")
        if self.workers < 1 or self.chunk_chars < 1:
            raise ValueError(f"workers and chunk_chars must be >= 1, got {self.workers}, {self.chunk_chars}")
        if not self.field:
            raise ValueError("field must be a non-empty JSON key")
        if self.errors not in ERRORS:
            raise ValueError(f"errors must be one of {ERRORS}, got {self.errors!r}")
        if self.stdin_format not in STDIN_KINDS:
            raise ValueError(f"stdin_format must be one of {tuple(STDIN_KINDS)}, got {self.stdin_format!r}")


@dataclass
class TokenizeResult:
    """What a run produced and how fast: the summary line, --json, and the benchmark use it."""

    out_dir: Path
    name: str
    documents: int
    tokens: dict[str, int]  # per split
    shards: dict[str, list[str]]  # per split, file names in order
    bytes: int
    chars: int
    seconds: float
    workers: int
    empty_skipped: int = 0  # documents with no text: no EOT, no tokens

    @property
    def chars_per_token(self) -> float:
        return self.chars / max(1, sum(self.tokens.values()) - self.documents)  # EOTs are no text

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / max(self.seconds, 1e-9)

    def to_json(self) -> dict:
        return asdict(self) | {"out_dir": str(self.out_dir), "mb_per_s": round(self.mb_per_s, 3),
                               "chars_per_token": round(self.chars_per_token, 4)}

    def summary(self) -> str:
        t, s = self.tokens, self.shards
        skipped = f" ({self.empty_skipped:,} empty one(s) skipped)" if self.empty_skipped else ""
        return (f"tokenized {self.documents:,} document(s){skipped}, {self.bytes / 1e6:,.1f} MB in "
                f"{self.seconds:.1f} s ({self.mb_per_s:.1f} MB/s, {self.workers} worker(s)): "
                f"train {t['train']:,} + val {t['val']:,} tokens in {len(s['train']):,} + {len(s['val']):,} "
                f"shard(s), {self.chars_per_token:.2f} chars/token -> {self.out_dir}")


def _labels(inputs: Sequence[str]) -> str:
    """The inputs as a message names them: stdin as <stdin>, as every other message about it does."""
    return ", ".join("<stdin>" if arg == STDIN else arg for arg in inputs)


def tokenize_corpus(inputs: str | os.PathLike | Sequence[str | os.PathLike],
                    out_dir: str | os.PathLike | None = None, *,
                    name: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE,
                    val_fraction: float = DEFAULT_VAL_FRACTION, val_max_tokens: int = DEFAULT_VAL_MAX_TOKENS,
                    workers: int | None = None,
                    field: str = "text", errors: str = "strict", stdin_format: str | None = None,
                    overwrite: bool = False,
                    progress: bool = True, chunk_chars: int = DEFAULT_CHUNK_CHARS,
                    start_method: str | None = None, stdin: BinaryIO | None = None,
                    on_install: Callable[[Path], object] | None = None) -> TokenizeResult:
    """Tokenize `inputs` into a dataset directory (default data/<stem of the first input>).

    The plain function behind `prep tokenize` (and the benchmark). Raises CorpusError for bad
    input, OutputError for an output it cannot or must not write, and TokenizerError when the
    GPT-2 files cannot be had; in every case nothing is left at the target (nor a temporary
    directory). `progress` shows a tqdm bar on a tty. `on_install(target)` is called the moment
    the new dataset is in place (a Ctrl-C after it stops a run whose work is done). One path
    may be given as it is: a string is one input, never a sequence of one-letter ones. '-'
    reads `stdin` (default sys.stdin) as one document, or as JSON lines with stdin_format="jsonl",
    and so is a pipe given by name (<(zcat x.jsonl.gz)) or a file named *.json; stdin_format None
    reads stdin and pipes as text, but refuses one whose first lines are JSON objects (JSON lines;
    say "text" to read it as text), and refuses a *.json file (its name says JSON, not which).
    """
    inputs = as_inputs(inputs)
    config = TokenizeConfig(shard_size, val_fraction, val_max_tokens,
                            default_workers() if workers is None else workers,
                            field, errors, stdin_format or "text", chunk_chars, start_method)
    sources = resolve_sources(inputs, stdin, stdin_format, config.field)
    sizes = [s.bytes for s in sources]
    total_bytes = None if None in sizes else sum(sizes)
    if total_bytes == 0:
        raise CorpusError(f"{_labels(inputs)}: empty input, nothing to tokenize")
    target = Path(out_dir) if out_dir is not None else Path("data") / (sources[0].stem or "dataset")
    if ".." in target.parts:
        # `new/sub/..` is new/ once new/sub exists, and the install makes the target's parent,
        # new/sub: the target would then hold it, and be refused as no dataset's at the end of
        # the work; and its name, "..", would name the shards. Where it leads, resolved (links
        # too), and relative again where it was given so (`../data/x` stays as it is); checked
        # first as given, so that `new/..`, the directory the user is in, is refused so named.
        # The last name stays as given unless it is '..' itself: a link there is the target
        # (AtomicDirectory replaces what it points to), and names the shards.
        check_target(target, overwrite)
        resolved = (os.path.realpath(target) if target.name == ".." else
                    os.path.join(os.path.realpath(target.parent), target.name))
        target = Path(resolved if target.is_absolute() else os.path.relpath(resolved))
    given = name is not None
    name = name if given else target.absolute().name
    where = "--name" if given else f"--out {str(target)!r} gives the shard name"
    # the shard names must read back as this dataset's (a newline, say, would not)
    if not name or "/" in name or os.sep in name or parse_shard_name(shard_name(name, "train", 0)) is None:
        raise OutputError(f"{where} {name!r}: not a usable shard name (non-empty, no path separator or "
                          f"line break)" + ("" if given else "; pass --name"))
    # one file name holds NAME_MAX bytes: found out here, not as "File name too long" at the
    # first shard, naming a temporary path
    shard_bytes = len(os.fsencode(shard_name(name, "train", 0)))
    if shard_bytes > NAME_MAX:
        raise OutputError(f"{where} {name[:40]!r}... is too long: its shards' file names would be {shard_bytes} "
                          f"bytes, over {NAME_MAX}" + ("" if given else "; pass --name"))
    output = AtomicDirectory(target, overwrite, on_install)  # (nothing made until it is entered)
    aside_bytes = len(os.fsencode(output.tmp.name))
    if aside_bytes > NAME_MAX:
        raise OutputError(f"--out {str(target)!r}: its name is too long for the temporary directory written "
                          f"beside it ({aside_bytes} bytes, over {NAME_MAX}); pass a shorter --out")
    check_target(target, overwrite)
    for note in filter(None, (source.note() for source in sources)):  # before the work: Ctrl-C is cheap
        say(f"note: {note}")  # stderr closed or full: nowhere (not into stdout's JSON), the work goes on
    ensure_available()  # a missing tokenizer is a TokenizerError here, not in a worker
    workers, chunk_chars = config.workers, config.chunk_chars
    if total_bytes is not None:  # small inputs: smaller chunks, ~4 per worker, and no idle workers
        chunk_chars = min(chunk_chars, max(MIN_AUTO_CHUNK_CHARS, math.ceil(total_bytes / (4 * workers))))
        workers = min(workers, max(1, math.ceil(total_bytes / chunk_chars)))
    start, chars, nbytes = time.perf_counter(), 0, 0
    documents_read = 0

    def counted(pieces: Iterable[Piece]) -> Iterator[Piece]:  # every document, empty ones too
        nonlocal documents_read
        for piece in pieces:
            documents_read += piece.new_document
            yield piece

    with output as tmp:
        train = SplitWriter(tmp, name, "train", config.shard_size)
        val = SplitWriter(tmp, name, "val", config.shard_size)
        held_back = config.val_max_tokens if config.val_fraction > 0 else 0
        splitter = TailSplitter(train, held_back, tmp / SPILL_NAME)
        try:
            bytes_read: list[int] = []  # per source: stdin's and a pipe's size is known once read
            pieces = counted(read_pieces(sources, field=config.field, errors=config.errors, stdin=stdin,
                                         bytes_read=bytes_read))
            work = batches(document_chunks(pieces, chunk_chars), chunk_chars)
            # The pool forks before any thread of ours starts (Bar: tqdm starts none).
            with (EncoderPool(workers, config.start_method) if workers > 1 else nullcontext()) as pool, \
                    Bar(total=total_bytes, unit="B", unit_scale=True, desc="tokenize",
                         disable=bar_disable(None if progress else True), file=sys.stderr) as bar:
                for tokens, batch_chars, batch_bytes in encode_stream(work, pool):
                    splitter.push(tokens)
                    chars, nbytes = chars + batch_chars, nbytes + batch_bytes
                    bar.update(batch_bytes)
            if splitter.total == 0:  # (an empty pipe's size is known only now)
                why = "empty input, nothing to tokenize" if nbytes == 0 else "no text to tokenize (every document is empty)"
                raise CorpusError(f"{_labels(inputs)}: {why}")
            splitter.finish(config.val_fraction, val)
            train.close(), val.close()
            settings = {key: getattr(config, key) for key in OUTPUT_SETTINGS} | {"val_rule": VAL_RULE}
            write_meta(tmp, build_meta(name, sources, (train, val), settings, nbytes, chars, bytes_read))
        except BaseException as e:
            train.abort(), val.abort(), splitter.close()
            if isinstance(e, OSError):  # disk full, I/O error: the user's to fix, not a bug
                raise OutputError(f"{e.filename or target}: {e.strerror or e}") from None
            raise
    splits = {"train": train, "val": val}
    return TokenizeResult(target, name, train.documents + val.documents,
                          {split: w.tokens for split, w in splits.items()},
                          {split: [e["file"] for e in w.entries] for split, w in splits.items()},
                          nbytes, chars, time.perf_counter() - start, workers,
                          documents_read - train.documents - val.documents)
