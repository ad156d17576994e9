"""Signals, as every command takes them: Ctrl-C, SIGTERM and SIGHUP while the libraries import,
raised as exceptions or deferred over a write that must be whole, and left to the parent in a
forked helper. The standard library's only (no click: the loader uses them too), so a script
imports this before its slow imports.
"""

from __future__ import annotations

import _signal  # signal's own functions, without the module's enum wrapping (see _handler)
import atexit
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable


def ignored(signum: int) -> bool:
    """Whether `signum` is ignored, as whoever started this process left it: a script's `cmd &`
    ignores SIGINT so that a Ctrl-C at the terminal leaves its background jobs running. Handlers
    for Ctrl-C (or SIGTERM) are then not installed: they would undo that. (torchrun is another
    matter: it installs its own handlers, and its ranks start with the default ones.)"""
    return _is_ignore(_handler(signum))


def _handler(signum: int) -> object:
    """signal.getsignal(signum), with SIG_DFL and SIG_IGN as the plain ints they are stored as.

    signal.getsignal and signal.signal try to turn every handler into a Handlers member, and a
    Python function fails that with an exception caught inside: about 2 us a call, and
    signals_deferred made eight, 20 us at every train.py logging point (each step by default,
    where a small batch's whole step is 2-3 ms). _signal's functions are those very calls,
    less the conversion."""
    return _signal.getsignal(signum)


def _is_ignore(handler: object) -> bool:
    return isinstance(handler, int) and handler == signal.SIG_IGN


def may_handle(signum: int) -> bool:
    """Whether a handler for `signum` may be set here and the one there put back after: only
    in the main thread (signals belong to it), not over one set outside Python (None: it cannot
    be restored), nor where whoever started the process ignores the signal (`ignored`)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    handler = _handler(signum)
    return handler is not None and not _is_ignore(handler)


def import_stop_line(signum: int, prefix: str = "") -> bytes:
    """What a stop while the libraries import says: the signal, and that nothing was written
    (after `prefix`: which process says it, where several do)."""
    return (f"{prefix}{signal.Signals(signum).name}: stopped while starting up (importing its libraries); "
            "nothing was written\n").encode()


HANGUP = (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()  # (no SIGHUP on Windows)


def leave_stops_to_the_parent() -> None:
    """In a forked helper process (an encoder worker, a benchmark's measuring process): SIGTERM
    and SIGHUP end it at once, as their defaults do, and a Ctrl-C is the parent's to handle. Under
    fork it has the parent's handlers, which may raise (stops_raise): each helper printed its
    traceback under the parent's one line. An ignore that whoever started the process chose is
    kept. SIGINT last: once it is ignored, the others are set (what a watcher of the helper reads)."""
    for signum in (signal.SIGTERM, *HANGUP):
        if not ignored(signum):
            signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def interrupt_exits_while_importing(active: bool = True, sigterm_status: int = 128 + signal.SIGTERM,
                                    hangup: bool = False, prefix: str = ""):
    """Within the block, Ctrl-C exits 130 at once and SIGTERM `sigterm_status` (the shell's 143,
    or 130 where the command ends every stop so), with one line saying so, instead of a
    KeyboardInterrupt's traceback (Ctrl-C) or no word at all (SIGTERM): for the seconds that
    importing numpy, tiktoken or torch takes. `hangup`: SIGHUP too, exiting 129, or 130 where
    SIGTERM does (the commands whose runs stop on it: train.py, prep). `prefix` starts the
    line (train.py's ranks under torchrun each say which they are). Each only where `may_handle` (the main thread, a handler that can be put back,
    a signal not ignored); `active` False: nothing. At the block's end each handler before it is
    put back, but where one was set over the block's inside it: that one stays (train.py sets its
    own before it ends the block, so that no signal finds Python's default in between)."""
    statuses = {signal.SIGINT: 130, signal.SIGTERM: sigterm_status}
    for signum in HANGUP if hangup else ():  # (130 where SIGTERM's is, else the shell's 129)
        statuses[signum] = 130 if sigterm_status == 130 else 128 + signum
    statuses = {signum: status for signum, status in statuses.items() if active and may_handle(signum)}

    said = []

    def exit_at_once(signum, frame) -> None:
        # once: a second signal (`timeout` passes a Ctrl-C on as well) ran this again inside the
        # write it interrupted (retried after the signal's handler, PEP 475), and said it twice;
        # the first call, under this one, writes its line and exits
        if said:
            return
        said.append(signum)
        with contextlib.suppress(OSError):  # stderr closed: the status says it
            os.write(2, import_stop_line(signum, prefix))
        os._exit(statuses[signum])

    before = {signum: signal.signal(signum, exit_at_once) for signum in statuses}
    try:
        yield
    finally:
        for signum, handler in before.items():
            if _handler(signum) is exit_at_once:  # (a handler set over it inside: the block's successor, kept)
                signal.signal(signum, handler)


def ignore_stops_at_the_end() -> None:
    """At the very end of the process, Ctrl-C, SIGTERM and SIGHUP are ignored: the interpreter's
    finalization puts each signal that has a Python handler back to its default (an ignored one
    it leaves), and the seconds it then takes to collect torch's objects ended a run that had
    finished, its line said and its files closed, as killed by a late signal (status 143, or 130
    without a word). Call it before the libraries that register exit callbacks are imported:
    atexit runs the last registered first, so this one runs after theirs."""
    def ignore() -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, *HANGUP):
            if may_handle(signum):
                # a plain int: one that is not (an IntEnum's member) was put back to the default too
                _signal.signal(signum, int(signal.SIG_IGN))

    atexit.register(ignore)


