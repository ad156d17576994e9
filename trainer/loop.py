"""The training loop: steps, logging points, evaluation, samples, checkpoints and the stop.

train_loop runs the steps without a host<->device sync between logging points: a logging
point's losses leave for the host (Readback) and are read back at the next one, by when the
device has finished them, so the host never waits for the device in the steady state
(trainer/progress.py keeps those points and writes their metrics.jsonl lines). At a point the
loop evaluates, samples and checkpoints (config.work_due_after says when; saving writes the
checkpoint); a signal finishes the step under way and checkpoints it (StopRequest), under
torchrun at a step all ranks agree on. _Run holds one run's state; its step() is one step,
logging_point() and work_due() what follows it there.
summarize (trainer/summary.py) is the closing line and the dict train.py's train() returns.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch.distributed as dist

from loader import TokenRangeError
from prep.signals import signals_deferred
from prep.errors import UserError
from prep.progress import Bar
from prep.streams import bar_disable
from trainer.checkpoint import ckpt_path
from trainer.config import lr_at, work_due_after
from trainer.evaluation import CUT, evaluate, sample_text, val_loss_line
from trainer.logs import METRICS_FIELDS, strict_json_row
from trainer.output import OUTPUT_CLOSED, poll_outputs, say_over_bar
from trainer.progress import LoggingPoints, open_outputs
from trainer.ranks import peer_gone
from trainer.saving import CheckpointWriter, gather_rng_states, wait_quietly, write_checkpoint
from trainer.session import Session
from trainer.step import train_step
from trainer.stopping import AfterTheLoop, StopRequest, Terminated
from trainer.summary import WARMUP_SKIP, summarize


def train_loop(s: Session, then: AfterTheLoop | None = None) -> dict:
    """Steps start_step+1 .. cfg.steps; logs, evaluates, samples and checkpoints on the way.
    `then`: holds the signals from the loop's end on (AfterTheLoop)."""
    # (an error held the signals before anything in `files` unwinds: AfterTheLoop.on_error)
    with contextlib.ExitStack() as files, then.on_error() if then is not None else contextlib.nullcontext():
        run = _Run(s, files, then)
        run.first_evaluation()
        files.callback(run.flush)  # runs before the metrics file and the bar close
        run.steps()
    points, stop = run.points, run.stop
    summary = summarize(s, points.history, points.record, time.perf_counter() - run.started,
                        interrupted=run.stopped or (stop.requested and not s.rt.ddp),  # ranks exit alike
                        skipped_steps=points.skipped if points.scaled else None, ckpt_costs=run.ckpt_costs,
                        in_background=run.in_background)
    summary["output_closed"] = stop.signal == OUTPUT_CLOSED
    return summary


