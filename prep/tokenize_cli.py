"""The `prep tokenize` command: its options, checks of the command line, the closing line
(or JSON), and the one-line stops (a signal, a mistake, a compressed input, answered with the
command line that decompresses it on its way in) around prep.tokenize.tokenize_corpus, which
does the work."""

from __future__ import annotations

import errno
import json
import math
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from prep.signals import HANGUP, sigterm_raises
from prep.corpus import ERRORS
from prep.errors import GivenPath, UserCommand, UserError, after_the_work
from prep.output import OutputError
from prep.shards import MAX_TOKENS
from prep.sniff import (COMPRESSED_SUFFIXES, CompressedError, CorpusError, decompressed_input, names_json,
                        names_jsonl, names_no_format)
from prep.sniff_json import not_utf8_error
from prep.sources import STDIN, STDIN_KINDS, is_stream, names_descriptor
from prep.streams import flush_stdout, say
from prep.tokenize import (DEFAULT_CHUNK_CHARS, DEFAULT_SHARD_SIZE, DEFAULT_VAL_FRACTION, DEFAULT_VAL_MAX_TOKENS,
                           TokenizeResult, default_workers, tokenize_corpus)
from prep.tokenizer import TokenizerError
from prep.workers import WorkerError


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
              help="Invalid UTF-8, or a lone surrogate escape in a JSON line (\\ud800 without its pair): "
                   "fail naming the file and byte (or line), or replace it with U+FFFD.")
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
    given = {param for param in ("field", "stdin_format")
             if click.get_current_context().get_parameter_source(param) != click.core.ParameterSource.DEFAULT}
    # said, either format, it must have an input to say it of, as --field must (text too: said of
    # x.jsonl alone, it was ignored without a word, the file read as JSON lines by its name)
    if "stdin_format" in given and not any(map(is_stream, inputs)) and not json_files:
        named = next((i for i in inputs if not os.path.isdir(i) and names_jsonl(i)), None)
        also = "" if named is None or stdin_format != "text" else (
            f"; {named} is read as JSON lines by its name (to tokenize its JSON as text, stream it in: "
            f"prep tokenize --stdin-format text - < {shlex.quote(named)})")
        raise UserError(f"--stdin-format {stdin_format}: no - (stdin), pipe or *.json file among the inputs; "
                        f"it says how those are read (other files' names say how they are read: *.jsonl, "
                        f"*.ndjson){also}")
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
