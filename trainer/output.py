"""Standard output and error whose reader went away (`| head`, a closed ssh session).

The trainer prints through echo (say_over_bar: clear of the progress bar), where a write that
finds its pipe closed points the descriptor at /dev/null and asks the training loop to stop
as on a signal (checkpointing its step), instead of ending the run with a traceback and losing
that checkpoint.
"""

from __future__ import annotations

import errno
import select
import sys
from collections.abc import Callable

import click

from prep.progress import Bar
from prep.streams import point_at_devnull


def whole_line_to_stderr(line: str) -> None:
    """`line` and its newline to standard error in one write: print() writes them apart, so the
    other ranks' lines, on the stderr they share under torchrun, came between them ('... no
    checkpoint writtenrank 1 of 2: ...')."""
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()


READER_GONE = (errno.EPIPE, errno.EIO)  # a write's errors where no one reads: a pipe's, a hung-up terminal's
OUTPUT_CLOSED = -1  # StopRequest.signal of a stop for output whose reader went away (no signal: EPIPE)
closed_outputs: set[int] = set()  # of 1 and 2: standard output or error whose pipe's reader went away
on_output_closed: list[Callable[[], None]] = []  # the training loop's StopRequest, while it runs


def _output_closed(fd: int) -> None:
    """Standard output (1) or error (2) is a pipe whose reader went away (EPIPE): `train.py | tee
    log` stopped with its process group (a Ctrl-C, a scheduler's SIGTERM: tee ends at once, the
    run only after its step), or `| head`; or a terminal that hung up (EIO: the ssh session
    dropped, its SIGHUP being handled). The write that found it raised from the step's logging,
    before the checkpoint: the stop it was finishing was lost, with exit 1 and no word. The
    descriptor now points at /dev/null (later writes and the interpreter's last flush go
    nowhere, quietly) and the training loop stops as on a signal, checkpointing its step."""
    if fd in closed_outputs:
        return
    closed_outputs.add(fd)
    point_at_devnull(fd)
    for callback in on_output_closed:
        callback()


def poll_outputs() -> None:
    """_output_closed for standard output or error whose reader went away though the run wrote
    nothing since (--eval-every 0: a run that prints nothing between its start and its end): a
    pipe's write end then polls POLLERR, a hung-up terminal POLLHUP. Where there is no poll()
    (Windows), the next line written finds it."""
    if not hasattr(select, "poll"):
        return
    poller = select.poll()
    for fd in {1, 2} - closed_outputs:
        poller.register(fd, select.POLLOUT)
    for fd, events in poller.poll(0):
        if events & (select.POLLERR | select.POLLHUP):
            _output_closed(fd)


def echo(message: str, err: bool = False) -> None:
    """click.echo, where a pipe whose reader went away is _output_closed, not an error: a line
    for standard output goes to standard error then, while that is open. A line standard error
    cannot take otherwise (`2>/dev/full`, a log on a full disk) is dropped, as prep's say drops
    one: its OSError ended a stop's last lines with status 1, not the stop's 130 or 141."""
    for fd in (2,) if err else (1, 2):
        if fd in closed_outputs:
            continue
        try:
            click.echo(message, err=fd == 2)
            return
        except OSError as e:
            if e.errno not in READER_GONE:
                if fd == 2:
                    return
                raise
            _output_closed(fd)


def say_over_bar(message: str) -> None:
    """One line on standard output, clear of the progress bar (as tqdm.write), written by
    echo like every other line: where stdout cannot encode a sample's text (LC_ALL=C
    without UTF-8 mode, a Windows code page) click writes UTF-8, where tqdm.write raised
    UnicodeEncodeError and ended the run before the checkpoint due at that step."""
    with Bar.external_write_mode():
        echo(message)
