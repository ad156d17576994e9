"""User mistakes, as one line on stderr and exit status 2 (never a traceback)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import numbers
import os
import signal
import sys
from collections.abc import Callable
from pathlib import PurePath

import click

from prep.signals import HANGUP, SignalStop, stops_exit_at_once
from prep.streams import flush_stdout, reader_gone, say, writing_stdout  # (its import: reserve_standard_fds)


def plain_numbers(config: object) -> None:
    """A dataclass's numpy scalars (a sweep's np.arange, np.float64 from a config file) made
    Python ints and floats, frozen or not: the checks take them, but kept as they are they
    reach meta.json and checkpoints, which json.dumps and torch.load(weights_only=True) refuse,
    after all the work."""
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if isinstance(value, bool) or type(value) in (int, float):
            continue
        if isinstance(value, numbers.Integral):
            object.__setattr__(config, item.name, int(value))
        elif isinstance(value, numbers.Real):
            object.__setattr__(config, item.name, float(value))


NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


def out_of_room(error: Exception) -> bool:
    """Whether `error` says a disk or a quota is full: an OSError's errno, or the text that
    prep's OutputError and prep.measure.peak_rss's RuntimeError (a `prep tokenize` run's last
    words) carry. The benchmarks say so in one line: their temporary files did not fit."""
    if isinstance(error, OSError) and error.errno is not None:
        return error.errno in NO_ROOM
    return any(os.strerror(number) in str(error) for number in NO_ROOM)


class UserError(click.ClickException):
    """A mistake the user can act on: bad path, bad flag combination, bad data.

    Click prints it as `Error: <message>` and exits with status 2. Anything else that
    escapes a command is a bug and keeps its traceback.
    """

    exit_code = 2

    def show(self, file=None) -> None:
        """Click's `Error: <message>`, dropped where stderr cannot take it (`2>/dev/full`): its
        OSError escaped click's main, and the command ended with status 1 where a mistake's is 2."""
        with contextlib.suppress(OSError):
            super().show(file)

    def format_message(self) -> str:
        """The message on one line, whatever a path or a value in it holds: a file name with a
        line break in it made two lines of `--data 'no<newline>exist'`'s error. Each character
        that str.splitlines() breaks at is written as its escape (\\n, \\r, \\x0b, ...)."""
        return "".join(c.encode("unicode_escape").decode("ascii") if c in _LINE_BREAKS else c
                       for c in self.message)


_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")  # str.splitlines()'s


class GivenPath(click.Path):
    """click.Path that refuses '' (an unset shell variable: `prep tokenize "$CORPUS"`), which
    pathlib reads as the current directory: `prep tokenize ''` tokenized every text file there."""

    def __init__(self, *args, current_ok: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.current_ok = current_ok  # whether '.' is a path the option takes (not an output's)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value:
            self.fail("'' is no path (an unset shell variable?); name one" +
                      (", or . for the current directory" if self.current_ok else ""), param, ctx)
        return super().convert(value, param, ctx)


# click >= 8.2 raises this for a bare group invocation, to print the help: let it through.
_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


@contextlib.contextmanager
def usage_as_user_error(ctx: click.Context):
    """Re-raise click's usage errors inside the block as one-line UserErrors naming the command."""
    try:
        yield
    except _HELP:
        raise
    except click.UsageError as e:
        raise UserError(f"{ctx.command_path}: {e.format_message()}") from None


PROGRAM = "the process's program"  # click's obj where a command runs as its process's program (prep.cli.run)


def after_the_work(announce: Callable[[int], None] | None = None) -> None:
    """The command's work is done and said. Where it is its process's program (prep.cli.run
    passes PROGRAM as click's obj), a Ctrl-C, SIGTERM or SIGHUP from here to the end of the
    process (the workers' pool, threads, exit callbacks: tens of milliseconds) ends it at once
    with 128 + signum, after `announce(signum)`: Python's handler raised in the interpreter's
    shutdown (an ignored KeyboardInterrupt's traceback, and status 0) or in click's return
    ("Aborted!", 1), and SIGTERM's and SIGHUP's defaults ended it as killed, without a word.
    Called in-process (tests, CliRunner), it leaves the process's handlers alone."""
    context = click.get_current_context(silent=True)
    if context is not None and context.find_root().obj is PROGRAM:
        stops_exit_at_once((signal.SIGINT, signal.SIGTERM, *HANGUP), status=lambda signum: 128 + signum,
                           announce=announce)


NAME_MAX = 255  # bytes in one file name on Linux's and macOS's file systems


def path_too_long(error: OSError) -> str | None:
    """Why the path of an OSError "File name too long" is too long, or None for any other error.
    pathlib's exists() and is_dir() raise it rather than answer False (through Python 3.13; 3.14's
    exists() answers False): a path the user gave (--out, --data, an input) ended in that traceback."""
    if error.errno != errno.ENAMETOOLONG or error.filename is None:
        return None
    path = os.fsdecode(error.filename)
    longest = max(len(os.fsencode(part)) for part in path.split(os.sep))
    if longest > NAME_MAX:
        return f"a name in it has {longest} bytes, over {NAME_MAX}"
    return f"{len(os.fsencode(path))} bytes in all, more than the system takes"