class _Run:
    """One run of train_loop: its stop request, its files and bar (entered on `files`, which
    train_loop closes), its logging points (`points`), whether it stopped, and its checkpoints'
    timing: when the last one was taken (--ckpt-minutes), what each cost the loop."""

    def __init__(self, s: Session, files: contextlib.ExitStack, then: AfterTheLoop | None):
        self.s, self.cfg, self.rt = s, s.cfg, s.rt
        cfg, rt = s.cfg, s.rt
        self.say = say_over_bar if rt.master else (lambda *_: None)
        self.stop = files.enter_context(StopRequest(persistent=rt.ddp, announce=rt.master, then=then))
        files.push(self.cut_short)
        # rank 0's checkpoints, written while the steps go on (--async-ckpt); a run that ends by
        # an error waits here for the write under way (its own error then goes unsaid)
        writer = self.writer = CheckpointWriter() if cfg.async_ckpt and rt.master else None
        if writer is not None:
            files.push(lambda *exc: wait_quietly(writer, not issubclass(exc[0], Exception))
                       if exc[0] is not None else None)
        self.metrics, self.logs, self.waits, self.feed = open_outputs(s, files)
        self.bar = files.enter_context(Bar(total=cfg.steps, initial=s.start_step, unit="step", dynamic_ncols=True,
                                           # None: drawn on a terminal only, as prep's bars; a log
                                           # file gets the lines below and the summary, no \r noise
                                           disable=bar_disable(True if not rt.master or cfg.quiet else None)))
        self.points = LoggingPoints(s, self.stop, self.bar, writer)
        # seconds the loop spent on each checkpoint (a copy, or the whole write)
        self.ckpt_costs: list[float] = []
        self.in_background = 0  # of those, how many the writer wrote
        self.stopped = False
        self.has_val = s.val_loader is not None
        self.started = self.last_ckpt = 0.0  # (set as the steps start)

    def cut_short(self, exc_type, error, traceback) -> None:
        """An error after a signal was heard is that signal's stop at once: it reaches the
        run's whole process group, the compiler torch runs for the step (g++, inductor's
        workers) too, and the step then failed with a compile error's traceback. Not a
        collective failed for a rank gone (train.py's train() says so): torchrun's SIGTERM to
        the ranks left, sent as one dies, came first where this rank was busy alone (sampling)."""
        stop = self.stop
        if (isinstance(error, Exception) and not isinstance(error, (UserError, TokenRangeError))
                and stop.requested and stop.signal != OUTPUT_CLOSED
                and not (self.rt.ddp and isinstance(error, RuntimeError) and peer_gone(error))):
            stopped = Terminated()
            stopped.signum = stop.signal
            stopped.why = (f": what was under way failed after the signal ({type(error).__name__}; a signal "
                           f"reaches the whole process group, torch's compiler included)")
            raise stopped from error

    def val_loss(self) -> float | None:
        """evaluate: an evaluation stops between two batches on a signal (under torchrun, at a
        batch the ranks agree on: evaluate's None there is every rank's)."""
        s = self.s
        return evaluate(s.eval_model, s.val_loader, s.val_batches, self.rt, lambda: self.stop.requested)

    def wait_for_writer(self) -> None:
        """writer.wait() at the run's end: the time counted with its last checkpoint's."""
        waited = time.perf_counter()
        self.writer.wait()
        if self.ckpt_costs:
            self.ckpt_costs[-1] += time.perf_counter() - waited

    def first_evaluation(self) -> None:
        """The val loss before step 1, or of a run resumed at its last step."""
        s, cfg, rt, stop = self.s, self.cfg, self.rt, self.stop
        if s.start_step == 0 and self.has_val:
            # the untrained model's val loss (about ln(vocab) = 10.8 for GPT-2), as nanoGPT and
            # build-nanogpt log it: the curve's first point, and a check of the data and model
            stop.when = "before step 1"
            val_loss = self.val_loss()
            stop.when = None
            self.say(val_loss_line(0, val_loss))
            if self.metrics is not None and val_loss is not None:
                record = self.points.record = dict.fromkeys(METRICS_FIELDS)
                record.update(step=0, tokens=0, epoch=0.0, val_loss=val_loss)
                self.metrics.write(json.dumps(strict_json_row(record)) + "\n")
            # a signal during it: no step to finish or save (under torchrun: one that cut the
            # evaluation short, at a batch the ranks agreed on)
            if val_loss is None or (stop.requested and not rt.ddp):
                if rt.ddp:  # no rank leaves (torchrun would then end the rest) before rank 0's line
                    dist.barrier()
                self.say(f"{stop.cause}: stopped before step 1; nothing trained, no checkpoint written")
                self.stopped = True
        elif s.start_step == cfg.steps and self.has_val:
            # resumed at its last step: nothing to train, but the checkpoint's val loss, on this
            # run's --eval-steps and val split (--val-data): a checkpoint evaluated alone, as
            # nanoGPT's eval_only does. metrics.jsonl keeps the training run's lines.
            stop.when = "now (nothing to train; the checkpoint's evaluation is cut short)"
            val_loss = self.val_loss()
            self.say(val_loss_line(s.start_step, val_loss))
            self.points.record = {"val_loss": val_loss}
            # cut short: every rank's (under torchrun), so every rank exits 130
            self.stopped = val_loss is None

    def finish(self, val_loss: float | None = None) -> tuple[bool, bool]:
        """Read back the oldest logging point in flight: its steps' metrics lines (the val
        loss goes with its last step) and the bar. Returns the flags the ranks shared there
        (under torchrun): (a rank was signalled, rank 0 found a checkpoint overdue). The
        point leaves `inflight` once its lines are written: one interrupted before that
        (a second Ctrl-C while the host waits for the device) is still there for flush()."""
        rows, flags = self.points.read(val_loss)
        with signals_deferred():  # a Ctrl-C now would leave the point queued: flush() would write it twice
            if self.metrics is not None:
                self.metrics.write("".join(json.dumps(strict_json_row(row)) + "\n" for row in rows))
            self.points.inflight.popleft()
        self.points.done(rows)
        return flags

    def flush(self) -> None:
        """A run ended by an error (bad data, a second Ctrl-C) still logs the steps it made."""
        with contextlib.suppress(Exception):  # a device that failed cannot give them back
            while self.points.inflight:
                self.finish()

    def steps(self) -> None:
        """Steps start_step+1 .. cfg.steps, up to the last or the one a stop ends the run after."""
        self.started = self.last_ckpt = time.perf_counter()
        self.points.start_window()
        for step in range(self.s.start_step + 1, 0 if self.stopped else self.cfg.steps + 1):
            if self.step(step):
                break
        if self.writer is not None:
            self.wait_for_writer()  # (done already where the loop's last step checkpointed)

    def step(self, step: int) -> bool:
        """Train `step`; where it is a logging point, log it and do what is due after it.
        Returns whether the run stops after it."""
        s, cfg, rt, stop = self.s, self.cfg, self.rt, self.stop
        lr = lr_at(step - 1, cfg)
        loss, grad_norm = train_step(s.parts, self.feed, lr)
        self.points.pending.append((step, lr, loss, grad_norm, self.waits.take()))
        if self.writer is not None:
            self.writer.poll()  # a checkpoint write that failed ends the run now
        # One process stops at the step where it sees the signal; under torchrun the ranks
        # learn of each other's signals through the logging points' all-reduce, below.
        if rt.master and step % cfg.log_every == 0:
            poll_outputs()  # (one poll() a logging point)
        stopping = stop.requested and not rt.ddp
        final = step == cfg.steps or stopping
        do_eval, do_sample, do_ckpt = work_due_after(cfg, step, stopping, self.has_val)
        # The first WARMUP_SKIP steps (compilation) are logging points of their own: a step's
        # time is its logging window's mean, and the summary leaves those steps out.
        warming_up = step <= s.start_step + WARMUP_SKIP
        if not (final or do_eval or do_sample or do_ckpt or warming_up or step % cfg.log_every == 0):
            return False
        stopping, overdue = self.logging_point(stopping)
        final = final or stopping
        do_eval, do_sample, do_ckpt = work_due_after(cfg, step, stopping, self.has_val, overdue)
        if not (final or do_eval or do_sample or do_ckpt):
            return False  # this point stays in flight
        return self.work_due(step, stopping, overdue, do_eval, do_sample, do_ckpt)

    def logging_point(self, stopping: bool) -> tuple[bool, bool]:
        """Send this point's values to the host and read back the points before it. Returns
        (`stopping`, or a rank was signalled: under torchrun every rank then stops after this
        step; a checkpoint overdue by --ckpt-minutes, as this rank acts on it now)."""
        cfg, rt = self.cfg, self.rt
        # --ckpt-minutes by rank 0's clock, so that the ranks agree (the checkpoint is a collective)
        overdue = (cfg.ckpt_minutes > 0 and rt.master
                   and time.perf_counter() - self.last_ckpt >= 60 * cfg.ckpt_minutes)
        overdue = self.points.send(overdue)
        signalled = False
        while len(self.points.inflight) > 1:  # the earlier points: one point late, the device has done them
            flag_stop, flag_ckpt = self.finish()
            signalled, overdue = signalled or flag_stop, overdue or flag_ckpt
        self.points.check_diverged()
        return stopping or signalled, overdue

    def work_due(self, step: int, stopping: bool, overdue: bool, do_eval: bool, do_sample: bool,
                 do_ckpt: bool) -> bool:
        """An evaluation, a sample, a checkpoint or the end after `step`: this point is read
        back now, and what is due done. Returns whether the run stops after `step`."""
        cfg, rt, stop, points = self.cfg, self.rt, self.stop, self.points
        val_loss = self.val_loss() if do_eval else None
        flag_stop, flag_ckpt = self.finish(val_loss)
        if flag_stop or flag_ckpt:  # shared at this very point: acted on here, alike on every rank
            stopping = stopping or flag_stop
            do_ckpt = work_due_after(cfg, step, stopping, self.has_val, overdue or flag_ckpt)[2]
        points.check_diverged(step if do_ckpt else None)  # before its weights are sampled or checkpointed
        if do_eval:
            self.say(val_loss_line(step, val_loss))
        if do_sample and rt.master:
            self.sample(step)
        if not stopping and (stop.requested and not rt.ddp or do_eval and val_loss is None):
            # a signal during the evaluation or the sample: this step is the one checkpointed,
            # not the next one (under torchrun: one that cut the evaluation short, where the
            # ranks agreed on it; they learn of one in a sample at the next logging point)
            stopping = True
            do_ckpt = work_due_after(cfg, step, stopping, self.has_val)[2]
            points.check_diverged(step if do_ckpt else None)  # its weights, as for any checkpoint due
        if do_ckpt:
            stopping = self.checkpoint(step, stopping)
        # evaluation, samples and checkpoints are not step time (and the device has nothing
        # queued now: the next window's time starts here)
        points.start_window()
        if stopping:
            self.stop_after(step, do_ckpt)
        return stopping

    def sample(self, step: int) -> None:
        """Rank 0's sample after `step`, said."""
        s = self.s
        try:
            text = sample_text(s.raw, self.rt, s.generator, self.cfg.sample_tokens,
                               lambda: self.stop.requested)
            self.say(f"step {step} sample: " + (repr(text) if text is not None else f"{CUT} (samples "
                                                "after a resume differ from this run's)"))
        except FloatingPointError as e:  # diverged: the run goes on as it would without samples
            self.say(f"step {step} sample: none: {e}")

    def checkpoint(self, step: int, stopping: bool) -> bool:
        """Checkpoint `step` (every rank: a collective), its time counted in `ckpt_costs`.
        Returns `stopping`, or a signal was heard while it was written."""
        s, cfg, rt, stop = self.s, self.cfg, self.rt, self.stop
        ckpt_started = time.perf_counter()
        for synced in self.logs:  # this step's lines and those before it are on disk before its checkpoint
            synced.sync()
        rng_ranks = gather_rng_states(s)  # every rank: a collective (rank 0 writes once every rank synced)
        if rt.master:
            self.in_background += write_checkpoint(s, step, rng_ranks, self.writer)
            if self.writer is not None and (step == cfg.steps or stopping or stop.requested and not rt.ddp):
                self.writer.wait()  # the run ends here: its last checkpoint is on disk first
        self.last_ckpt = time.perf_counter()
        self.ckpt_costs.append(self.last_ckpt - ckpt_started)
        if stop.requested and not rt.ddp:
            # a signal while it was written (deferred to the file's end): this step is the
            # one stopped at, checkpointed already (the last step's stop went unsaid, and
            # another step's trained on to a second checkpoint)
            stopping = True
        return stopping

    def stop_after(self, step: int, checkpointed: bool) -> None:
        """The run stops after `step` (a signal, or the last step): said, once every rank is here."""
        cfg = self.cfg
        if self.writer is not None:
            self.wait_for_writer()  # (done above, unless the stop was heard after that wait)
        if self.rt.ddp:  # no rank leaves (torchrun would then end the rest) before the checkpoint
            dist.barrier()
        more = "; continue with --resume auto" if step < cfg.steps else ""  # (after the last: nothing to)
        saved = (f"checkpoint {ckpt_path(Path(cfg.out), step)} written{more}"
                 if checkpointed else "no checkpoint (--ckpt-every 0, no --ckpt-minutes)")
        self.say(f"{self.stop.cause}: stopped after step {step} of {cfg.steps}; {saved}")
        self.stopped = True
