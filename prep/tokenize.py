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

import errno
import json
import math
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import click

from prep.atomic import HANGUP, sigterm_raises
from prep.chunking import batches, document_chunks
from prep.corpus import COMPRESSED_SUFFIXES, ERRORS, STDIN, STDIN_KINDS, CompressedError, CorpusError, Piece, \
    as_inputs, decompressed_input, is_stream, names_descriptor, names_json, names_jsonl, names_no_format, \
    not_utf8_error, read_pieces, resolve_sources
from prep.errors import (NAME_MAX, GivenPath, UserCommand, UserError, after_the_work, bar_disable, flush_stdout,
                         plain_numbers, say)
from prep.meta import write_meta
from prep.output import AtomicDirectory, OutputError, SplitWriter, TailSplitter, build_meta, check_target
from prep.progress import Bar
from prep.shards import MAX_TOKENS, parse_shard_name, shard_name
from prep.tokenizer import TokenizerError, ensure_available
from prep.workers import EncoderPool, WorkerError, encode_stream

DEFAULT_SHARD_SIZE = 100_000_000  # llm.c's fineweb shards hold 100M tokens
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_VAL_MAX_TOKENS = 10_000_000  # llm.c-sized val; held back in a 20 MB file until the end
DEFAULT_CHUNK_CHARS = 1 << 20  # ~50 ms of encoding: cheap to send, fine-grained enough to balance
MIN_AUTO_CHUNK_CHARS = 1 << 16  # chunks shrink to this for small inputs, not below
SPILL_NAME = "val-tail.spill"  # in the temporary dir only: removed before the rename
OUTPUT_SETTINGS = ("shard_size", "val_fraction", "val_max_tokens", "field", "errors")  # -> meta.json
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
        raise CorpusError(f"{', '.join(inputs)}: empty input, nothing to tokenize")
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
                raise CorpusError(f"{', '.join(inputs)}: {why}")
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


def _decompressing(error: CompressedError, ctx: click.Context, inputs: Sequence[str]) -> str:
    """This command line with the compressed input of `error` decompressed on its way in, to
    paste and run: the same inputs in the same order, the same options, the same output. A named
    file becomes '-' behind a pipe (or <(zcat x.gz) where '-' is taken), with --stdin-format jsonl
    for JSON lines and --out where its name gave the default one; stdin gets the decompressor in
    front, a pipe given by name one inside; every other compressed file named, <(zcat y.gz) in
    its place; a pipe named by its descriptor (/dev/fd/63, no name in another shell), <(...) to
    fill in. The message, with the line or, where none reads every input as this one would
    (stdin, a pipe or a *.json file beside it read in the other format, or compressed files of
    both formats), why not."""
    if error.label == "<stdin>":
        index = inputs.index(STDIN)
    else:
        index = next((k for k, arg in enumerate(inputs) if arg != STDIN and str(Path(arg)) == error.label), None)
        if index is None:  # (every input is named as given)
            return str(error)
    values = {param.name: ctx.params[param.name] for param in ctx.command.params
              if ctx.get_parameter_source(param.name) != click.core.ParameterSource.DEFAULT}
    args, words, before = list(inputs), [shlex.quote(arg) for arg in inputs], ""
    fmt = "jsonl" if error.jsonl else "text"
    # the other compressed files named (a.jsonl.gz b.jsonl.gz ...): each decompressed on its way
    # in as well, <(zcat b.jsonl.gz) in its place (pasted, a line for the first alone was refused
    # for the next, and so on); streamed in, all are read as --stdin-format says, so alike
    more: dict[int, CompressedError] = {}
    for k, arg in enumerate(inputs):
        if k != index and arg != STDIN:
            try:
                found = not_utf8_error(Path(arg), ctx.params["field"])
            except OSError:  # unreadable: said when it is read
                continue
            if isinstance(found, CompressedError):
                more[k] = found
    mixed = next((e for e in more.values() if e.jsonl != error.jsonl), None)
    if mixed is not None:
        lines, text = (error, mixed) if error.jsonl else (mixed, error)
        return (f"{error.label} and {mixed.label}: compressed; decompress them first (streamed in, "
                f"both would be read as --stdin-format says, but {lines.label} holds JSON lines and {text.label} "
                f"text)")
    # decompressed, it is read as --stdin-format says, as '-' is: stdin, pipes, *.json files
    other = next((arg for k, arg in enumerate(inputs)
                  if k != index and (is_stream(arg) or (os.path.isfile(arg) and names_json(arg)))), None)
    if other is not None and ctx.params["stdin_format"] != fmt:
        other = "- (stdin)" if other == STDIN else other
        default = "" if "stdin_format" in values else ", the default"  # (values: the options given)
        return (f"{error.label}: {error.kind}-compressed; decompress it first (streamed in, it would be read "
                f"as {other} is, --stdin-format {ctx.params['stdin_format']}{default}, but it holds "
                f"{'JSON lines' if error.jsonl else 'text'})")
    if error.jsonl:
        values["stdin_format"] = "jsonl"
    if error.label == "<stdin>":
        before = f"{error.cat} FILE | "
    elif error.stream:
        args[index] = words[index] = f"<({error.cat} FILE)"
    else:
        if index == 0 and "out" not in values:  # its name gave the default; '-' would give data/stdin
            named = Path(os.path.abspath(inputs[0]))  # input.txt.gz: data/input, as input.txt would give
            values["out"] = Path("data") / (Path(named.stem).stem if named.suffix.lower() in COMPRESSED_SUFFIXES
                                            else named.stem)
        piped = decompressed_input(error.label, error.cat)
        if STDIN in inputs:
            args[index] = words[index] = f"<({piped})"
        else:
            before, args[index], words[index] = f"{piped} | ", STDIN, STDIN
    for k, also in more.items():
        args[k] = words[k] = f"<({decompressed_input(also.label, also.cat)})"
    # a pipe named by its descriptor (bash's <(...): /dev/fd/63) means nothing in another command
    fed = [k for k, arg in enumerate(inputs) if k != index and names_descriptor(arg)]
    for k in fed:
        args[k] = words[k] = "<(...)"
    options = []
    for param in ctx.command.params:
        if isinstance(param, click.Option) and param.name in values:
            value = values[param.name]
            options += [param.opts[0]] if param.is_flag else [param.opts[0], shlex.quote(str(value))]
    if any(arg.startswith("-") and arg != STDIN for arg in args):  # else taken for options
        options.append("--")
    how = "decompress it on its way in (FILE: the compressed file)" if error.stream else \
        "decompress it first, or stream it in"
    if fed:
        how += f" (<(...): the command that gave {' and '.join(inputs[k] for k in fed)}, again)"
    return f"{error.label}: {error.kind}-compressed; {how}: " + " ".join([f"{before}prep tokenize", *options, *words])