def stops_exit_at_once(signums: Iterable[int], status: Callable[[int], int],
                       announce: Callable[[int], None] | None = None) -> None:
    """From here to the end of the process, each of `signums` (where `may_handle`) ends it at
    once: `announce(signum)` first where given, what was printed flushed, then
    os._exit(status(signum)). For the time after the work is done and said: Python's own
    handler raised KeyboardInterrupt in whatever the interpreter's shutdown was running (an
    atexit callback, the join of a thread), printed "Exception ignored ... KeyboardInterrupt"
    and exited 0; SIGTERM and SIGHUP had their defaults back and ended it without a word.
    os._exit flushes nothing, hence the flush."""

    def stop(signum, frame) -> None:
        if announce is not None:
            with contextlib.suppress(Exception):  # a closed or full stderr: the status says it
                announce(signum)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # None, closed, or the write the signal interrupted
                stream.flush()
        os._exit(status(signum))

    for signum in signums:
        if may_handle(signum):  # (the main thread, a handler Python set, a signal not ignored)
            signal.signal(signum, stop)


class SignalStop(KeyboardInterrupt):
    """SIGTERM or SIGHUP through `sigterm_raises`, unwinding as a Ctrl-C does (its `signum` says
    which): what a command with temporary files of its own raises, so they are removed."""


@contextlib.contextmanager
def sigterm_raises(exception: Callable[[], BaseException], signums: tuple[int, ...] = (signal.SIGTERM,),
                   once: tuple[int, ...] = ()):
    """Within the block SIGTERM (kill, a job scheduler, torchrun), or each of `signums`, raises
    `exception()` with the signal as its `signum`, which unwinds like a Ctrl-C: the block's
    cleanup runs (prep's temporary directory, train.py's --out lock) where the signal's default
    action ended the process where it stood. Only where `may_handle`; elsewhere the signal is
    left as it is. A signal of `once` is ignored after its first, to the block's end (a hang-up
    sends SIGHUP twice: the second would cut the first one's cleanup short)."""

    def handler(signum, frame):
        if signum in once:
            signal.signal(signum, signal.SIG_IGN)
        error = exception()
        error.signum = signum
        raise error

    previous = {signum: signal.signal(signum, handler) for signum in signums if may_handle(signum)}
    try:
        yield
    finally:
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before)


def stops_raise(exception: Callable[[], BaseException] = SignalStop):
    """sigterm_raises for SIGTERM and SIGHUP, each once: a repeat (`timeout` sends its SIGTERM
    twice, a hang-up its SIGHUP) is ignored, since it would cut the first one's cleanup short."""
    stops = (signal.SIGTERM, *HANGUP)
    return sigterm_raises(exception, stops, once=stops)


@contextlib.contextmanager
def signals_deferred(signums: Iterable[int] = (signal.SIGINT, signal.SIGTERM), deliver: bool = True):
    """Defer SIGINT and SIGTERM (or `signums`) to the end of the block, for what a Ctrl-C must
    not cut in two: prep's install (between its two renames there is no dataset under the
    target's name) and train.py's checkpoint write (torch's zip writer turns an interrupt into
    a RuntimeError about the file position). Yields the list of signals that arrived; they
    are delivered (to the handlers that were there) once the block has completed, and
    dropped if it raised: its error is the one to report, or with `deliver` False (a stop
    under way already: they would cut short what it does next).

    Python handlers, not a signal mask: a mask is per thread, and the kernel hands a process's
    signal to any thread not masking it (tqdm's monitor, the worker pool's threads), whose C
    handler then interrupts the main thread all the same. Handlers only install where
    `may_handle` (an ignored signal has nothing to defer); elsewhere the block runs as it is."""
    received: list[int] = []
    arrived: list[float] = []  # time.monotonic() of each, for deferred_arrival

    def hold(number, frame):
        arrived.append(signal_time())  # (a block inside this one delivers its held signals here)
        received.append(number)

    previous = {}
    try:  # installed inside it: a SIGTERM raising between the two must not leave SIGINT's deferred
        for signum in signums:
            if may_handle(signum):
                previous[signum] = _signal.signal(signum, hold)
        yield received
    finally:
        for signum, handler in previous.items():
            _signal.signal(signum, handler)
    if not deliver:
        return
    # in order, each with the time it came: a second Ctrl-C stays a second one (train.py: stop at once).
    # A caller may have cleared `received` (dropped what came so far): the times of those after it
    # are the last ones.
    for signum, when in zip(received, arrived[len(arrived) - len(received):]):
        _delivering.append(when)
        try:
            signal.raise_signal(signum)  # its Python handler runs before this returns
        finally:
            _delivering.pop()


_delivering: list[float] = []  # the arrival time of the held signal signals_deferred delivers now


def deferred_arrival() -> float | None:
    """In a signal handler: the time.monotonic() at which the signal being handled really came,
    where signals_deferred held it back and delivers it now; None for a signal as it comes.
    Two Ctrl-C presses held through one write are delivered microseconds apart, and a handler
    telling a second press from the same one sent twice (train.py's SAME_SIGNAL_S) needs the
    presses' own times."""
    return _delivering[-1] if _delivering else None


def signal_time() -> float:
    """In a signal handler: the time.monotonic() at which the signal being handled came, held
    back (deferred_arrival) or not (now)."""
    arrival = deferred_arrival()
    return time.monotonic() if arrival is None else arrival
