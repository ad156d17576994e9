"""The training loop: steps, logging points, evaluation, samples, checkpoints and the closing summary.

train_loop runs the steps without a host<->device sync between logging points: a logging
point's losses leave for the host (Readback) and are read back at the next one, by when the
device has finished them, so the host never waits for the device in the steady state. There it
writes metrics.jsonl, evaluates, samples and checkpoints (_due says when); a signal finishes the
step under way and checkpoints it (StopRequest), under torchrun at a step all ranks agree on.
summarize is the closing line and the dict train.py's train() returns.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from loader import TokenRangeError
from loader.audit import list_checkpoints, log_path
from model import mfu
from prep.atomic import signals_deferred, temp_path
from prep.errors import UserError, bar_disable
from prep.progress import Bar
from trainer.checkpoint import (CKPT_FORMAT, CheckpointWriter, ckpt_path, free_storage, host_copy, rng_state,
                                save_checkpoint, wait_quietly)
from trainer.config import TrainConfig, lr_at
from trainer.evaluation import CUT, evaluate, sample_text, val_loss_line
from trainer.facts import batches_phrase
from trainer.logs import METRICS_FIELDS, METRICS_NAME, open_log, strict_json_row
from trainer.outdir import make_out_dir, stale_temporary
from trainer.output import OUTPUT_CLOSED, echo, poll_outputs, say_over_bar
from trainer.ranks import peer_gone
from trainer.resume import precision
from trainer.runtime import is_out_of_memory
from trainer.session import Session
from trainer.step import (Feed, LogPoint, Readback, TimedFeed, first_not_finite, mark, seconds_between, train_step,
                          window_logger)
from trainer.stopping import AfterTheLoop, StopRequest, Terminated


WARMUP_SKIP = 3  # steps left out of the steady-state median (compilation, allocator warm-up)


def _rng_states(s: Session) -> list[dict] | None:
    """Every rank's RNG states, gathered (a collective: every rank calls it at each checkpoint):
    under DDP each rank draws its own dropout masks, and a resume restores each rank's own."""
    if not s.rt.ddp:
        return None
    return s.rt.all_gather_object(rng_state(s.rt, s.generator))


def _checkpoint(s: Session, step: int, rng_ranks: list[dict] | None, writer: CheckpointWriter | None) -> bool:
    """Checkpoint `step` (rank 0): written here, or by `writer` from a copy of the state taken
    now (the steps after it change the weights and moments in place). Returns whether `writer`
    writes it."""
    out = Path(s.cfg.out)
    path = ckpt_path(out, step)
    payload = {
        "format": CKPT_FORMAT,
        "step": step,
        "model": s.raw.state_dict(),  # the plain module: no _orig_mod. / module. prefixes
        "optimizer": s.parts.optimizer.state_dict(),
        "loader": s.train_loader.state_dict(),
        "model_config": dataclasses.asdict(s.model_config),
        "train_config": dataclasses.asdict(s.cfg),
        "run": s.run,
        "rng": rng_state(s.rt, s.generator),
        "precision": precision(s.rt),  # what a resume elsewhere notes it changes
        "compiled": s.rt.compile,  # compile as resolved: its default is off on CUDA where it cannot compile
        # fp16: the loss scale and its count of clean steps (a sync: .item() of each)
        "loss_scale": None if s.parts.scaler is None else s.parts.scaler.state_dict(),
        **({"rng_ranks": rng_ranks} if rng_ranks is not None else {}),
    }
    keep = s.cfg.keep_ckpts

    def write() -> None:
        save_checkpoint(path, payload)
        if keep:
            for _, old in list_checkpoints(out)[: -keep]:
                try:
                    old.unlink(missing_ok=True)
                except OSError as e:  # immutable, another user's, a read-only remount: the new one is whole
                    raise UserError(f"{old}: cannot remove it for --keep-ckpts {keep} ({e.strerror or e}); "
                                    f"{path} is written, --resume auto continues from it") from None

    if writer is not None:
        writer.wait()  # the write before this one, and its copy freed: one copy held at a time
        try:
            payload, copied = host_copy(payload)
        except (MemoryError, RuntimeError) as e:
            if isinstance(e, RuntimeError) and not is_out_of_memory(e):
                raise
            say_over_bar(f"note: step {step}'s checkpoint is written in the step: its copy for a background "
                         f"write did not fit in host memory ({type(e).__name__})")
        else:
            def write_copy() -> None:
                try:
                    write()
                finally:
                    free_storage(copied)

            writer.write(write_copy)
            return True
    with signals_deferred():  # a second Ctrl-C waits for the file and for --keep-ckpts' pruning too
        write()
    return False


