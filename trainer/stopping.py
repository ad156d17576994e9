"""Signals: a Ctrl-C or SIGTERM finishes the step under way, checkpoints it, and stops.

StopRequest is the training loop's handler; AfterTheLoop holds the signals once the run's
outcome is decided (its loop ended, or an error left it), so that the first cause stays the
run's line and status. Terminated and ReaderGone are the stops that end a run at once (while it
starts up, in --bench); ctrl_c_once_a_press, noted_once_decided and interrupt_exits_at_once are
the handlers train.py's `__main__` sets for the moments around the run (train() and main() in
this module's docstrings are train.py's).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterable

from prep.signals import HANGUP, may_handle, signal_time, stops_exit_at_once
from trainer.launch import launched_world
from trainer.output import OUTPUT_CLOSED, closed_outputs, on_output_closed


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP: `signum`) where no step is under way to finish first (start-up,
    --bench): the run stops at once, as a Ctrl-C there does. Also the training loop's stop for a
    signal after which the step failed (cut_short, which says `why`)."""

    signum = signal.SIGTERM


class ReaderGone(KeyboardInterrupt):
    """Output whose reader went away while the run started up (`| head` of its facts): it stops
    there, as a signal there does, and does not train a step to checkpoint it."""


SAME_SIGNAL_S = 1.0  # a Ctrl-C within this of the first is the same press, sent again (StopRequest)


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM: finish the step under way, checkpoint it, and stop, instead
    of losing every step since the last --ckpt-every. Output whose reader went away stops the
    run the same way (output_closed).

    A signal ignored by whoever started the process stays ignored (a script's `cmd &` ignores
    SIGINT: a Ctrl-C at its terminal is not for its background jobs). torchrun does not pass an
    ignore on: it handles SIGINT itself and forwards it, unless started with `--signals-to-handle
    SIGTERM,SIGHUP,SIGQUIT` (checked: `torchrun ... &` then trains on through a Ctrl-C).

    One process: a second Ctrl-C acts at once (the previous handler's KeyboardInterrupt), where
    it comes a second or more after the first (SAME_SIGNAL_S): `timeout`, which a Ctrl-C at its
    terminal reaches with the run, passes it on to the run and to its process group, and so sends
    one press up to three times within microseconds. SIGTERM and SIGHUP only ever set the flag:
    programs send them (`timeout`, twice: to the run, then to its process group; a hang-up,
    twice), and one that means "at once" follows with SIGKILL, which a checkpointed run survives.
    Under torchrun (`persistent`): every signal only sets the flag,
    because torchrun passes the signal it gets on to every rank (a Ctrl-C reaches each rank
    twice), and it SIGKILLs ranks still running 30 s later (--shutdown-timeout, torch >= 2.13).
    The ranks agree on the step to stop at through a flag that rides on the logging point's
    all-reduce and is read back at the next logging point: they stop there, within two
    multiples of --log-every; or, where the signal came during an evaluation, at the step it
    was for (evaluate shares the flags at each batch).
    """

    # SIGHUP: the terminal the run writes to went away (an ssh session dropped); its default ends
    # the run at once. `nohup` ignores it, and an ignored signal stays ignored (below).
    SIGNALS = (signal.SIGINT, signal.SIGTERM, *HANGUP)

    def __init__(self, persistent: bool = False, announce: bool = False, then: "AfterTheLoop | None" = None) -> None:
        self.signal: int | None = None
        self.persistent = persistent
        self.then = then  # holds the signals once the loop has ended, by an error too (AfterTheLoop)
        self.announce = announce  # say at once that the signal was heard (rank 0 only)
        # when a single process stops, where not after the step under way: "before step 1" (in
        # the step-0 evaluation), "now (nothing to train; ...)" (a resume at its last step)
        self.when: str | None = None
        self._previous: dict[int, object] = {}
        self._first_ctrl_c: float | None = None  # time.monotonic() when the first was heard

    def _handle(self, signum, frame) -> None:
        first = self.signal in (None, OUTPUT_CLOSED)  # (a Ctrl-C after output closed is the user's first word)
        self.signal = signum
        again = not self.persistent and signum == signal.SIGINT  # a second one may stop at once
        now = signal_time()  # a press held through a write: when it came
        if again and self._first_ctrl_c is None:
            self._first_ctrl_c = now
            if not _first_late_ctrl_c:  # the press a Ctrl-C once the loop has ended is the second of
                _first_late_ctrl_c.append(now)  # (_pressed_again), as this one's announce says
        elif again and now - self._first_ctrl_c >= SAME_SIGNAL_S:
            signal.signal(signum, self._previous[signum])
            signal.raise_signal(signum)  # to the handler before: KeyboardInterrupt, here
            return
        if first:
            self._announce(", a second one stops at once" if again else "")

    def output_closed(self) -> None:
        """Standard output or error lost its reader (output's _output_closed): stop as on a signal, one
        that no second one follows. A signal that came first keeps its name (`| tee` stopped
        with the run's process group: the run's own signal, its tee gone)."""
        if self.signal is None:
            self.signal = OUTPUT_CLOSED
            self._announce()

    def _announce(self, again: str = "") -> None:
        """Say at once that the stop was heard (rank 0's), with os.write: a print could re-enter
        one the signal interrupted."""
        if not self.announce:
            return
        when = "within two logging points" if self.persistent else self.when or "after the step under way"
        with contextlib.suppress(OSError):  # stderr closed or full (or the output that closed): the stop goes on
            # on a terminal, off the line that holds the bar or the echoed ^C; a log file (a pipe,
            # --quiet's usual place) gets no blank line
            fresh_line = "\n" if os.isatty(2) else ""
            os.write(2, f"{fresh_line}{self.name}: stopping {when}{again}\n".encode())

    @property
    def name(self) -> str:
        """The stop's cause as its messages say it: SIGINT, SIGTERM, or the output closed."""
        if self.signal == OUTPUT_CLOSED:
            return "output closed (its reader went away)"
        return signal.Signals(self.signal).name

    @property
    def cause(self) -> str:
        """What a stop line names: this process's signal, or, under torchrun, another rank's
        (the ranks stop together where any one was signalled)."""
        return self.name if self.requested else "another rank's signal"

    def __enter__(self) -> "StopRequest":
        for signum in self.SIGNALS:
            # the main thread, a signal not ignored (`cmd &` in a script: Ctrl-C is not for this run)
            if may_handle(signum):
                self._previous[signum] = signal.signal(signum, self._handle)
        on_output_closed.append(self.output_closed)  # (closed while starting up: train()'s ReaderGone)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.then is not None:  # (an error too: AfterTheLoop.on_error holds them already)
            self.then.hold(self._previous)  # (in place of this one's handlers: no signal finds another between)
        else:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
        on_output_closed.remove(self.output_closed)

    @property
    def requested(self) -> bool:
        return self.signal is not None


# The script's own signal handlers (noted_once_decided) once a run's outcome is decided
# (AfterTheLoop.hold), to the process's end: the signals they heard then, which change nothing
# but a finished run's status (130 for 0)
_outcome_decided = threading.Event()
late_signals: list[int] = []
# signal_time() of the first Ctrl-C noted once it was decided, or of the stop's (StopRequest's) before
_first_late_ctrl_c: list[float] = []


def _pressed_again(signum: int) -> bool:
    """Whether `signum`, noted once the run's outcome is decided, is a second Ctrl-C: one
    process, SAME_SIGNAL_S or more after the first noted, or after the stop's own in the loop (as
    StopRequest's second one: its announce says "a second one stops at once"). It acts
    at once: a clean-up that hangs (a loader's join, the process group's end), or the error's
    line blocked on a full pipe, could else be ended by SIGKILL alone, every Ctrl-C and SIGTERM
    only noted. Not the wait for a checkpoint under way: that one finishes first, whatever comes
    (docs/TRAINING.md), a hung disk's included. SIGTERM and SIGHUP are only noted (timeout and
    torchrun send theirs twice)."""
    if signum != signal.SIGINT or launched_world() > 1:
        return False
    now = signal_time()
    if not _first_late_ctrl_c:
        _first_late_ctrl_c.append(now)
        return False
    return now - _first_late_ctrl_c[0] >= SAME_SIGNAL_S


class AfterTheLoop:
    """Ctrl-C, SIGTERM and SIGHUP once the run's outcome is decided (the training loop, or
    --bench's, ended without an error: the stop's or the last checkpoint written, the files
    closed, the closing summary said or next), while train() lets go of the rest (the process
    group, the loaders): each is noted, and ends the run with 130 and no word once that is done,
    as one after the end does; with 141 where the output's reader had gone away first (the first
    cause stays the status: a signal there turned 141 into 130). Left to the run's handlers, a
    SIGTERM there (torchrun's, sent after a stop's Ctrl-C while the ranks left the process group)
    raised Terminated, and every rank said after its stop's lines that it had "stopped at once";
    a second Ctrl-C said so too.
    An error (or a stop at once) decides the outcome too: from the moment it leaves the loop or
    train()'s start-up (on_error), before anything it unwinds runs, a signal is noted and the
    error stays the run's, with its line and status (below).
    Entered outside stops_raise: its end puts back the handlers from before the run (train()
    runs in-process in tests), none of the run's own set between the two."""

    def __init__(self) -> None:
        self.heard: list[int] = []
        # the output's reader had gone when the first came: that stays the cause, and the status
        # (141) agrees with the stop's line already said ("output closed ...: stopped after step N")
        self.output_closed_first = False
        self._before: dict[int, object] = {}

    def _note(self, signum, frame) -> None:
        if _pressed_again(signum):  # the clean-up stops at once ("interrupted", 130)
            raise KeyboardInterrupt
        if not self.heard:
            self.output_closed_first = bool(closed_outputs)
        self.heard.append(signum)

    def hold(self, signums: Iterable[int] | None = None) -> None:
        """From now to the block's end, for `signums` (StopRequest's, whose handlers this
        replaces) or all of them. The script's own handlers, back after train(), note them
        too from now on (noted_once_decided)."""
        _outcome_decided.set()
        for signum in self._before if signums is None else signums:
            if signum in self._before:
                signal.signal(signum, self._note)

    @contextlib.contextmanager
    def on_error(self):
        """hold() from the moment an exception leaves the block: an error's clean-up (the logs and
        the loaders closed, the checkpoint under way waited for, the process group left) took
        a signal as it came. A SIGTERM then raised Terminated over the error, whose line was lost
        ("SIGTERM: stopped at once" and 130 in its place: a full disk read as a stop that --resume
        continues); one while the training loop closed its logs made cut_short take the error,
        from before it, for the signal's."""
        try:
            yield
        except BaseException:
            self.hold()
            raise

    def __enter__(self) -> "AfterTheLoop":
        _outcome_decided.clear()  # (a run before this one in the process: its outcome)
        late_signals.clear()
        _first_late_ctrl_c.clear()
        self._before = {signum: signal.getsignal(signum) for signum in StopRequest.SIGNALS if may_handle(signum)}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._before.items():
            signal.signal(signum, handler)


def ctrl_c_once_a_press() -> Callable[[int, object], None]:
    """A SIGINT handler for the script, where the run's own are not set: KeyboardInterrupt, once
    a press. `timeout` passes a Ctrl-C on to the run and to its process group, and the copy,
    microseconds later, interrupted the first one's stop while starting up (a second line,
    "interrupted", or a traceback). A Ctrl-C SAME_SIGNAL_S or more after the last is a press."""
    pressed: list[float] = []

    def ctrl_c(signum, frame) -> None:
        now = signal_time()
        if pressed and now - pressed[-1] < SAME_SIGNAL_S:
            return
        pressed.append(now)
        raise KeyboardInterrupt

    return ctrl_c


def noted_once_decided(handler: Callable[[int, object], None]) -> Callable[[int, object], None]:
    """`handler`, the script's own for a signal (where the run's are not set), until the run's
    outcome is decided (AfterTheLoop.hold: its loop ended, or an error or a stop at once left
    it); from then on the signal is noted in late_signals, and the run ends as it was ending,
    with its lines and its status (130 where that was 0: the script's end). These handlers are
    back from train()'s end to the process's: a Ctrl-C there, as main() decided the status or
    click ended, printed "Aborted!" (exit 1) for a run that had finished, or said "train.py:
    interrupted" and exited 130 for one whose output's reader had gone (141); a SIGTERM exited
    130 at once, an error's line unsaid."""
    def noted(signum, frame) -> None:
        if _outcome_decided.is_set() and _pressed_again(signum):
            os._exit(130)  # nothing flushed: a write that hangs (the error's line, a full pipe) is what it stops
        if _outcome_decided.is_set():
            late_signals.append(signum)
        else:
            handler(signum, frame)

    return noted


def interrupt_exits_at_once(signums: Iterable[int] = (), status: int = 130) -> None:
    """From here to the end of the process (the run is over, its checkpoint and logs closed) but
    its last second (ignore_stops_at_the_end's: then they are ignored), a Ctrl-C, SIGTERM or
    SIGHUP (or those of `signums`) exits at once and quietly (prep.signals.stops_exit_at_once
    says why): a second Ctrl-C just as a stop's checkpoint was written, or one just as a run
    ended, printed an ignored KeyboardInterrupt's traceback, and a second SIGTERM or SIGHUP in
    the second or so the shutdown takes ended the run as killed (143, 129), after its
    checkpoint. `signums`: those alone (before the run: what the run's own handlers put back
    when they end). `status`: 130, or the run's own where that was not 0 (an error's 2, the 141 of
    output whose reader went away): the first cause stays the status."""

    stops_exit_at_once(signums or (signal.SIGINT, signal.SIGTERM, *HANGUP), status=lambda signum: status)