def unsearchable(error: OSError) -> str | None:
    """The directory this user may not search on the way to the path of an OSError "Permission
    denied", or None for any other error. pathlib's exists(), is_dir() and is_file() raise it
    rather than answer False (through Python 3.13; 3.14's answer False): a path the user gave
    below another user's home (mode 700) ended in that traceback (--data, --out, an input)."""
    if error.errno != errno.EACCES or error.filename is None:
        return None
    try:
        path = os.path.abspath(os.fsdecode(error.filename))
    except OSError:  # (the current directory gone)
        return None
    for directory in reversed(PurePath(path).parents):  # from the root down: the first refused
        if not os.access(directory, os.X_OK):
            return str(directory) if os.path.isdir(directory) else None
    return None  # (the path's own permissions: not this error)


def _named(path: str, ctx: click.Context | None) -> str:
    """The option (and a space) whose value starts `path` where `ctx` has one, both made absolute
    (the longest: --out data/run below --data data, say), else ''."""
    where, starts = os.path.abspath(path), []  # (no call of the filesystem's: a string's work)
    for param in ctx.command.params if ctx is not None else ():
        value = ctx.params.get(param.name)
        if isinstance(param, click.Option) and isinstance(value, (str, os.PathLike)) and os.fspath(value):
            given = os.path.abspath(value)
            if where == given or where.startswith(given.rstrip(os.sep) + os.sep):
                starts.append((len(given), param.opts[0]))
    return f"{max(starts)[1]} " if starts else ""


def path_too_long_error(error: OSError, ctx: click.Context | None = None) -> UserError | None:
    """The one line for a path too long for the filesystem (path_too_long), naming the option
    that gave it where `ctx` has one whose value starts the path (_named), else the path alone;
    None for any other error."""
    why = path_too_long(error)
    if why is None:
        return None
    path = os.fsdecode(error.filename)
    return UserError(f"{_named(path, ctx)}{path}: path too long ({why}); give a shorter one")


def unsearchable_error(error: OSError, ctx: click.Context | None = None) -> UserError | None:
    """The one line for a path below a directory this user may not search (unsearchable), named
    as path_too_long_error names its path; None for any other error."""
    closed = unsearchable(error)
    if closed is None:
        return None
    path = os.fsdecode(error.filename)
    return UserError(f"{_named(path, ctx)}{path}: cannot be looked up ({error.strerror}: this user may not "
                     f"search {closed}): give it search permission there, or use a path outside {closed}")


class _OneLineUsage:
    """Mixin: usage mistakes (bad option value, missing argument, unknown option) are one line
    and exit 2 like every other user mistake, instead of click's three-line usage block; so is
    a standard output that cannot be written (`> /dev/full`), instead of a traceback, and a path
    the filesystem refuses as too long (path_too_long). A Ctrl-C that the command leaves alone
    is one line and exit 130, not "Aborted!" and exit 1."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        with usage_as_user_error(ctx):
            return super().parse_args(ctx, args)

    def main(self, *args, **kwargs):
        try:
            return super().main(*args, **kwargs)
        except OSError as e:
            too_long = path_too_long_error(e) or unsearchable_error(e)  # (outside invoke: no option to name)
            if too_long is not None:  # a user's path, wherever it was first used
                too_long.show()
                sys.exit(UserError.exit_code)
            if e.errno == errno.EPIPE or not writing_stdout(e):  # another pipe's (invoke: stdout's): click's rule
                raise
            sys.stdout = open(os.devnull, "w")  # else the interpreter's last flush fails again
            click.echo(f"Error: cannot write to standard output ({e.strerror})", err=True)
            sys.exit(UserError.exit_code)

    def invoke(self, ctx: click.Context):
        try:
            result = super().invoke(ctx)
        except KeyboardInterrupt as e:  # Ctrl-C: click would say "Aborted!" and exit 1
            # (say: a stderr that cannot take the line leaves the status to say it, not 1)
            if isinstance(e, SignalStop):  # SIGTERM or SIGHUP, raised within stops_raise
                say(f"{ctx.command_path}: stopped by {signal.Signals(e.signum).name}")
                sys.exit(128 + e.signum)
            say(f"{ctx.command_path}: interrupted")
            sys.exit(130)  # the shell's status for Ctrl-C, as train.py and prep tokenize exit
        except OSError as e:
            if e.errno == errno.EPIPE and writing_stdout(e):
                reader_gone()
            too_long = path_too_long_error(e, ctx) or unsearchable_error(e, ctx)  # a user's path, by option
            if too_long is not None:
                raise too_long from None
            raise
        try:
            flush_stdout()  # inside main(): a failing output is reported there
        except OSError as e:
            if e.errno == errno.EPIPE:
                reader_gone()
            e.stdout = True
            raise
        return result


class UserCommand(_OneLineUsage, click.Command):
    """A click command with one-line usage errors (see _OneLineUsage)."""


class UserGroup(_OneLineUsage, click.Group):
    """A click group with one-line usage errors, an unknown subcommand included."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        with usage_as_user_error(ctx):
            return super().resolve_command(ctx, args)