def _due(cfg: TrainConfig, step: int, stopping: bool, has_val: bool, overdue: bool = False) -> tuple[bool, bool, bool]:
    """(evaluate, sample, checkpoint) after `step`: at their --*-every multiples, and all of
    them (where on) at the last step of --steps. A stop (a signal) and an `overdue`
    --ckpt-minutes only add the checkpoint: an extra evaluation or sample there would not be
    in the uninterrupted run, and a sample would move the sampling RNG the checkpoint saves,
    so the resumed run's samples would differ from it."""
    last = step == cfg.steps
    due = lambda every: every > 0 and (step % every == 0 or last)  # noqa: E731
    checkpoints = cfg.ckpt_every > 0 or cfg.ckpt_minutes > 0
    ckpt = checkpoints and (due(cfg.ckpt_every) or last or stopping or overdue)
    return has_val and due(cfg.eval_every), due(cfg.sample_every), ckpt


def train_loop(s: Session, then: AfterTheLoop | None = None) -> dict:
    """Steps start_step+1 .. cfg.steps; logs, evaluates, samples and checkpoints on the way.
    `then`: holds the signals from the loop's end on (AfterTheLoop)."""
    cfg, rt = s.cfg, s.rt
    out = Path(cfg.out)
    say = say_over_bar if rt.master else (lambda *_: None)
    # (an error held the signals before anything in `files` unwinds: AfterTheLoop.on_error)
    with contextlib.ExitStack() as files, then.on_error() if then is not None else contextlib.nullcontext():
        stop = files.enter_context(StopRequest(persistent=rt.ddp, announce=rt.master, then=then))

        def cut_short(exc_type, error, traceback) -> None:
            """An error after a signal was heard is that signal's stop at once: it reaches the
            run's whole process group, the compiler torch runs for the step (g++, inductor's
            workers) too, and the step then failed with a compile error's traceback. Not a
            collective failed for a rank gone (train.py's train() says so): torchrun's SIGTERM to
            the ranks left, sent as one dies, came first where this rank was busy alone (sampling)."""
            if (isinstance(error, Exception) and not isinstance(error, (UserError, TokenRangeError))
                    and stop.requested and stop.signal != OUTPUT_CLOSED
                    and not (rt.ddp and isinstance(error, RuntimeError) and peer_gone(error))):
                stopped = Terminated()
                stopped.signum = stop.signal
                stopped.why = (f": what was under way failed after the signal ({type(error).__name__}; a signal "
                               f"reaches the whole process group, torch's compiler included)")
                raise stopped from error

        files.push(cut_short)
        # rank 0's checkpoints, written while the steps go on (--async-ckpt); a run that ends by
        # an error waits here for the write under way (its own error then goes unsaid)
        writer = CheckpointWriter() if cfg.async_ckpt and rt.master else None
        if writer is not None:
            files.push(lambda *exc: wait_quietly(writer, not issubclass(exc[0], Exception))
                       if exc[0] is not None else None)
        metrics = None
        if rt.master or cfg.log_windows:
            # (rank 0's, made by hold_out_dir; another rank's --log-windows log may be in an --out of
            # its own, made here: its failure was an OSError's traceback, where rank 0's is a line)
            make_out_dir(out)
        if rt.master:
            # atomic_write's temporaries, left by a run killed while it saved a checkpoint (the logs'
            # are replaced by the next atomic_write of the same file: open_log's)
            for stale in out.glob(temp_path(out / "ckpt_*.pt").name):
                try:
                    stale.unlink(missing_ok=True)
                except OSError as e:  # another user's file in a sticky directory (a directory: said earlier)
                    raise stale_temporary(out, stale.name, e.strerror or str(e)) from None
            metrics = files.enter_context(open_log(out / METRICS_NAME, "step",
                                                   s.start_step if s.resumed_from else None))
        logs = [metrics] if metrics is not None else []  # synced before each checkpoint (AppendLog.sync)
        loader = s.train_loader
        # data_wait_ms times next_batch alone: --log-windows' copy to the host (a device sync),
        # CRC and JSON line come after it, outside the timed call
        waits = TimedFeed(lambda: loader.next_batch(rt.device))
        feed: Feed = waits
        if cfg.log_windows:
            first_batch = s.start_step * s.parts.accum_steps  # the loader's step
            # (each rank its own log: a note of rank r's says so)
            log = files.enter_context(open_log(log_path(out, rt.rank), "batch",
                                               first_batch - 1 if s.resumed_from else None,
                                               lambda text: echo(f"note: rank {rt.rank}: {text}"
                                                                 if rt.ddp else f"note: {text}")))
            feed = window_logger(waits, log, loader)
            logs.append(log)
        flops, device_name = s.raw.flops_per_token(cfg.T), rt.device_name()
        bar = files.enter_context(Bar(total=cfg.steps, initial=s.start_step, unit="step", dynamic_ncols=True,
                                       # None: drawn on a terminal only, as prep's bars; a log
                                       # file gets the lines below and the summary, no \r noise
                                       disable=bar_disable(True if not rt.master or cfg.quiet else None)))
        micro_per_epoch = s.parts.accum_steps / loader.steps_per_epoch
        history: list[float] = []  # tokens/s of each step of this run
        ckpt_costs: list[float] = []  # seconds the loop spent on each checkpoint (a copy, or the whole write)
        in_background = 0  # of those, how many the writer wrote

        def wait_for_writer() -> None:
            """writer.wait() at the run's end: the time counted with its last checkpoint's."""
            waited = time.perf_counter()
            writer.wait()
            if ckpt_costs:
                ckpt_costs[-1] += time.perf_counter() - waited
        record: dict = {}
        pending: list[tuple] = []  # (step, lr, loss, grad_norm, data wait s): not yet on the host
        stopped = False
        has_val = s.val_loader is not None
        # an evaluation stops between two batches on a signal (under torchrun, at a batch the
        # ranks agree on: evaluate's None there is every rank's)
        cut_by_stop = lambda: stop.requested  # noqa: E731
        if s.start_step == 0 and has_val:
            # the untrained model's val loss (about ln(vocab) = 10.8 for GPT-2), as nanoGPT and
            # build-nanogpt log it: the curve's first point, and a check of the data and model
            stop.when = "before step 1"
            val_loss = evaluate(s.eval_model, s.val_loader, s.val_batches, rt, cut_by_stop)
            stop.when = None
            say(val_loss_line(0, val_loss))
            if metrics is not None and val_loss is not None:
                record = dict.fromkeys(METRICS_FIELDS)
                record.update(step=0, tokens=0, epoch=0.0, val_loss=val_loss)
                metrics.write(json.dumps(strict_json_row(record)) + "\n")
            # a signal during it: no step to finish or save (under torchrun: one that cut the
            # evaluation short, at a batch the ranks agreed on)
            if val_loss is None or (stop.requested and not rt.ddp):
                if rt.ddp:  # no rank leaves (torchrun would then end the rest) before rank 0's line
                    dist.barrier()
                say(f"{stop.cause}: stopped before step 1; nothing trained, no checkpoint written")
                stopped = True
        elif s.start_step == cfg.steps and has_val:
            # resumed at its last step: nothing to train, but the checkpoint's val loss, on this
            # run's --eval-steps and val split (--val-data): a checkpoint evaluated alone, as
            # nanoGPT's eval_only does. metrics.jsonl keeps the training run's lines.
            stop.when = "now (nothing to train; the checkpoint's evaluation is cut short)"
            val_loss = evaluate(s.eval_model, s.val_loader, s.val_batches, rt, cut_by_stop)
            say(val_loss_line(s.start_step, val_loss))
            record = {"val_loss": val_loss}
            stopped = val_loss is None  # cut short: every rank's (under torchrun), so every rank exits 130
        inflight: collections.deque[LogPoint] = collections.deque()  # not yet read back, oldest first
        diverged: dict | None = None  # the metrics of the first step whose loss or norm is not finite
        # fp16: a step whose gradients overflowed was skipped (its norm inf or nan, the loss scale
        # halved), a loss scaler's everyday work; only a loss that is no number means divergence
        scaled = s.parts.scaler is not None
        skipped = 0

        def arrive(point: LogPoint) -> None:
            """Wait for `point`'s values and time its window on the device's timeline: from the
            previous point's mark (or the one after an evaluation or checkpoint) to its own. On
            CUDA that is the GPU's time for its steps, however far ahead the host ran."""
            nonlocal timing_start
            if point.values is None:
                point.values = point.readback.get()
                point.dt = seconds_between(timing_start, point.readback.mark) / len(point.steps)
                timing_start = point.readback.mark

        def finish(val_loss: float | None = None) -> tuple[bool, bool]:
            """Read back the oldest logging point in flight: its steps' metrics lines (the val
            loss goes with its last step) and the bar. Returns the flags the ranks shared there
            (under torchrun): (a rank was signalled, rank 0 found a checkpoint overdue). The
            point leaves `inflight` once its lines are written: one interrupted before that
            (a second Ctrl-C while the host waits for the device) is still there for flush()."""
            nonlocal record, diverged, skipped
            point = inflight[0]
            arrive(point)
            steps, values, n = point.steps, point.values, len(point.steps)
            tokens_per_s = s.tokens_per_step / point.dt
            step_mfu = mfu(tokens_per_s, flops, device_name, rt.world) if device_name else None
            # tokens: trained on through step k, all ranks; epoch: passes over the train split
            # so far (the loader's steps / steps per epoch)
            # under torchrun the values hold the longest wait over the ranks, and the shared flags
            step_waits, flags = (values[2 * n:3 * n], values[3 * n:]) if rt.ddp else ([w for *_, w in steps], [])
            rows = [dict(zip(METRICS_FIELDS, (k, k * s.tokens_per_step, k * micro_per_epoch, k_loss,
                                              val_loss if k == steps[-1][0] else None, k_lr, k_norm,
                                              1000 * point.dt, tokens_per_s, step_mfu, 1000 * wait), strict=True))
                    for (k, k_lr, _), k_loss, k_norm, wait in zip(steps, values[:n], values[n:2 * n], step_waits)]
            if diverged is None:  # the first step whose loss or gradient is no number: see check_diverged
                diverged = next((r for r in rows if not math.isfinite(r["loss"] + (0 if scaled else r["grad_norm"]))),
                                None)
            skipped += sum(not math.isfinite(r["grad_norm"]) for r in rows) if scaled else 0
            with signals_deferred():  # a Ctrl-C now would leave the point queued: flush() would write it twice
                if metrics is not None:
                    metrics.write("".join(json.dumps(strict_json_row(row)) + "\n" for row in rows))
                inflight.popleft()
            record = rows[-1]
            history.extend([tokens_per_s] * n)
            if not bar.disable:  # not drawn (--quiet, no terminal, ranks > 0): no postfix to format
                bar.set_postfix(loss=f"{values[n - 1]:.4f}", lr=f"{steps[-1][1]:.2e}", tok_s=f"{tokens_per_s:,.0f}",
                                refresh=False)
            bar.update(n)
            return bool(flags) and flags[0] > 0, bool(flags) and flags[1] > 0

        def check_diverged(step: int | None = None) -> None:
            """A loss or gradient norm that is NaN or infinite means weights that are no longer
            numbers, for good: stop before sampling them, or checkpointing them (where
            --keep-ckpts would prune the good checkpoints away), or training on for nothing.
            `step`: a checkpoint is due there, so its weights are checked too (a step's update
            can overflow the weights while its own loss and norm were finite). Every rank sees
            the same all-reduced loss and norm, and holds the same weights, so the ranks stop
            alike.

            fp16 (`scaled`): only the loss counts (a gradient that overflowed skipped its step),
            and a loss that is no number may be fp16's range overflowed in the forward pass
            while the weights are fine (the step was skipped): the message says so, and that
            the newest checkpoint may go on in fp32 or bf16. A lower --lr cannot tell the two
            apart, so it is offered only beside the other dtype."""
            what = (f"step {diverged['step']}: loss {diverged['loss']}, gradient norm {diverged['grad_norm']}"
                    if diverged is not None else None)
            if what is None and step is not None and (bad := first_not_finite(s.raw.named_parameters())):
                what = f"step {step}: {bad} holds NaN or infinite values"
            if what is None:
                return
            if writer is not None:
                writer.wait()  # the newest checkpoint named below is one on disk
            found = list_checkpoints(out) if rt.master else []
            in_fp16 = scaled and diverged is not None  # (a loss that is no number: see the docstring)
            other_dtype = "--dtype fp32 (or bf16, on a GPU that computes in it)"
            retry = "with a lower --lr (or longer --warmup-steps)"
            if diverged is not None and found and found[-1][0] == diverged["step"] - 1:
                # that step's loss and norm come from the newest checkpoint's weights alone, before
                # any update: resumed with any --lr, it diverges again at once, with the same numbers
                gone = found.pop()
                then = f"the newest checkpoint, {gone[1]} (step {gone[0]}), holds the weights step {diverged['step']} "
                then += (f"started from, whatever the --lr: --resume it with {other_dtype}, which goes on unless the "
                         f"run diverged; if it did, " if in_fp16 else "diverged from, whatever the --lr; ")
                then += (f"an earlier checkpoint, {found[-1][1]} (step {found[-1][0]}), may hold better weights: "
                         f"move {gone[1].name} away and --resume it {retry}" if found else
                         f"no earlier checkpoint is kept: start again {retry}")
            else:
                then = (f"the newest checkpoint, {found[-1][1]} (step {found[-1][0]}), holds finite weights: "
                        f"--resume it {retry}{f', or with {other_dtype}' if in_fp16 else ''}" if found else
                        "no checkpoint was written" if rt.master else "rank 0 names the newest checkpoint")
            how = ("the run diverged, or its forward pass overflowed fp16's range (65504), which no loss scale "
                   "prevents" if in_fp16 else "the run diverged")
            raise UserError(f"{what}: {how}; stopped without checkpointing its weights; {then}")

        def flush() -> None:
            """A run ended by an error (bad data, a second Ctrl-C) still logs the steps it made."""
            with contextlib.suppress(Exception):  # a device that failed cannot give them back
                while inflight:
                    finish()

        files.callback(flush)  # runs before the metrics file and the bar close
        started = last_ckpt = time.perf_counter()
        timing_start = mark(rt.device)  # where the next logging window's time starts
        for step in range(s.start_step + 1, 0 if stopped else cfg.steps + 1):
            lr = lr_at(step - 1, cfg)
            loss, grad_norm = train_step(s.parts, feed, lr)
            pending.append((step, lr, loss, grad_norm, waits.take()))
            if writer is not None:
                writer.poll()  # a checkpoint write that failed ends the run now
            # One process stops at the step where it sees the signal; under torchrun the ranks
            # learn of each other's signals through the logging points' all-reduce, below.
            if rt.master and step % cfg.log_every == 0:
                poll_outputs()  # (one poll() a logging point)
            stopping = stop.requested and not rt.ddp
            final = step == cfg.steps or stopping
            do_eval, do_sample, do_ckpt = _due(cfg, step, stopping, has_val)
            # The first WARMUP_SKIP steps (compilation) are logging points of their own: a step's
            # time is its logging window's mean, and the summary leaves those steps out.
            warming_up = step <= s.start_step + WARMUP_SKIP
            if not (final or do_eval or do_sample or do_ckpt or warming_up or step % cfg.log_every == 0):
                continue
            # The logging point: its steps' losses and norms leave for the host without a wait
            # (Readback); the host reads them at the next logging point, by when the device has
            # finished them, so the steady state never waits for the device.
            step_losses, step_norms = [p[2] for p in pending], [p[3] for p in pending]
            # --ckpt-minutes by rank 0's clock, so that the ranks agree (the checkpoint is a collective)
            overdue = (cfg.ckpt_minutes > 0 and rt.master
                       and time.perf_counter() - last_ckpt >= 60 * cfg.ckpt_minutes)
            if rt.ddp:  # one all-reduce: the losses' sum, how many ranks were signalled, rank 0's clock
                losses = torch.stack(step_losses).float()
                norms = torch.stack(step_norms).float()  # equal on every rank
                flags = torch.zeros(2, device=rt.device)  # filled on the device: no sync
                flags[0].fill_(float(stop.requested))
                flags[1].fill_(float(overdue))
                summed = torch.cat([losses, flags])
                rt.all_reduce(summed)
                losses, flags = summed[:-2] / rt.world, summed[-2:]  # the global batch's mean loss
                overdue = False  # the ranks act on the shared flag when it is read back
                # and one more: each step's longest data wait over the ranks, since the slowest
                # rank's wait holds every rank back at the gradients' all-reduce. The host's
                # waits go over from pinned memory: a copy queued on the stream (from pageable
                # memory, CUDA's copy would wait for the GPU's queue to drain)
                slowest = torch.tensor([p[4] for p in pending], dtype=torch.float32)
                if rt.device.type == "cuda":
                    slowest = slowest.pin_memory()
                slowest = slowest.to(rt.device, non_blocking=True)
                rt.all_reduce(slowest, op=dist.ReduceOp.MAX)
                values = torch.cat([losses, norms, slowest, flags])
            else:  # the losses, then the norms: one stack, one launch (float up-casts are exact)
                values = torch.stack(step_losses + step_norms).float()
            inflight.append(LogPoint([(k, k_lr, wait) for k, k_lr, _, _, wait in pending], Readback(values)))
            pending.clear()
            signalled = False
            while len(inflight) > 1:  # the earlier points: one point late, the device has done them
                flag_stop, flag_ckpt = finish()
                signalled, overdue = signalled or flag_stop, overdue or flag_ckpt
            check_diverged()
            if signalled:  # under torchrun: a rank was signalled, every rank stops after this step
                stopping = final = True
            do_eval, do_sample, do_ckpt = _due(cfg, step, stopping, has_val, overdue)
            if not (final or do_eval or do_sample or do_ckpt):
                continue  # this point stays in flight
            # an evaluation, a sample, a checkpoint or the end: this point is read back now
            val_loss = evaluate(s.eval_model, s.val_loader, s.val_batches, rt, cut_by_stop) if do_eval else None
            flag_stop, flag_ckpt = finish(val_loss)
            if flag_stop or flag_ckpt:  # shared at this very point: acted on here, alike on every rank
                stopping = stopping or flag_stop
                do_ckpt = _due(cfg, step, stopping, has_val, overdue or flag_ckpt)[2]
            check_diverged(step if do_ckpt else None)  # before its weights are sampled or checkpointed
            if do_eval:
                say(val_loss_line(step, val_loss))
            if do_sample and rt.master:
                try:
                    text = sample_text(s.raw, rt, s.generator, cfg.sample_tokens, lambda: stop.requested)
                    say(f"step {step} sample: " + (repr(text) if text is not None else f"{CUT} (samples "
                                                   "after a resume differ from this run's)"))
                except FloatingPointError as e:  # diverged: the run goes on as it would without samples
                    say(f"step {step} sample: none: {e}")
            if not stopping and (stop.requested and not rt.ddp or do_eval and val_loss is None):
                # a signal during the evaluation or the sample: this step is the one checkpointed,
                # not the next one (under torchrun: one that cut the evaluation short, where the
                # ranks agreed on it; they learn of one in a sample at the next logging point)
                stopping = True
                do_ckpt = _due(cfg, step, stopping, has_val)[2]
                check_diverged(step if do_ckpt else None)  # its weights, as for any checkpoint due
            if do_ckpt:
                ckpt_started = time.perf_counter()
                for synced in logs:  # this step's lines and those before it are on disk before its checkpoint
                    synced.sync()
                rng_ranks = _rng_states(s)  # every rank: a collective (rank 0 writes once every rank synced)
                if rt.master:
                    in_background += _checkpoint(s, step, rng_ranks, writer)
                    if writer is not None and (step == cfg.steps or stopping or stop.requested and not rt.ddp):
                        writer.wait()  # the run ends here: its last checkpoint is on disk first
                last_ckpt = time.perf_counter()
                ckpt_costs.append(last_ckpt - ckpt_started)
                if stop.requested and not rt.ddp:
                    # a signal while it was written (deferred to the file's end): this step is the
                    # one stopped at, checkpointed already (the last step's stop went unsaid, and
                    # another step's trained on to a second checkpoint)
                    stopping = True
            # evaluation, samples and checkpoints are not step time (and the device has nothing
            # queued now: the next window's time starts here)
            timing_start = mark(rt.device)
            if stopping:
                if writer is not None:
                    wait_for_writer()  # (done above, unless the stop was heard after that wait)
                if rt.ddp:  # no rank leaves (torchrun would then end the rest) before the checkpoint
                    dist.barrier()
                more = "; continue with --resume auto" if step < cfg.steps else ""  # (after the last: nothing to)
                saved = (f"checkpoint {ckpt_path(out, step)} written{more}"
                         if do_ckpt else "no checkpoint (--ckpt-every 0, no --ckpt-minutes)")
                say(f"{stop.cause}: stopped after step {step} of {cfg.steps}; {saved}")
                stopped = True
                break
        if writer is not None:
            wait_for_writer()  # (done already where the loop's last step checkpointed)
    summary = summarize(s, history, record, time.perf_counter() - started,
                        interrupted=stopped or (stop.requested and not rt.ddp),  # ranks exit alike
                        skipped_steps=skipped if scaled else None, ckpt_costs=ckpt_costs, in_background=in_background)
    summary["output_closed"] = stop.signal == OUTPUT_CLOSED
    return summary