@click.command("tokenize", cls=UserCommand, context_settings={"show_default": True})
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...", type=GivenPath())
@click.option("--out", type=GivenPath(path_type=Path, current_ok=False), default=None,
              help="Output directory.  [default: data/<stem of the first input>, data/stdin for -, "
                   "data/pipe for <(...)]")
@click.option("--name", default=None, help="Shard name prefix.  [default: the output directory's name]")
@click.option("--shard-size", type=click.IntRange(1, MAX_TOKENS), default=DEFAULT_SHARD_SIZE,
              help="Most tokens per shard file.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=DEFAULT_VAL_FRACTION,
              help="Fraction of tokens for the val split, taken from the end (0: train only).")
@click.option("--val-max-tokens", type=click.IntRange(min=0), default=DEFAULT_VAL_MAX_TOKENS,
              help="Cap on the val split's tokens.")
@click.option("--workers", type=click.IntRange(min=1), default=default_workers,
              help="Most encoder processes (a small input uses fewer).  [default: the CPUs available]", show_default=False)
@click.option("--field", default="text", help="JSONL key holding each document's text.")
@click.option("--errors", type=click.Choice(ERRORS), default="strict",
              help="Invalid UTF-8: fail naming the file and byte, or replace it with U+FFFD.")
@click.option("--stdin-format", type=click.Choice(tuple(STDIN_KINDS)), default="text",
              show_default="text, but JSON-looking stdin and *.json files are refused",
              help="What - (stdin), pipes given by name and *.json files hold: one text document, or JSON "
                   "lines (each line's --field), e.g. zstdcat x.jsonl.zst | prep tokenize --stdin-format jsonl -, "
                   "prep tokenize --stdin-format jsonl <(zcat x.jsonl.gz), prep tokenize --stdin-format jsonl "
                   "train.json (datasets' to_json). Unsaid, stdin or a pipe whose first lines are JSON objects, "
                   "or that opens as a JSON array of them, is refused, and any *.json file (say text to "
                   "tokenize the JSON).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing dataset (only once the new one is complete).")
@click.option("--quiet", is_flag=True, help="No progress bar (the summary line is still printed).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON line.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=DEFAULT_CHUNK_CHARS,
              help="Most characters per unit of work sent to a worker (never changes a token).")
