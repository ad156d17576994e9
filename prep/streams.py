"""The standard streams where they are closed, full, or their reader went away: a command's
result on stdout and its notes on stderr never end it in a traceback. Every command imports
this module (or prep.errors, which imports it) first: see reserve_standard_fds.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import sys

import click


def reserve_standard_fds() -> None:
    """Put /dev/null on standard input, output or error where the process started with one
    closed (`>&- 2>&-`, a daemon's launcher). Python then sets sys.stdout or sys.stderr to None
    (see flush_stdout, bar_disable), but the descriptor itself is free, and the next file opened
    took it: train.py's metrics.jsonl became descriptor 2, and a SIGTERM's "stopping after the
    step under way" (os.write(2, ...) in a signal handler), a C library's or a child process's
    message went into it. Called on importing this module, which every command does first
    (through prep.errors, or itself)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        try:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:  # (the lowest free descriptor: fd itself, its lower ones being open)
                os.dup2(null, fd)
                os.close(null)
            os.set_inheritable(fd, True)  # as a standard descriptor is: child processes get it too
        except OSError:  # no /dev/null to open: as before
            pass


reserve_standard_fds()


def writing_stdout(error: OSError) -> bool:
    """Whether `error` came from writing standard output: from flushing it (the `stdout` mark
    prep.errors' commands set), or from a writer whose innermost frame holds it (click.echo's
    `file`, tqdm.write's `fp`)."""
    if getattr(error, "stdout", False):
        return True
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and any(value is sys.stdout for value in tb.tb_frame.f_locals.values())


READER_GONE_STATUS = 128 + 13  # a command whose standard output's reader went away: the shell's status
# for a writer SIGPIPE ended (`yes | head -1`), so `prep verify d | head -1` is not verify's 1 ("problems")


def point_at_devnull(fd: int) -> None:
    """Make `fd` (a pipe whose reader went away) /dev/null: what is still buffered for it, and
    the interpreter's last flush, go nowhere instead of raising again ("Exception ignored")."""
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)


def say(text: str) -> None:
    """A line about the work on stderr (a note, progress), dropped where stderr cannot take it
    (`2>/dev/full`): the result on stdout is what was asked for, and such a line's OSError
    ended the command before it (sample.py's header, prep.bench's progress)."""
    try:
        click.echo(text, err=True)
    except OSError:
        pass


def paths_print_as_named() -> None:
    """Standard output writes a file name that is no UTF-8 (bytes a Latin-1 system left, which
    Python holds as lone surrogates) as the bytes it is, as ls does. Under a UTF-8 locale other
    than C.UTF-8 (en_US.UTF-8, the usual one) Python makes standard output strict: `prep tokenize`'s
    summary and the lines of `prep info` and `prep verify` that name such a path ended in a
    UnicodeEncodeError's traceback and status 1, the work done, and train.py's first line naming
    its --data ended the run, as loader.audit's and loader.bench's first lines ended theirs. (An
    ASCII output click rewraps.) Each command's entry point calls it (prep.cli.run, train.py's,
    loader.audit's, loader.bench's), not the in-process calls (tests, notebooks)."""
    stream = sys.stdout
    try:
        utf8 = codecs.lookup(stream.encoding).name == "utf-8"
    except (AttributeError, LookupError, TypeError):  # None (started with it closed), a replaced stream
        return
    if utf8 and stream.errors == "strict" and hasattr(stream, "reconfigure"):
        stream.reconfigure(errors="surrogateescape")


def flush_stdout() -> None:
    """Flush standard output where there is one: started with it closed (`>&-`, a daemon's
    launcher), Python sets sys.stdout to None, which click.echo and print skip quietly, and
    flushing it raised AttributeError after the work was done."""
    if sys.stdout is not None:
        sys.stdout.flush()


def bar_disable(disable: bool | None) -> bool | None:
    """tqdm's `disable`, True where there is no stderr to draw on: started with it closed
    (`2>&-`), sys.stderr is None, which tqdm takes for a terminal and writes to, and the
    AttributeError ended the run with status 1 and no word (its traceback had nowhere to go)."""
    return True if sys.stderr is None else disable


def reader_gone() -> None:
    """Standard output's reader went away (`| head`): end quietly, as a writer SIGPIPE ends, where
    click's rule was exit 1, which `prep verify` also gives for problems found."""
    point_at_devnull(1)
    sys.exit(READER_GONE_STATUS)