def summarize(s: Session, history: list[float], last: dict, total_s: float, interrupted: bool = False,
              skipped_steps: int | None = None, ckpt_costs: Sequence[float] = (), in_background: int = 0) -> dict:
    """The closing summary: steady-state median tokens/s (first WARMUP_SKIP steps left out).
    `skipped_steps`: fp16's, those whose gradients overflowed (None: no loss scaling).
    `ckpt_costs`: the seconds the training loop spent on each checkpoint this run wrote (left
    out of the step times): with --async-ckpt the copy to host memory, and a wait for a write
    before it or for the run's last file; without it, the whole write. `in_background`: how
    many of them the writer wrote (the others' copies did not fit, or --no-async-ckpt).

    A run of WARMUP_SKIP steps or fewer has no steady step: its median is over the warm-up
    steps (compilation included) and is named so ("steady_steps": 0), never passed off as the
    steady state."""
    cfg, rt = s.cfg, s.rt
    steady_steps = max(0, len(history) - WARMUP_SKIP)
    timed = history[WARMUP_SKIP:] if steady_steps else history
    tokens_per_s = statistics.median(timed) if timed else None
    device_name = rt.device_name()
    run_mfu = None
    if tokens_per_s and device_name:
        run_mfu = mfu(tokens_per_s, s.raw.flops_per_token(cfg.T), device_name, rt.world)
    summary = {
        "steps": len(history), "first_step": s.start_step + 1, "last_step": s.start_step + len(history),
        "loss": last.get("loss"), "val_loss": last.get("val_loss"), "tokens_per_s": tokens_per_s,
        "mfu": run_mfu, "steady_steps": steady_steps, "total_s": total_s, "interrupted": interrupted,
        "skipped_steps": skipped_steps, "checkpoints": len(ckpt_costs), "ckpt_s": sum(ckpt_costs),
    }
    if rt.master:
        if not history:  # a stop before step 1 has said so already
            if not interrupted:
                val = (f"; val loss {summary['val_loss']:.4f} ({batches_phrase(s.val_batches, rt.world)})"
                       if summary["val_loss"] is not None else "")
                echo(f"done: already at step {s.start_step} of --steps {cfg.steps}, nothing to train{val}")
            return summary
        mfu_text = f"{100 * run_mfu:.1f}%" if run_mfu is not None else "n/a (unknown device peak)"
        val = f", val loss {summary['val_loss']:.4f}" if summary["val_loss"] is not None else ""
        plural = "s" if len(timed) != 1 else ""
        over = (f"{len(timed)} steady step{plural}" if steady_steps else
                f"{len(timed)} warm-up step{plural} (no steady step: a run's first {WARMUP_SKIP} are warm-up)")
        first, final = summary["first_step"], summary["last_step"]
        echo(
            f"done: {f'step {final}' if first == final else f'steps {first}-{final}'} in {total_s:.1f} s, "
            f"loss {summary['loss']:.4f}{val}; median {tokens_per_s:,.0f} tokens/s "
            f"({1000 * s.tokens_per_step / tokens_per_s:.1f} ms/step) over {over}, MFU {mfu_text}; "
            f"metrics in {Path(cfg.out) / METRICS_NAME}"
        )
        if ckpt_costs:
            each = f" ({summary['ckpt_s'] / len(ckpt_costs):.2f} s each)" if len(ckpt_costs) > 1 else ""
            how = ("written in the background" if in_background == len(ckpt_costs) else
                   f"written, {in_background} of them in the background" if in_background else
                   "written in the step" + ("" if s.cfg.async_ckpt else " (--no-async-ckpt)"))
            echo(f"checkpoints: {len(ckpt_costs)} {how}; training waited {summary['ckpt_s']:.2f} s for them{each}")
        if skipped_steps is not None:  # (a sync: the scale's .item())
            echo(f"fp16: {skipped_steps} of these steps skipped (their gradients overflowed: grad_norm null in "
                 f"the metrics), loss scale now {s.parts.scaler.get_scale():g}")
    return summary