def tokenize_command(inputs: tuple[str, ...], out: Path | None, name: str | None, shard_size: int,
                     val_fraction: float, val_max_tokens: int, workers: int, field: str, errors: str,
                     stdin_format: str, overwrite: bool, quiet: bool, as_json: bool, chunk_size: int) -> None:
    """Tokenize text files, directories (their *.txt, recursive), .jsonl or .ndjson files (.json
    ones with --stdin-format), pipes given by name, or - (stdin) into GPT-2 uint16 shards plus
    meta.json. One file or JSONL line is one document, each one preceded by EOT; the output
    appears only once it is complete.
    """
    if not field:
        raise UserError("--field must name a JSON key, got ''")
    json_files = [i for i in inputs if os.path.isfile(i) and names_json(i)]  # read as --stdin-format says
    if stdin_format != "text" and not any(map(is_stream, inputs)) and not json_files:
        raise UserError(f"--stdin-format {stdin_format}: no - (stdin), pipe or *.json file among the inputs; it says "
                        f"how those are read (other files' names say how they are read: *.jsonl, *.ndjson)")
    given = {param for param in ("field", "stdin_format")
             if click.get_current_context().get_parameter_source(param) != click.core.ParameterSource.DEFAULT}
    field_given = "field" in given
    # x.jsonl.gz counts: it is refused next, with the pipe that reads it as JSON lines spelled out
    # (and x.gz, whose pipe reads JSON lines where it holds them); so does x.json without
    # --stdin-format, refused next with the flag that reads it as JSON lines
    # (a named pipe called x.jsonl is read as JSON lines, by its name, as a file is; x.gz's name
    # says nothing: a regular file's first lines are judged before the work, a pipe's as it is read)
    jsonl_given = stdin_format == "jsonl" or any(
        i != STDIN and not os.path.isdir(i) and (names_jsonl(i, compressed=True) or os.path.isfile(i)
                                                  and names_no_format(i)) for i in inputs
    ) or bool(json_files and "stdin_format" not in given)
    if field_given and not jsonl_given:
        raise UserError(f"--field {field}: only JSON lines have fields, and none are given (files named *.jsonl "
                        f"or *.ndjson are; -, pipes and *.json files are read as plain text unless "
                        f"--stdin-format jsonl)")
    if math.isnan(val_fraction):  # click's FloatRange lets nan through (every comparison is False)
        raise UserError("--val-fraction must be a number in [0, 1), got nan")
    done: list[Path] = []  # the target, once the new dataset is in place
    try:
        # SIGTERM, and SIGHUP (the terminal hung up: an ssh session dropped), unwind as a Ctrl-C
        # does: the temporary directory of the new dataset removed, where their default left it
        with sigterm_raises(SystemExit, (signal.SIGTERM, *HANGUP), once=HANGUP):
            result = tokenize_corpus(inputs, out, name=name, shard_size=shard_size,
                                     val_fraction=val_fraction, val_max_tokens=val_max_tokens,
                                     workers=workers, field=field, errors=errors,
                                     stdin_format=stdin_format if "stdin_format" in given else None,
                                     overwrite=overwrite,
                                     progress=not quiet, chunk_chars=chunk_size, on_install=done.append)
            _write_summary(result, as_json)  # (a signal while it is written: the line below, not a death unsaid)
    except CompressedError as e:  # the whole command line, the input decompressed on its way in
        raise UserError(_decompressing(e, click.get_current_context(), inputs)) from None
    except (CorpusError, OutputError, TokenizerError) as e:
        raise UserError(str(e)) from None
    except WorkerError as e:  # no mistake of the user's (status 1), but no bug either: one line
        raise click.ClickException(f"{e}; nothing was written (the output directory is as it was)") from None
    except (KeyboardInterrupt, SystemExit) as e:  # Ctrl-C, or SIGTERM or SIGHUP through sigterm_raises
        status = 130 if isinstance(e, KeyboardInterrupt) else 128 + e.signum if hasattr(e, "signum") else e.code
        name = signal.Signals(status - 128).name if isinstance(status, int) and status > 128 else "interrupted"
        # also a signal after the install, on the way out (not raised through it: no attribute)
        installed = getattr(e, "installed", None) or (done[0] if done else None)
        where = (f"{installed} holds the new dataset, complete" if installed is not None else
                 "nothing was written (the output directory is as it was)")
        say(f"{name}: stopped; {where}")  # (dropped on a hung-up terminal's EIO: the status says it)
        sys.exit(status)
    after_the_work(lambda signum: say(f"{signal.Signals(signum).name}: stopped; {done[0]} holds the new dataset, "
                                      f"complete"))


def _write_summary(result: TokenizeResult, as_json: bool) -> None:
    """The closing line (or JSON) on standard output, or a UserError where it cannot be written.
    Its reader gone (`| head`) is no mistake: raised on, marked as standard output's, to end the
    command quietly with 141 as every command does (prep.errors)."""
    try:
        click.echo(json.dumps(result.to_json()) if as_json else result.summary())
        flush_stdout()
    except OSError as e:  # > /dev/full, a full disk: the one thing not done is the summary
        if e.errno == errno.EPIPE:
            e.stdout = True
            raise
        sys.stdout = open(os.devnull, "w")  # else the interpreter's last flush fails again
        raise UserError(f"{result.out_dir} is complete, but its summary cannot be written to standard output "
                        f"({e.strerror})") from None
